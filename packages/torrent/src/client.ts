import { decode as decodeMagnet, encode as encodeMagnet } from 'magnet-uri'
import type { Server, Socket } from 'node:net'
import WebTorrentClient from 'webtorrent'

/** The parts of a webtorrent 3 `TorrentFile` narrace uses. */
export interface WebTorrentFile {
  readonly name: string
  readonly length: number
  [Symbol.asyncIterator](options?: { start?: number; end?: number }): AsyncIterator<Uint8Array>
}

/** The parts of a webtorrent 3 `Torrent` narrace uses. */
export interface WebTorrentTorrent {
  readonly infoHash: string
  readonly magnetURI: string
  readonly name: string
  readonly length: number
  readonly ready: boolean
  readonly done: boolean
  readonly destroyed: boolean
  readonly files: WebTorrentFile[]
  readonly numPeers: number
  on(event: 'error', listener: (error: Error | string) => void): this
  once(event: 'ready' | 'close', listener: () => void): this
  once(event: 'error', listener: (error: Error | string) => void): this
  removeListener(event: string, listener: (...args: never[]) => void): this
}

/** Options of `client.add` and `client.seed` that narrace passes. */
export interface WebTorrentAddOptions {
  announce?: string[]
  path?: string
}

/** A webtorrent 3 client (`new WebTorrent(…)`), as far as narrace uses it. */
export interface WebTorrent {
  readonly destroyed: boolean
  readonly torrents: WebTorrentTorrent[]
  add(torrentId: string, options: WebTorrentAddOptions, ontorrent?: (torrent: WebTorrentTorrent) => void): WebTorrentTorrent
  seed(input: string, options: WebTorrentAddOptions, onseed?: (torrent: WebTorrentTorrent) => void): WebTorrentTorrent
  remove(torrent: WebTorrentTorrent, options: { destroyStore?: boolean }, callback: (error?: Error | null) => void): Promise<void>
  destroy(callback?: (error?: Error | null) => void): void
  on(event: 'error', listener: (error: Error | string) => void): this
}

/** Options for a client narrace creates itself. */
export interface CreateClientOptions {
  /** Join the mainline DHT (BEP 5). Off, so that only the trackers of the mapping and `announce` are asked. @default false */
  dht?: boolean
  /**
   * Offer BitTorrent protocol encryption (MSE/PE), falling back to plaintext. Off: it hides nothing narrace
   * needs hidden (every byte is verified against the FileHash) and its handshake delays each new peer. @default false
   */
  encrypt?: boolean
}

/** The webtorrent internals `noDelay` reaches: the listening socket and each torrent's peers. */
interface ClientInternals {
  _connPool?: { tcpServer?: Server }
  on(event: 'add', listener: (torrent: WebTorrentTorrent & TorrentInternals) => void): void
}

interface TorrentInternals {
  _peers?: Map<string, { wire?: unknown; conn?: { setNoDelay?: (noDelay: boolean) => unknown } }>
  on(event: 'wire', listener: (wire: unknown) => void): void
}

/**
 * Turns off Nagle's algorithm on every peer connection. Peer-wire messages are small, and with Nagle each
 * one waits for the peer's delayed ACK (40 ms on Linux): on loopback that made the first byte of a torrent
 * take 180 ms instead of 8. webtorrent opens the sockets itself, so this reaches into its internals and
 * does nothing if they change.
 */
function noDelay(client: WebTorrent): void {
  const internals = client as unknown as ClientInternals
  internals._connPool?.tcpServer?.on('connection', (socket: Socket) => socket.setNoDelay(true))
  internals.on('add', (torrent) => {
    torrent.on('wire', (wire) => {
      for (const peer of torrent._peers?.values() ?? []) {
        if (peer.wire === wire) peer.conn?.setNoDelay?.(true)
      }
    })
  })
}

/**
 * Creates a webtorrent client that speaks plain TCP (BEP 3) and nothing else it was not asked for:
 * no DHT unless `dht`, no local service discovery, no uTP, no web seeds, and no UPnP or NAT-PMP port mapping.
 * It listens on a random port on every interface.
 */
export function createClient(options: CreateClientOptions = {}): WebTorrent {
  const client = new WebTorrentClient({
    dht: options.dht ?? false,
    lsd: false,
    utp: false,
    webSeeds: false,
    natUpnp: false,
    natPmp: false,
    secure: options.encrypt ? 1 : 0,
  })
  noDelay(client)
  return client
}

/** Destroys a client, resolving once its sockets and torrents are closed. */
export function destroyClient(client: WebTorrent): Promise<void> {
  if (client.destroyed) return Promise.resolve()
  return new Promise((resolve, reject) => client.destroy((error) => (error ? reject(error) : resolve())))
}

/** Trackers narrace can use: HTTP(S) and UDP. WebSocket trackers need WebRTC, which narrace leaves out. */
export function isUsableTracker(url: string): boolean {
  try {
    return ['http:', 'https:', 'udp:'].includes(new URL(url).protocol)
  } catch {
    return false
  }
}

/** What narrace takes from a mapping's magnet link. */
export interface MagnetParts {
  /** The v1 infohash as 40 lowercase hex characters, when the magnet has one. */
  infoHash: string | undefined
  /** The HTTP(S) and UDP trackers (`tr`). */
  trackers: string[]
}

/** Reads the v1 infohash (`xt=urn:btih:`, hex or base32) and the usable trackers of a magnet link. */
export function parseMagnet(magnet: string): MagnetParts {
  const parsed = decodeMagnet(magnet)
  return { infoHash: parsed.infoHash, trackers: (parsed.announce ?? []).filter(isUsableTracker) }
}

/**
 * A magnet link with only the infohash, the file name and the given trackers. Web seeds (`ws`), exact
 * sources (`xs`) and WebSocket trackers from a shared mapping are left out: narrace reaches peers over TCP only.
 */
export function buildMagnet(infoHash: string, name: string, trackers: readonly string[]): string {
  return encodeMagnet({ infoHash, name, announce: [...new Set(trackers)] })
}
