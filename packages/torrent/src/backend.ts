import { mkdtemp, rm, rmdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  NarBackendError,
  NarNotFoundError,
  NarSizeMismatchError,
  type NarBackend,
  type NarFetchOptions,
  type NarHash,
  type NarSource,
} from '@narrace/core'
import type { NarIndex, NarLocation } from '@narrace/index'
import { raceSignal } from 'race-signal'
import {
  buildMagnet,
  createClient,
  destroyClient,
  isUsableTracker,
  parseMagnet,
  type WebTorrent,
  type WebTorrentFile,
  type WebTorrentTorrent,
} from './client.js'

/** How long `fetch` waits for a torrent's metadata (the info dictionary) from the swarm. */
export const DEFAULT_METADATA_TIMEOUT_MS = 10_000

export interface TorrentBackendOptions {
  /** Maps a FileHash to the torrent (`btih`, `magnet`) that holds the file. */
  index: NarIndex
  /**
   * The webtorrent client to download with. Without one, the backend creates its own on the first fetch
   * that has a mapping (TCP only: no DHT unless `dht`, no LSD, uTP, web seeds, UPnP or NAT-PMP) and
   * destroys it in `close()`. A given client is never destroyed.
   */
  client?: WebTorrent
  /** Trackers to announce to, besides those in the mapping's magnet link. Only HTTP(S) and UDP trackers are used. */
  announce?: string[]
  /** Where downloads are written, as `<nix32>.nar.xz`. @default a new directory under os.tmpdir(), removed by close() */
  downloadDir?: string
  /** Give up with NarNotFoundError when no peer has sent the torrent's metadata within this time. @default 10000 */
  metadataTimeoutMs?: number
  /**
   * Keep a completed download on disk and seed it from the client ("donate what you fetched").
   * Otherwise every download is removed, with its file, as soon as its stream ends or is aborted. @default false
   */
  seedAfterDownload?: boolean
  /** Join the mainline DHT with the client the backend creates (ignored when `client` is given). @default false */
  dht?: boolean
  /** @default 'torrent' */
  name?: string
}

/** A NarBackend that streams from BitTorrent swarms, plus `close()`. */
export interface TorrentBackend extends NarBackend {
  /** Removes the downloads in progress, and destroys the client if the backend created it. */
  close(): Promise<void>
}

/** One use of a torrent by one fetch. */
interface Lease {
  torrent: WebTorrentTorrent
  /** Aborted when the torrent fails or is destroyed under the fetch. */
  failure: AbortController
  /** Ends this use; resolves once the torrent and its file are gone, if this was the last use. */
  release(): Promise<void>
}

/** A torrent this backend added, shared by the fetches that read it at the same time. */
interface Held {
  /** The key in `held`: webtorrent sets `torrent.infoHash` only after a tick. */
  infoHash: string
  torrent: WebTorrentTorrent
  leases: number
}

const noop = (): void => {}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

/**
 * A file of a torrent as an AsyncIterator that gives up at once on abort. webtorrent's own iterator
 * waits for a piece with no timeout and no signal, and never settles if the torrent is destroyed meanwhile.
 * Its end, its errors and return() settle only once the torrent's removal is done, so that whoever saw
 * them finds no file left behind.
 */
class TorrentBody implements AsyncIterableIterator<Uint8Array> {
  private inner: AsyncIterator<Uint8Array> | undefined
  private finished: Promise<void> | undefined
  private readonly onAbort = (): void => void this.finish()

  constructor(
    private readonly file: WebTorrentFile,
    private readonly start: number,
    /** Exclusive; undefined for the rest of the file. */
    private readonly end: number | undefined,
    private readonly signal: AbortSignal,
    private readonly lease: Lease,
  ) {
    // The torrent goes as soon as the fetch is aborted, even if nobody calls return().
    signal.addEventListener('abort', this.onAbort, { once: true })
  }

  [Symbol.asyncIterator](): this {
    return this
  }

  async next(): Promise<IteratorResult<Uint8Array>> {
    if (this.finished) {
      await this.finished
      if (this.signal.aborted) throw this.signal.reason
      return { done: true, value: undefined }
    }
    if (this.start >= this.file.length) {
      await this.finish()
      return { done: true, value: undefined }
    }
    // webtorrent's end is inclusive, and fetches only the pieces of the range.
    this.inner ??= this.file[Symbol.asyncIterator](this.end === undefined ? { start: this.start } : { start: this.start, end: this.end - 1 })
    try {
      const step = await raceSignal(this.inner.next(), this.signal)
      if (step.done) await this.finish()
      return step
    } catch (error) {
      await this.finish()
      throw error
    }
  }

  async return(): Promise<IteratorResult<Uint8Array>> {
    await this.finish()
    return { done: true, value: undefined }
  }

