import { randomBytes } from 'node:crypto'
import { open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { NarNotFoundError, parseNarHash, type NarHash } from '@narrace/core'
import { narFileName, NIX_STORE_DIR, parseCacheInfo, parseNarInfo, rewriteNarInfo, type NarInfo } from '@narrace/narinfo'
import { StoreFullError } from './errors.js'
import { narInfoFile, parseNarFileName } from './layout.js'
import { makeDirectory, syncDir, writeAtomically } from './fs.js'
import { StoreState } from './state.js'
import { StoreWriter } from './writer.js'

/** The byte budget of a store opened without `maxBytes`. @default 10 GiB */
export const DEFAULT_STORE_MAX_BYTES = 10 * 1024 ** 3
/** How long last-use times wait in memory before they are written in one transaction. @default 1000 */
export const DEFAULT_TOUCH_FLUSH_MS = 1000
/**
 * Room kept for the store's own bookkeeping database beside what it measures, so that the folder as a
 * whole stays within `maxBytes` while the database grows between two measurements. @default 64 KiB
 */
export const BOOKKEEPING_SLACK_BYTES = 64 * 1024

/** Where the store keeps its bookkeeping; Nix and `narrace publish` ignore it. */
export const STATE_DIR = '.narrace'
const STATE_FILE = 'state.sqlite'
const CACHE_INFO = 'nix-cache-info'
/** Temporary files: `.<final name>.<12 hex>.partial`, beside their final name. */
const PARTIAL = /^\..+\.[0-9a-f]{12}\.partial$/
/** Temporary files an older `narrace prefetch` left: `<name>.<pid>.tmp`. */
const OLD_TEMP = /^(?:[0-9a-z]{32}\.narinfo|nix-cache-info)\.\d+\.tmp$/
const NARINFO_NAME = /^([0-9abcdfghijklmnpqrsvwxyz]{32})\.narinfo$/

export interface OpenStoreOptions {
  /**
   * The most bytes the folder holds: NARs, narinfos, `nix-cache-info` and the bookkeeping. Least recently
   * used NARs that are not pinned are evicted to make room. @default DEFAULT_STORE_MAX_BYTES (10 GiB)
   */
  maxBytes?: number
  /** Last-use times are written this often. @default DEFAULT_TOUCH_FLUSH_MS */
  touchFlushMs?: number
  signal?: AbortSignal
}

/** One NAR in the store. */
export interface StoreEntry {
  fileHash: NarHash
  /** `nar/<FileHash nix32>.nar<ext>`, as a narinfo URL. */
  url: string
  /** The file's absolute path. */
  path: string
  size: number
  pinned: boolean
  /** When it was last read or written, in ms since the epoch. */
  lastUsed: number
}

export interface StoreWriterOptions {
  /** The narinfo FileSize: room for it is made before the first byte is written. */
  size?: number
  /** The narinfo Compression, which gives the file its extension. @default 'xz' */
  compression?: string
  signal?: AbortSignal
}

export type StoreEvent = 'add' | 'evict'

interface NarRecord {
  name: string
  size: number
  lastUsed: number
}

/**
 * A local binary-cache folder that narrace owns, in the layout Nix reads: `nix-cache-info`,
 * `<hashPart>.narinfo` and `nar/<FileHash>.nar<ext>`. `nix copy --from file://DIR` and `narrace publish
 * --cache DIR` read it as it is. Files enter only verified, through a temporary name and a rename; the
 * folder stays within `maxBytes` by evicting the least recently used NARs that are not pinned.
 */
export class NarStore {
  readonly dir: string
  readonly maxBytes: number
  /** LRU order: the first key is the least recently used. */
  private readonly nars = new Map<string, NarRecord>()
  /** hash part → FileHash and the narinfo's size. */
  private readonly narInfos = new Map<string, { fileHash: string; bytes: number }>()
  private readonly byNar = new Map<string, Set<string>>()
  private readonly pinned = new Set<string>()
  private readonly state: StoreState
  private readonly writers = new Set<StoreWriter>()
  private readonly listeners = { add: new Set<(entry: StoreEntry) => void>(), evict: new Set<(entry: StoreEntry) => void>() }
  private readonly touched = new Map<string, number>()
  private touchTimer: NodeJS.Timeout | undefined
  private readonly touchFlushMs: number
  /** Bytes the files under final names take. */
  private filesBytes = 0
  /** Bytes promised to writers in progress. */
  private reserved = 0
  private bookkeepingBytes = 0
  private lastUsed = 0
  /** Reservations, commits and evictions run one at a time, so that the budget is never double-spent. */
  private queue: Promise<unknown> = Promise.resolve()
  private closed = false

  /** Use `openStore`. */
  constructor(dir: string, state: StoreState, options: { maxBytes: number; touchFlushMs: number }) {
    this.dir = dir
    this.state = state
    this.maxBytes = options.maxBytes
    this.touchFlushMs = options.touchFlushMs
  }

  /** Bytes the folder holds now, writers' reservations included. */
  get usedBytes(): number {
    return this.filesBytes + this.reserved + this.bookkeepingBytes + BOOKKEEPING_SLACK_BYTES
  }

  /** Whether the NAR with this FileHash is in the store, complete and verified. */
  has(hash: NarHash | string): boolean {
    return this.nars.has(key(hash))
  }

  /** The NAR with this FileHash, or undefined. */
  get(hash: NarHash | string): StoreEntry | undefined {
    const fileHash = key(hash)
    const record = this.nars.get(fileHash)
    return record && this.entry(fileHash, record)
  }

  /** Every NAR, least recently used first. */
  entries(): StoreEntry[] {
    return [...this.nars].map(([fileHash, record]) => this.entry(fileHash, record))
  }

  /** The FileHashes pinned, whether their NAR is here yet or not. */
  pins(): string[] {
    return [...this.pinned]
  }

  /** Registers a listener for NARs that entered (`add`) or left (`evict`) the store; returns its removal. */
  on(event: StoreEvent, listener: (entry: StoreEntry) => void): () => void {
    this.listeners[event].add(listener)
    return () => this.listeners[event].delete(listener)
  }

  /**
   * Opens the NAR for reading from `offset`, and marks it used. Throws NarNotFoundError when it is not
   * here (or was evicted a moment ago).
   */
  async read(
    hash: NarHash | string,
    options: { offset?: number; signal?: AbortSignal } = {},
  ): Promise<{ body: AsyncIterable<Uint8Array>; size: number; offset: number }> {
    options.signal?.throwIfAborted()
    const fileHash = key(hash)
    const record = this.nars.get(fileHash)
    if (!record) throw new NarNotFoundError(`${fileHash} is not in store ${this.dir}`)
    let handle: FileHandle
    try {
      handle = await open(join(this.dir, 'nar', record.name), 'r')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new NarNotFoundError(`${fileHash} is not in store ${this.dir}`, { cause: error })
      }
      throw error
    }
    this.touch(fileHash)
    const offset = Math.min(Math.max(0, options.offset ?? 0), record.size)
    const stream = handle.createReadStream({ start: offset, autoClose: true, ...(options.signal ? { signal: options.signal } : {}) })
    return { body: stream as AsyncIterable<Uint8Array>, size: record.size, offset }
  }

  /** Whether the store holds a narinfo for this store hash part (and so its NAR). */
  hasNarInfo(hashPart: string): boolean {
    const known = this.narInfos.get(hashPart)
    return known !== undefined && this.nars.has(known.fileHash)
  }

  /** The narinfo text for a store hash part, as the cache signed it (its URL names the NAR here). */
  async narInfo(hashPart: string): Promise<string | undefined> {
    const known = this.narInfos.get(hashPart)
    if (!known || !this.nars.has(known.fileHash)) return undefined
    try {
      const text = await readFile(join(this.dir, `${hashPart}.narinfo`), 'utf8')
      this.touch(known.fileHash)
      return text
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw error
    }
  }

  /**
   * Adds the narinfo of a NAR that is here. Its URL is set to the NAR's name in this folder (the URL is
   * not signed, so the signatures hold); every other line stays as the cache wrote it. Throws
   * NarNotFoundError when the NAR is not here: a narinfo in a cache always means a complete NAR.
   */
  async addNarInfo(text: string, options: { signal?: AbortSignal } = {}): Promise<NarInfo> {
    const narInfo = parseNarInfo(text)
    const file = narInfoFile(narInfo)
    const fileHash = file.fileHash.toString()
    const record = this.nars.get(fileHash)
    if (!record || `nar/${record.name}` !== file.url) {
      throw new NarNotFoundError(`the NAR of ${narInfo.storePath} (${fileHash}) is not in store ${this.dir}`)
    }
    const body = rewriteNarInfo(text, file.url).text
    const bytes = Buffer.byteLength(body)
    await this.serial(async () => {
      options.signal?.throwIfAborted()
      const before = this.narInfos.get(file.hashPart)?.bytes ?? 0
      this.touch(fileHash)
      await this.makeRoom(bytes - before, fileHash)
      // The NAR may have been evicted while this waited its turn.
      if (!this.nars.has(fileHash)) throw new NarNotFoundError(`the NAR of ${narInfo.storePath} left store ${this.dir}`)
      await writeAtomically(join(this.dir, `${file.hashPart}.narinfo`), body)
      this.linkNarInfo(file.hashPart, fileHash, bytes)
      this.state.putNarInfo({ hash_part: file.hashPart, file_hash: fileHash, bytes })
    })
    return { ...narInfo, url: file.url }
  }

  /**
   * Starts writing the NAR with this FileHash. With a `size`, room is made first, so that the folder
   * stays within budget while it is written; without one, at commit. Throws StoreFullError when it can't
   * fit. The writer commits only bytes whose SHA-256 and size match.
   */
  async writer(hash: NarHash | string, options: StoreWriterOptions = {}): Promise<StoreWriter> {
    if (this.closed) throw new Error(`store ${this.dir} is closed`)
    const fileHash = typeof hash === 'string' ? parseNarHash(hash) : hash
    const name = narFileName(fileHash, options.compression ?? 'xz').slice('nar/'.length)
    const size = options.size
    if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) throw new RangeError(`size ${size} is not a byte count`)
    let reservation = 0
    if (size !== undefined) {
      await this.serial(async () => {
        options.signal?.throwIfAborted()
        await this.makeRoom(size)
        this.reserved += size
        reservation = size
      })
    }
    const temp = join(this.dir, 'nar', `.${name}.${randomBytes(6).toString('hex')}.partial`)
    let handle: FileHandle
    try {
      handle = await open(temp, 'wx', 0o644)
    } catch (error) {
      this.reserved -= reservation
      throw error
    }
    const writer: StoreWriter = new StoreWriter({
      fileHash,
      name,
      size,
      temp,
      handle,
      commit: (written) =>
        this.serial(async () => {
          this.reserved -= reservation
          reservation = 0
          const existing = this.nars.get(fileHash.toString())
          if (existing) {
            await rm(temp, { force: true })
            this.touch(fileHash.toString())
            return this.entry(fileHash.toString(), existing)
          }
          try {
            await this.makeRoom(written)
          } catch (error) {
            await rm(temp, { force: true })
            throw error
          }
          await rename(temp, join(this.dir, 'nar', name))
          await syncDir(join(this.dir, 'nar'))
          return this.record(fileHash.toString(), name, written)
        }),
      release: () => {
        this.reserved -= reservation
        reservation = 0
      },
      done: () => this.writers.delete(writer),
    })
    this.writers.add(writer)
    return writer
  }

  /** Writes a whole body into the store; the entry, once its SHA-256 matched. */
  async add(hash: NarHash | string, body: AsyncIterable<Uint8Array>, options: StoreWriterOptions = {}): Promise<StoreEntry> {
    const writer = await this.writer(hash, options)
    try {
      for await (const chunk of body) await writer.write(chunk)
      return await writer.commit()
    } finally {
      await writer.abort()
    }
  }

  /**
   * Passes `body` through unchanged and writes a copy into the store as it goes: the tee for a NAR being
   * served. The copy is committed when the body ends and its SHA-256 matched; a body that fails, a
   * consumer that stops early, or a store that can't take the file leave nothing but what was there.
   * Store failures never break the stream; they go to `onError`.
   */
  async *tee(
    hash: NarHash | string,
    body: AsyncIterable<Uint8Array>,
    options: StoreWriterOptions & { onError?: (error: unknown) => void; onCommit?: (entry: StoreEntry) => void } = {},
  ): AsyncGenerator<Uint8Array> {
    let writer: StoreWriter | undefined
    const fail = (error: unknown): void => {
      void writer?.abort()
      writer = undefined
      options.onError?.(error)
    }
    if (!this.has(hash)) {
      try {
        writer = await this.writer(hash, options)
      } catch (error) {
        fail(error)
      }
    }
    try {
      for await (const chunk of body) {
        if (writer) {
          try {
            await writer.write(chunk)
          } catch (error) {
            fail(error)
          }
        }
        yield chunk
      }
      if (writer) {
        try {
          // Committed whether or not anyone listens: `f?.(await x)` would skip the await.
          const entry = await writer.commit()
          options.onCommit?.(entry)
        } catch (error) {
          fail(error)
        }
      }
    } finally {
      await writer?.abort()
    }
  }

  /** Pins a FileHash: its NAR (now or once it arrives) is never evicted. */
  pin(hash: NarHash | string): void {
    const fileHash = key(hash)
    this.pinned.add(fileHash)
    this.state.pin(fileHash)
  }

  unpin(hash: NarHash | string): void {
    const fileHash = key(hash)
    this.pinned.delete(fileHash)
    this.state.unpin(fileHash)
  }

  /** Removes a NAR and the narinfos that name it, pinned or not (e.g. one that failed verification). */
  async remove(hash: NarHash | string): Promise<boolean> {
    const fileHash = key(hash)
    return this.serial(async () => {
      if (!this.nars.has(fileHash)) return false
      await this.evict(fileHash)
      return true
    })
  }

  /** Aborts writers in progress, writes last-use times and releases the folder. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.all([...this.writers].map((writer) => writer.abort()))
    await this.queue.catch(() => {})
    this.flushTouches()
    this.state.close()
  }

  /** Reads the folder and the bookkeeping, and makes them agree. Part of `openStore`. */
  async load(signal?: AbortSignal): Promise<void> {
    const narDir = join(this.dir, 'nar')
    for (const row of this.state.nars()) this.nars.set(row.file_hash, { name: row.name, size: row.size, lastUsed: row.last_used })
    const found = new Map<string, NarRecord>()
    for (const name of await readdir(narDir)) {
      signal?.throwIfAborted()
      if (PARTIAL.test(name)) {
        // A write a killed process never finished: it never had a final name.
        await rm(join(narDir, name), { force: true })
        continue
      }
      const hash = parseNarFileName(name)
      if (!hash) continue
      const info = await stat(join(narDir, name)).catch(() => undefined)
      if (!info?.isFile()) continue
      const known = this.nars.get(hash.toString())
      found.set(hash.toString(), { name, size: info.size, lastUsed: known?.name === name ? known.lastUsed : info.mtimeMs })
    }
    this.nars.clear()
    for (const [fileHash, record] of [...found].sort((a, b) => a[1].lastUsed - b[1].lastUsed)) {
      this.nars.set(fileHash, record)
      this.filesBytes += record.size
      this.lastUsed = Math.max(this.lastUsed, record.lastUsed)
    }
    for (const fileHash of this.state.pins()) this.pinned.add(fileHash)

    const knownNarInfos = new Map(this.state.narInfos().map((row) => [row.hash_part, row]))
    const narInfoFiles = new Set<string>()
    for (const name of await readdir(this.dir)) {
      signal?.throwIfAborted()
      if (PARTIAL.test(name) || OLD_TEMP.test(name)) {
        await rm(join(this.dir, name), { force: true })
        continue
      }
      const match = NARINFO_NAME.exec(name)
      if (match) narInfoFiles.add(match[1]!)
    }
    for (const hashPart of narInfoFiles) {
      const path = join(this.dir, `${hashPart}.narinfo`)
      let row = knownNarInfos.get(hashPart)
      if (!row) row = await describeNarInfo(path, hashPart)
      // A narinfo whose NAR is gone would send Nix after a file that is not there.
      if (!row || !this.nars.has(row.file_hash)) {
        await rm(path, { force: true })
        continue
      }
      this.linkNarInfo(hashPart, row.file_hash, row.bytes)
    }
    this.filesBytes += await ensureCacheInfo(join(this.dir, CACHE_INFO))

    this.state.transaction(() => {
      for (const row of this.state.nars()) if (!this.nars.has(row.file_hash)) this.state.deleteNar(row.file_hash)
      for (const [fileHash, record] of this.nars) {
        this.state.putNar({ file_hash: fileHash, name: record.name, size: record.size, last_used: record.lastUsed })
      }
      for (const hashPart of knownNarInfos.keys()) if (!this.narInfos.has(hashPart)) this.state.deleteNarInfo(hashPart)
      for (const [hashPart, row] of this.narInfos) this.state.putNarInfo({ hash_part: hashPart, file_hash: row.fileHash, bytes: row.bytes })
    })
    // A budget lowered since the last run takes effect now, as far as the pins let it.
    await this.serial(() => this.makeRoom(0, undefined, true))
  }

  private entry(fileHash: string, record: NarRecord): StoreEntry {
    return {
      fileHash: parseNarHash(fileHash),
      url: `nar/${record.name}`,
      path: join(this.dir, 'nar', record.name),
      size: record.size,
      pinned: this.pinned.has(fileHash),
      lastUsed: record.lastUsed,
    }
  }

  private record(fileHash: string, name: string, size: number): StoreEntry {
    const record = { name, size, lastUsed: this.now() }
    this.nars.set(fileHash, record)
    this.filesBytes += size
    this.state.putNar({ file_hash: fileHash, name, size, last_used: record.lastUsed })
    const entry = this.entry(fileHash, record)
    for (const listener of this.listeners.add) safely(listener, entry)
    return entry
  }

  private linkNarInfo(hashPart: string, fileHash: string, bytes: number): void {
    const before = this.narInfos.get(hashPart)
    if (before) {
      this.filesBytes -= before.bytes
      this.byNar.get(before.fileHash)?.delete(hashPart)
    }
    this.narInfos.set(hashPart, { fileHash, bytes })
    this.filesBytes += bytes
    let set = this.byNar.get(fileHash)
    if (!set) this.byNar.set(fileHash, (set = new Set()))
    set.add(hashPart)
  }

  /** A strictly increasing clock, so that two uses in one millisecond keep their order after a restart. */
  private now(): number {
    this.lastUsed = Math.max(Date.now(), this.lastUsed + 1)
    return this.lastUsed
  }

  private touch(fileHash: string): void {
    const record = this.nars.get(fileHash)
    if (!record) return
    record.lastUsed = this.now()
    this.nars.delete(fileHash)
    this.nars.set(fileHash, record)
    this.touched.set(fileHash, record.lastUsed)
    this.touchTimer ??= setTimeout(() => this.flushTouches(), this.touchFlushMs).unref()
  }

  private flushTouches(): void {
    clearTimeout(this.touchTimer)
    this.touchTimer = undefined
    if (this.touched.size === 0) return
    const times = [...this.touched]
    this.touched.clear()
    this.state.touch(times)
  }

  /**
   * Evicts least recently used, unpinned NARs (never `keep`) until `bytes` more fit within `maxBytes`;
   * throws StoreFullError, evicting nothing, when they can't (unless `bestEffort`). Runs inside `serial`.
   */
  private async makeRoom(bytes: number, keep?: string, bestEffort = false): Promise<void> {
    this.bookkeepingBytes = await bookkeepingSize(join(this.dir, STATE_DIR))
    if (this.usedBytes + bytes <= this.maxBytes) return
    const candidates = [...this.nars.keys()].filter((fileHash) => !this.pinned.has(fileHash) && fileHash !== keep)
    let freeable = 0
    for (const fileHash of candidates) freeable += this.nars.get(fileHash)!.size + this.narInfoBytes(fileHash)
    if (!bestEffort && this.usedBytes + bytes - freeable > this.maxBytes) {
      throw new StoreFullError(
        `${bytes} bytes don't fit in store ${this.dir}: ${this.usedBytes} of ${this.maxBytes} bytes used, ${freeable} of them evictable`,
        { size: bytes, maxBytes: this.maxBytes },
      )
    }
    for (const fileHash of candidates) {
      if (this.usedBytes + bytes <= this.maxBytes) break
      await this.evict(fileHash)
    }
  }

  private narInfoBytes(fileHash: string): number {
    let bytes = 0
    for (const hashPart of this.byNar.get(fileHash) ?? []) bytes += this.narInfos.get(hashPart)?.bytes ?? 0
    return bytes
  }

  /** Removes the narinfos first, then the NAR: a narinfo never names a missing file. Runs inside `serial`. */
  private async evict(fileHash: string): Promise<void> {
    const record = this.nars.get(fileHash)
    if (!record) return
    for (const hashPart of this.byNar.get(fileHash) ?? []) {
      await rm(join(this.dir, `${hashPart}.narinfo`), { force: true })
      this.filesBytes -= this.narInfos.get(hashPart)?.bytes ?? 0
      this.narInfos.delete(hashPart)
      this.state.deleteNarInfo(hashPart)
    }
    this.byNar.delete(fileHash)
    await rm(join(this.dir, 'nar', record.name), { force: true })
    this.nars.delete(fileHash)
    this.touched.delete(fileHash)
    this.filesBytes -= record.size
    this.state.deleteNar(fileHash)
    const entry = this.entry(fileHash, record)
    for (const listener of this.listeners.evict) safely(listener, entry)
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn)
    this.queue = run.catch(() => {})
    return run
  }
}

