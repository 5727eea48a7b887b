// bittorrent-tracker 11 ships no type declarations; this covers what the demo calls.
declare module 'bittorrent-tracker' {
  import type { Server as HttpServer } from 'node:http'
  export class Server {
    constructor(options?: { http?: boolean; udp?: boolean; ws?: boolean; stats?: boolean })
    http: HttpServer | null
    listen(port: number, hostname: string, onListening?: () => void): void
    close(callback?: (error?: Error | null) => void): void
    on(event: 'warning' | 'error', listener: (error: Error) => void): this
  }
}
