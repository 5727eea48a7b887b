// bittorrent-tracker ships no type declarations; this covers what the bench calls.
declare module 'bittorrent-tracker' {
  import type { Server as HttpServer } from 'node:http'
  export class Server {
    constructor(options: { http?: boolean; udp?: boolean; ws?: boolean; stats?: boolean })
    http: HttpServer | undefined
    on(event: 'warning' | 'error', listener: (error: unknown) => void): this
    once(event: 'error', listener: (error: unknown) => void): this
    listen(port: number, host: string, callback: () => void): void
    close(callback: () => void): void
  }
}