/**
 * Opens (or makes) a store folder and takes ownership of it: a second open, in this process or another,
 * fails with StoreLockedError until this one is closed or its process dies. Leftovers of a killed
 * write are removed, and the bookkeeping is reconciled with the files.
 */
export async function openStore(dir: string, options: OpenStoreOptions = {}): Promise<NarStore> {
  const maxBytes = options.maxBytes ?? DEFAULT_STORE_MAX_BYTES
  if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) throw new RangeError(`maxBytes ${maxBytes} is not a positive byte count`)
  options.signal?.throwIfAborted()
  await makeDirectory(join(dir, 'nar'))
  await makeDirectory(join(dir, STATE_DIR))
  const state = new StoreState(join(dir, STATE_DIR, STATE_FILE), dir)
  const store = new NarStore(dir, state, { maxBytes, touchFlushMs: options.touchFlushMs ?? DEFAULT_TOUCH_FLUSH_MS })
  try {
    await store.load(options.signal)
  } catch (error) {
    await store.close()
    throw error
  }
  return store
}

function key(hash: NarHash | string): string {
  return (typeof hash === 'string' ? parseNarHash(hash) : hash).toString()
}

function safely(listener: (entry: StoreEntry) => void, entry: StoreEntry): void {
  try {
    listener(entry)
  } catch {
    // A listener's failure is its own; the store's state is already settled.
  }
}

/** What a narinfo file found on disk but not in the bookkeeping names; undefined when it can't be read. */
async function describeNarInfo(path: string, hashPart: string): Promise<{ hash_part: string; file_hash: string; bytes: number } | undefined> {
  try {
    const text = await readFile(path, 'utf8')
    const file = narInfoFile(parseNarInfo(text))
    if (file.hashPart !== hashPart) return undefined
    return { hash_part: hashPart, file_hash: file.fileHash.toString(), bytes: Buffer.byteLength(text) }
  } catch {
    return undefined
  }
}

/** Writes `nix-cache-info` when it is missing or unreadable; returns its size. */
async function ensureCacheInfo(path: string): Promise<number> {
  try {
    const text = await readFile(path, 'utf8')
    if (parseCacheInfo(text).storeDir === NIX_STORE_DIR) return Buffer.byteLength(text)
  } catch {
    // written below
  }
  const text = `StoreDir: ${NIX_STORE_DIR}\n`
  await writeAtomically(path, text)
  return Buffer.byteLength(text)
}

async function bookkeepingSize(dir: string): Promise<number> {
  let bytes = 0
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    bytes += (await stat(join(dir, name)).catch(() => undefined))?.size ?? 0
  }
  return bytes
}