  /** Releases the torrent once; resolves when its removal, if any, is done. */
  private finish(): Promise<void> {
    if (!this.finished) {
      this.signal.removeEventListener('abort', this.onAbort)
      const inner = this.inner
      if (inner?.return) Promise.resolve(inner.return()).catch(noop)
      this.finished = this.lease.release()
    }
    return this.finished
  }
}

class TorrentBackendImpl implements TorrentBackend {
  readonly name: string
  private readonly index: NarIndex
  private readonly announce: string[]
  private readonly metadataTimeoutMs: number
  private readonly seedAfterDownload: boolean
  private readonly dht: boolean
  private readonly givenClient: WebTorrent | undefined
  private createdClient: WebTorrent | undefined
  private clientError: unknown
  private dir: Promise<string> | undefined
  private createdDir = false
  private readonly held = new Map<string, Held>()
  private readonly removals = new Set<Promise<void>>()
  private readonly closing = new AbortController()

  constructor(options: TorrentBackendOptions) {
    this.name = options.name ?? 'torrent'
    this.index = options.index
    this.announce = (options.announce ?? []).filter(isUsableTracker)
    this.metadataTimeoutMs = options.metadataTimeoutMs ?? DEFAULT_METADATA_TIMEOUT_MS
    this.seedAfterDownload = options.seedAfterDownload ?? false
    this.dht = options.dht ?? false
    this.givenClient = options.client
    if (options.downloadDir !== undefined) this.dir = Promise.resolve(options.downloadDir)
  }

  async fetch(hash: NarHash, options: NarFetchOptions): Promise<NarSource> {
    const { signal } = options
    signal.throwIfAborted()
    if (this.closing.signal.aborted) throw this.closing.signal.reason
    const offset = options.offset ?? 0
    const location = this.index.get(hash)
    const magnet = location?.magnet ? parseMagnet(location.magnet) : undefined
    const infoHash = location?.btih?.toLowerCase() ?? magnet?.infoHash
    if (!location || !infoHash) throw new NarNotFoundError(`${this.name}: no torrent is mapped for ${hash}`)

    const dir = await raceSignal((this.dir ??= this.makeDir()), signal)
    if (this.closing.signal.aborted) throw this.closing.signal.reason
    const client = this.client()
    const torrentId = buildMagnet(infoHash, `${hash.nix32}.nar.xz`, magnet?.trackers ?? [])
    const lease = this.acquire(client, infoHash, torrentId, dir)
    const failed = AbortSignal.any([signal, lease.failure.signal, this.closing.signal])
    try {
      await this.whenReady(lease.torrent, hash, failed)
      const file = this.check(lease.torrent, hash, options.size, location)
      const end = options.end !== undefined && options.end < file.length ? options.end : undefined
      return { body: new TorrentBody(file, offset, end, failed, lease), offset, size: file.length, ranges: true }
    } catch (error) {
      void lease.release()
      throw error
    }
  }

  async close(): Promise<void> {
    if (!this.closing.signal.aborted) {
      this.closing.abort(new NarBackendError(`${this.name} is closed`, { backend: this.name }))
    }
    const client = this.givenClient ?? this.createdClient
    if (client) for (const { torrent } of this.held.values()) void this.remove(client, torrent)
    this.held.clear()
    await Promise.all(this.removals)
    if (this.createdClient) await destroyClient(this.createdClient)
    if (this.createdDir && this.dir) {
      const dir = await this.dir
      // Seeds kept on a caller's client still read their files from here.
      if (this.createdClient) await rm(dir, { recursive: true, force: true })
      else await rmdir(dir).catch(noop)
    }
  }

  private client(): WebTorrent {
    const client = this.givenClient ?? (this.createdClient ??= this.newClient())
    if (client.destroyed) {
      throw new NarBackendError(`${this.name}: the webtorrent client is destroyed`, {
        backend: this.name,
        cause: this.clientError,
      })
    }
    return client
  }

  private newClient(): WebTorrent {
    const client = createClient({ dht: this.dht })
    // webtorrent destroys itself after emitting an error; fetch then reports it as the cause.
    client.on('error', (error) => {
      this.clientError = error
    })
    return client
  }

