import type { NarHash, NarStream } from '@narrace/core'
import type { NarTracker } from './metrics.js'
import type { MemoryBudget } from './spool.js'
import { Spool } from './spool.js'

/**
 * How long after a file is complete its clients may read it from memory before it moves to disk: a
 * client still reading an 8 MiB file then reads it at under 280 KB/s. Sooner, a burst of clients that
 * share the machine fairly, each at its own modest pace, would have every file written to disk and its
 * memory left to the garbage collector while new downloads took the budget again. @default 30000
 */
export const SLOW_READER_SPILL_MS = 30_000

/** How one download is opened: the proxy's `resolveNar` call, with its backends, events and store tee. */
export interface OpenNar {
  (
    hash: NarHash,
    options: { signal: AbortSignal; size: number | undefined; verifyFirstBelow: number },
    download: NarDownload,
  ): Promise<{ stream: NarStream; body: AsyncIterable<Uint8Array> }>
}

export interface DownloadsOptions {
  open: OpenNar
  budget: MemoryBudget
  /** Where spool files go (see `spoolDirectory`). */
  spoolDir: string
  /** Files up to this size reach clients only once verified whole. */
  verifyFirstBelow: number
  /** Called once per download when it has ended, verified or not, for its log line and metrics. */
  onEnd?: (download: NarDownload, error: unknown) => void
  /** Told when the first download starts and when the last one is gone (to trim memory while idle). */
  onBusy?: (busy: boolean) => void
}

/**
 * One `resolveNar` for one FileHash, shared by every request for it. The bytes go into a spool that each
 * client reads at its own pace, so a slow client slows nobody and holds no more than the spool does:
 * the memory budget's share for a small file, a temporary file otherwise.
 */
export class NarDownload {
  readonly hash: NarHash
  stream: NarStream | undefined
  spool: Spool | undefined
  /** Whether clients get bytes only once the whole file verified. */
  verifyFirst: boolean
  /** Resolves at the first byte (the file is being spooled), rejects when no source could start it. */
  readonly opened: Promise<void>
  /** Resolves once the whole file is in and verified, rejects with the reason it is not. */
  readonly finished: Promise<void>
  readers = 0
  /** The metrics of this download's race, set when it opens. */
  tracker: NarTracker | undefined
  private readonly controller = new AbortController()
  private reserved = 0

  constructor(
    hash: NarHash,
    size: number | undefined,
    private readonly options: DownloadsOptions,
    private readonly onIdle: (download: NarDownload) => void,
  ) {
    this.hash = hash
    this.verifyFirst = size !== undefined && size <= options.verifyFirstBelow
    let markOpened!: () => void
    let failOpened!: (error: unknown) => void
    this.opened = new Promise<void>((resolve, reject) => {
      markOpened = resolve
      failOpened = reject
    })
    this.finished = this.run(size, markOpened, failOpened)
    // Every client awaits these itself; a download nobody waits for must not be an unhandled rejection.
    this.opened.catch(() => {})
    this.finished.catch(() => {})
  }

  private async run(size: number | undefined, markOpened: () => void, failOpened: (error: unknown) => void): Promise<void> {
    const { budget, verifyFirstBelow } = this.options
    let error: unknown
    try {
      // A small file is verified whole before it goes out: in memory while the budget allows (the core
      // verifies it then, and may start over from another source), else in a spool file. A file of unknown
      // size gets the most a small one takes, and moves to a file if it grows past that.
      const share = size ?? verifyFirstBelow
      if (share > 0 && share <= verifyFirstBelow && budget.tryReserve(share)) this.reserved = share
      this.spool = await Spool.open(this.options.spoolDir, this.reserved, () => this.releaseMemory())
      const { stream, body } = await this.options.open(
        this.hash,
        { signal: this.controller.signal, size, verifyFirstBelow: this.reserved > 0 ? verifyFirstBelow : 0 },
        this,
      )
      this.stream = stream
      if (stream.size !== undefined && stream.size <= verifyFirstBelow) this.verifyFirst = true
      // The size is known now: a reservation made for an unknown one keeps what the file needs.
      if (this.reserved > 0 && stream.size !== undefined && stream.size < this.reserved) {
        budget.release(this.reserved - stream.size)
        this.reserved = stream.size
      }
      markOpened()
      for await (const chunk of body) await this.spool.append(chunk)
      this.spool.finish()
      // Clients still reading a while after the end are slow: their copy moves to disk, the memory is freed.
      if (this.reserved > 0) {
        setTimeout(() => {
          if (this.readers > 0) this.spool?.spill().catch(() => {})
        }, SLOW_READER_SPILL_MS).unref()
      }
    } catch (caught) {
      error = caught
      this.failed = true
      failOpened(caught)
      this.spool?.fail(caught)
      throw caught
    } finally {
      this.options.onEnd?.(this, error)
      this.onIdle(this)
    }
  }

  /** False once the download failed or was aborted: the next request starts a new one. */
  get usable(): boolean {
    return !this.failed && !this.controller.signal.aborted
  }

  private failed = false

  /** A client stops reading: the last one to go aborts a download still running, and frees the spool. */
  leave(): void {
    this.readers--
    if (this.readers > 0) return
    if (!this.spool?.verified) this.controller.abort(new Error('every client went away'))
    this.onIdle(this)
  }

  /** Aborts the download for every client. */
  abort(reason: unknown): void {
    this.controller.abort(reason)
  }

  private releaseMemory(): void {
    this.options.budget.release(this.reserved)
    this.reserved = 0
  }

  /** Frees the memory reservation and the spool. */
  async release(): Promise<void> {
    this.releaseMemory()
    await this.spool?.release()
  }
}

/** The downloads under way, one per FileHash. */
export class Downloads {
  private readonly active = new Map<string, NarDownload>()

  constructor(private readonly options: DownloadsOptions) {}

  /** The download for this file, joined: started if none runs. Call `leave()` on it when done. */
  join(hash: NarHash, size: number | undefined): NarDownload {
    const key = hash.toString()
    let download = this.active.get(key)
    if (!download || !download.usable) {
      if (this.active.size === 0) this.options.onBusy?.(true)
      download = new NarDownload(hash, size, this.options, (idle) => this.idle(key, idle))
      this.active.set(key, download)
    }
    download.readers++
    return download
  }

  /** How many downloads are under way or still read. */
  get size(): number {
    return this.active.size
  }

  /** Aborts every download, for good: the proxy is closing, and the idle trims are over too. */
  abortAll(reason: unknown): void {
    this.closed = true
    this.options.onBusy?.(true)
    for (const download of this.active.values()) download.abort(reason)
  }

  private closed = false

  private idle(key: string, download: NarDownload): void {
    // A failed or aborted download leaves the map at once, so that the next request starts afresh; a
    // verified one stays while clients read it, and late joiners read the same spool.
    if (download.readers > 0 && download.usable) return
    if (this.active.get(key) === download) {
      this.active.delete(key)
      if (this.active.size === 0 && !this.closed) this.options.onBusy?.(false)
    }
    if (download.readers === 0) void download.release()
  }
}
