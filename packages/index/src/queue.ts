import type { NarLocation } from './location.js'
import { isBusy } from './schema.js'

/** One write to the index, as queued. `at` is when it was asked for. */
export type IndexOp =
  | { kind: 'put'; fileHash: string; location: NarLocation; at: string }
  | { kind: 'url'; fileHash: string; upstream: string; url: string; at: string }
  | { kind: 'bad'; fileHash: string; address: string; at: string }
  | { kind: 'gone'; fileHash: string; at: string }

/** How long writes gather before one transaction commits them. @default 100 */
export const DEFAULT_FLUSH_DELAY_MS = 100
/** Longest wait between tries while another process holds the file's lock. @default 5000 */
export const MAX_RETRY_DELAY_MS = 5_000
/**
 * Most writes queued at once. Past it a write is dropped (and logged): an index is a cache of hints, and
 * memory must stay bounded while the file stays locked. @default 100000
 */
export const MAX_QUEUED_WRITES = 100_000

/**
 * Gathers writes and commits them in batches off the caller's path. A commit that finds the file locked
 * fails at once (busy timeout 0) and is tried again later, with a backoff from the flush delay up to
 * MAX_RETRY_DELAY_MS, so a lock held elsewhere delays writes, never the event loop.
 */
export class WriteQueue {
  private ops: IndexOp[] = []
  private readonly byHash = new Map<string, IndexOp[]>()
  private readonly byUrl = new Map<string, string>()
  private timer: NodeJS.Timeout | undefined
  private retryDelay = DEFAULT_FLUSH_DELAY_MS
  private waiters: Array<() => void> = []
  private stopped = false
  /** Writes dropped because the queue was full. */
  dropped = 0

  constructor(
    private readonly options: {
      commit: (ops: readonly IndexOp[]) => unknown
      debug: (format: string, ...args: unknown[]) => void
    },
  ) {}

  push(op: IndexOp): void {
    if (this.ops.length >= MAX_QUEUED_WRITES) {
      this.dropped++
      this.options.debug('queue full: a %s write for %s dropped', op.kind, op.fileHash)
      return
    }
    this.ops.push(op)
    const list = this.byHash.get(op.fileHash)
    if (list) list.push(op)
    else this.byHash.set(op.fileHash, [op])
    if (op.kind === 'url') this.byUrl.set(op.url, op.fileHash)
    this.schedule(DEFAULT_FLUSH_DELAY_MS)
  }

  /** The writes still queued for this FileHash, oldest first. */
  pendingFor(fileHash: string): readonly IndexOp[] {
    return this.byHash.get(fileHash) ?? []
  }

  /** The FileHash a queued upstream URL names. */
  findByUrl(url: string): string | undefined {
    return this.byUrl.get(url)
  }

  /** Forgets every queued write for this FileHash; true if there was one. */
  drop(fileHash: string): boolean {
    const list = this.byHash.get(fileHash)
    if (!list) return false
    this.byHash.delete(fileHash)
    this.ops = this.ops.filter((op) => op.fileHash !== fileHash)
    for (const op of list) if (op.kind === 'url' && this.byUrl.get(op.url) === fileHash) this.byUrl.delete(op.url)
    return true
  }

  /** Resolves once the queue is empty (or stopped). */
  drain(signal?: AbortSignal): Promise<void> {
    if (this.ops.length === 0 || this.stopped) return Promise.resolve()
    this.schedule(0)
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.waiters = this.waiters.filter((w) => w !== done)
        reject(signal!.reason)
      }
      const done = (): void => {
        signal?.removeEventListener('abort', onAbort)
        resolve()
      }
      this.waiters.push(done)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** Stops the timer and hands back what was not written, for one last blocking commit. */
  stop(): IndexOp[] {
    this.stopped = true
    clearTimeout(this.timer)
    this.timer = undefined
    const left = this.ops
    this.ops = []
    this.byHash.clear()
    this.byUrl.clear()
    this.wake()
    return left
  }

  private schedule(delay: number): void {
    if (this.stopped) return
    if (this.timer !== undefined) {
      if (delay !== 0) return
      clearTimeout(this.timer)
    }
    this.timer = setTimeout(() => this.run(), delay)
    this.timer.unref()
  }

  private run(): void {
    this.timer = undefined
    if (this.ops.length === 0) return this.wake()
    const batch = this.ops
    try {
      this.options.commit(batch)
    } catch (error) {
      if (isBusy(error)) {
        this.retryDelay = Math.min(this.retryDelay * 2, MAX_RETRY_DELAY_MS)
        this.options.debug('file locked: %d writes wait %d ms', batch.length, this.retryDelay)
        this.schedule(this.retryDelay)
        return
      }
      // Anything but a lock (a full disk, a damaged file) would fail again: the batch is dropped, logged.
      this.options.debug('%d writes lost: %s', batch.length, error instanceof Error ? error.message : String(error))
    }
    // The commit is synchronous, so nothing was queued meanwhile: the batch is the whole queue.
    this.retryDelay = DEFAULT_FLUSH_DELAY_MS
    this.ops = []
    this.byHash.clear()
    this.byUrl.clear()
    this.wake()
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const waiter of waiters) waiter()
  }
}
