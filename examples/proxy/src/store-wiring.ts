import { isNarMismatch, type NarBackend, type NarHash, type NarStream } from '@narrace/core'
import { impliedFile, parseNarInfo, type NarInfo } from '@narrace/narinfo'
import { storeBackend, type NarStore, type StoreEntry } from '@narrace/store'
import type { Logger } from 'pino'

/**
 * narinfo texts held until their NAR enters the store (Nix asks for the narinfo first), by bytes.
 * @default 16 MiB
 */
export const DEFAULT_PENDING_NARINFO_BYTES = 16 * 1024 * 1024

/** The compression a NAR file name's extension stands for, as Nix names them. */
const COMPRESSION_OF_EXTENSION: Readonly<Record<string, string>> = {
  '.xz': 'xz',
  '.zst': 'zstd',
  '.bz2': 'bzip2',
  '.lzip': 'lzip',
  '.lz4': 'lz4',
  '.br': 'br',
  '': 'none',
}

/**
 * The proxy's side of `--store`: the store answers first, every NAR served is teed into it, and each
 * narinfo follows its NAR in, as the upstream signed it.
 */
export class ProxyStore {
  readonly store: NarStore
  /** A NarBackend over the store, named `store`. */
  readonly backend: NarBackend
  private readonly logger: Logger
  /** FileHash → narinfo texts waiting for their NAR, oldest first. */
  private readonly pending = new Map<string, { texts: Set<string>; bytes: number; compression: string }>()
  private pendingBytes = 0
  private readonly maxPendingBytes: number

  constructor(store: NarStore, options: { logger: Logger; maxPendingNarInfoBytes?: number }) {
    this.store = store
    this.backend = storeBackend(store)
    this.logger = options.logger
    this.maxPendingBytes = options.maxPendingNarInfoBytes ?? DEFAULT_PENDING_NARINFO_BYTES
  }

  /** The stored narinfo for a hash part: served without asking any upstream. */
  narInfo(hashPart: string): Promise<string | undefined> {
    return this.store.narInfo(hashPart)
  }

  /** Whether the NAR is in the store: then it is served from there alone, and no other source is started. */
  has(hash: NarHash): boolean {
    return this.store.has(hash)
  }

  /**
   * The sources for one NAR: the store alone when it has the file (a warm store costs no upstream
   * traffic), else the others (the store can't help).
   */
  backendsFor(hash: NarHash, others: NarBackend[]): NarBackend[] {
    return this.store.has(hash) ? [this.backend] : others
  }

  /**
   * Remembers a narinfo served from an upstream: written beside its NAR at once when the NAR is here,
   * else when it arrives. Texts wait within `maxPendingNarInfoBytes`, oldest dropped first.
   */
  keepNarInfo(text: string): void {
    let info: NarInfo
    let fileHash: NarHash | undefined
    try {
      info = parseNarInfo(text)
      fileHash = impliedFile(info)?.fileHash
    } catch {
      return
    }
    const compression = info.compression
    if (!fileHash || this.store.hasNarInfo(info.storePath.slice(info.storePath.lastIndexOf('/') + 1, info.storePath.lastIndexOf('/') + 33))) return
    if (this.store.has(fileHash)) {
      this.write(fileHash, text)
      return
    }
    const key = fileHash.toString()
    const bytes = Buffer.byteLength(text)
    const waiting = this.pending.get(key) ?? { texts: new Set<string>(), bytes: 0, compression }
    if (waiting.texts.has(text)) return
    waiting.texts.add(text)
    waiting.bytes += bytes
    this.pendingBytes += bytes
    this.pending.delete(key)
    this.pending.set(key, waiting)
    while (this.pendingBytes > this.maxPendingBytes && this.pending.size > 0) {
      const [oldest, dropped] = this.pending.entries().next().value!
      this.pending.delete(oldest)
      this.pendingBytes -= dropped.bytes
    }
  }

  /**
   * Passes a verified stream through to the client and keeps a copy: committed into the store once the
   * stream ended verified, with the narinfo that waited for it. A store failure never breaks the
   * stream. `path` is the request's NAR path, for the extension when no narinfo said the compression.
   */
  tee(stream: NarStream, path: string): AsyncIterable<Uint8Array> {
    const hash = stream.hash
    if (this.store.has(hash)) return stream
    return this.store.tee(hash, stream, {
      ...(stream.size !== undefined ? { size: stream.size } : {}),
      compression: this.compressionOf(hash, path),
      onCommit: (entry: StoreEntry) => this.committed(entry),
      onError: (error: unknown) => {
        if (!isNarMismatch(error)) this.logger.warn({ nar: hash.nix32, err: error }, 'not kept in the store')
      },
    })
  }

  /** A stored NAR whose bytes failed verification is removed, so that the next request fetches it again. */
  async forget(hash: NarHash): Promise<void> {
    if (await this.store.remove(hash)) this.logger.warn({ nar: hash.nix32 }, 'removed a damaged NAR from the store')
  }

  private compressionOf(hash: NarHash, path: string): string {
    const waiting = this.pending.get(hash.toString())
    if (waiting) return waiting.compression
    const match = /\.nar((?:\.[a-z0-9]+)?)(?:\?.*)?$/.exec(path)
    return COMPRESSION_OF_EXTENSION[match?.[1] ?? '.xz'] ?? 'none'
  }

  private committed(entry: StoreEntry): void {
    const key = entry.fileHash.toString()
    const waiting = this.pending.get(key)
    if (!waiting) return
    this.pending.delete(key)
    this.pendingBytes -= waiting.bytes
    for (const text of waiting.texts) this.write(entry.fileHash, text)
  }

  private write(hash: NarHash, text: string): void {
    this.store.addNarInfo(text).catch((error: unknown) => {
      this.logger.warn({ nar: hash.nix32, err: error }, 'narinfo not kept in the store')
    })
  }
}
