// webtorrent 3 and magnet-uri 7 ship no type declarations; these cover what narrace calls.

declare module 'webtorrent' {
  const WebTorrent: new (options?: Record<string, unknown>) => import('./client.js').WebTorrent
  export default WebTorrent
}

declare module 'magnet-uri' {
  interface Magnet {
    infoHash?: string
    name?: string
    announce?: string[]
  }
  export function decode(uri: string): Magnet
  export function encode(magnet: Magnet): string
}