  private async makeDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'narrace-torrent-'))
    this.createdDir = true
    return dir
  }

  /** Finds the torrent in the client, or adds it; a torrent the backend did not add is never removed by it. */
  private acquire(client: WebTorrent, infoHash: string, torrentId: string, dir: string): Lease {
    let entry = this.held.get(infoHash)
    let torrent = entry?.torrent ?? client.torrents.find((t) => t.infoHash === infoHash && !t.destroyed)
    if (!torrent) {
      torrent = client.add(torrentId, { announce: this.announce, path: dir })
      // An error nobody listens to on a torrent becomes a client 'error', which throws on a caller's client.
      torrent.on('error', noop)
      entry = { infoHash, torrent, leases: 0 }
      this.held.set(infoHash, entry)
    }
    if (entry) entry.leases++
    const owned = entry
    const failure = new AbortController()
    const onError = (error: Error | string): void => {
      failure.abort(new NarBackendError(`${this.name}: torrent ${infoHash} failed: ${message(error)}`, {
        backend: this.name,
        cause: error,
      }))
    }
    const onClose = (): void => {
      if (this.held.get(infoHash) === owned) this.held.delete(infoHash)
      failure.abort(new NarBackendError(`${this.name}: torrent ${infoHash} was removed from the client`, {
        backend: this.name,
      }))
    }
    torrent.on('error', onError)
    torrent.once('close', onClose)
    let released: Promise<void> | undefined
    const release = (): Promise<void> => {
      if (!released) {
        torrent.removeListener('error', onError)
        torrent.removeListener('close', onClose)
        released = owned ? this.release(client, owned) : Promise.resolve()
      }
      return released
    }
    return { torrent, failure, release }
  }

  private release(client: WebTorrent, entry: Held): Promise<void> {
    entry.leases--
    if (entry.leases > 0 || this.held.get(entry.infoHash) !== entry) return Promise.resolve()
    this.held.delete(entry.infoHash)
    // A complete download stays in the client, which seeds it.
    if (this.seedAfterDownload && entry.torrent.done) return Promise.resolve()
    return this.remove(client, entry.torrent)
  }

  /** Removes a torrent and deletes its file; close() waits for it too. */
  private remove(client: WebTorrent, torrent: WebTorrentTorrent): Promise<void> {
    if (torrent.destroyed || client.destroyed) return Promise.resolve()
    const removal = new Promise<void>((resolve) => {
      client.remove(torrent, { destroyStore: true }, () => resolve()).catch(() => resolve())
    })
    this.removals.add(removal)
    void removal.then(() => this.removals.delete(removal))
    return removal
  }

  /** Resolves once the torrent has its metadata and its store; NarNotFoundError after metadataTimeoutMs. */
  private whenReady(torrent: WebTorrentTorrent, hash: NarHash, signal: AbortSignal): Promise<void> {
    if (torrent.ready) return Promise.resolve()
    signal.throwIfAborted()
    return new Promise<void>((resolve, reject) => {
      const ms = this.metadataTimeoutMs
      const timer = setTimeout(() => {
        settle(
          new NarNotFoundError(
            `${this.name}: no peer sent the metadata of torrent ${torrent.infoHash} (${hash}) within ${ms} ms ` +
              `(${torrent.numPeers} peers connected)`,
          ),
        )
      }, ms)
      const onReady = (): void => settle()
      const onAbort = (): void => settle(signal.reason)
      torrent.once('ready', onReady)
      signal.addEventListener('abort', onAbort, { once: true })
      function settle(error?: unknown): void {
        clearTimeout(timer)
        torrent.removeListener('ready', onReady)
        signal.removeEventListener('abort', onAbort)
        if (error === undefined) resolve()
        else reject(error as Error)
      }
    })
  }

  /** The torrent's one file, if its length agrees with the narinfo FileSize and the mapping. */
  private check(
    torrent: WebTorrentTorrent,
    hash: NarHash,
    size: number | undefined,
    location: NarLocation,
  ): WebTorrentFile {
    const [file, ...more] = torrent.files
    if (!file || more.length > 0) {
      throw new NarNotFoundError(
        `${this.name}: torrent ${torrent.infoHash} holds ${torrent.files.length} files; a NAR torrent holds one`,
      )
    }
    const expected: [number | undefined, string][] = [
      [size, 'FileSize'],
      [location.size, 'mapped size'],
    ]
    for (const [bytes, what] of expected) {
      if (bytes !== undefined && bytes !== file.length) {
        throw new NarSizeMismatchError(
          `${this.name}: torrent ${torrent.infoHash} holds ${file.length} bytes, but the ${what} of ${hash} is ${bytes}`,
          { expected: bytes, actual: file.length },
        )
      }
    }
    return file
  }
}

/**
 * A backend that finds a NAR's torrent through the mapping index and streams its one file with
 * webtorrent from the requested offset, up to the requested end (so resolveNar may stripe over it). An infohash is never the FileHash, so a file with no mapping is
 * NarNotFoundError at once; resolveNar verifies the SHA-256 of whatever the swarm sends.
 */
export function torrentBackend(options: TorrentBackendOptions): TorrentBackend {
  return new TorrentBackendImpl(options)
}
