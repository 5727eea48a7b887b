import { performance } from 'node:perf_hooks'
import { NarBackendError, NarraceError, NarSizeMismatchError, NarStallError } from './errors.js'
import type { NarHash } from './hash.js'
import { TurnPacer } from './turns.js'
import type { NarBackend, NarFetchOptions, NarSource } from './types.js'

/** Marks an abort that narrace itself caused, so it is never reported as a backend failure. */
export class LostRaceError extends NarraceError {
  override name = 'LostRaceError'
  override readonly code = 'NARRACE_ABORTED'
}

export const noop = (): void => {}

/** After this many empty chunks in a row, narrace lets timers and I/O run before it reads on. */
const EMPTY_RUN = 64

/**
 * A request waits in its backend's own queue (for one of its connections) at most this many stall
 * timeouts, over every redirect hop: 2 min by default, within the 5 min Nix gives a transfer that stalls.
 */
export const MAX_QUEUED_STALLS = 4

/**
 * Bytes that every source of every download in this process together read in one turn of the event loop.
 * Node runs a chunk's whole promise chain (hash, race, the consumer) before libuv reads the socket again,
 * so a source with data waiting is read up to 32 times in a row: one 8 MiB NAR through the proxy held
 * turns for up to 17 ms (1.6 MiB in one), and timers, accepts and cheap requests waited behind them. With
 * one client of that NAR, the slowest `/nix-cache-info` meanwhile went from 28-94 ms (6 runs) to 15-31 ms
 * (4 runs). Half this share did as well there, but cost 3-4 % of a single download's throughput.
 * @default 1 MiB
 */
export const INGEST_TURN_BYTES = 1024 * 1024
const ingest = new TurnPacer(INGEST_TURN_BYTES)

/** A source that only ever yields empty chunks resolves every read at once and would starve the timers. */
function breathe(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

export function closeIterator(iterator: AsyncIterator<Uint8Array> | undefined): void {
  if (!iterator?.return) return
  try {
    Promise.resolve(iterator.return()).catch(noop)
  } catch {
    // A backend whose return() throws has nothing more to release.
  }
}

export function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

/** A plain error from a backend becomes a NarBackendError that names it. */
export function wrap(error: unknown, name: string, at: number): unknown {
  if (error instanceof NarraceError) return error
  return new NarBackendError(`${name} failed at byte ${at}: ${describe(error)}`, { backend: name, cause: error })
}

/** What every connection of one download shares. */
export interface SourceContext {
  readonly hash: NarHash
  readonly url: string | undefined
  /** The narinfo FileSize, passed to backends. */
  readonly fileSize: number | undefined
  /** The size a source must announce, once known; undefined while unknown. */
  expected(): number | undefined
  readonly maxBytes: number
  readonly stallMs: number
  /** The fewest bytes a source must send per `stallMs` of waiting for it. */
  readonly minWindowBytes: number
}

/**
 * One connection to one backend for the bytes from `offset` to `end`: connect, skip what the backend sent
 * below `offset`, stream, cut at `end`, end or fail. It has one watchdog: a read that waits `stallMs` for a
 * byte, or a source that sends fewer than `minWindowBytes` over `stallMs` of reads waiting on it, fails
 * with NarStallError. Time between reads (a slow consumer) never counts.
 */
export class SourceStream {
  readonly name: string
  readonly controller = new AbortController()
  readonly signal: AbortSignal
  /** The absolute offset of the next byte read() returns. */
  position: number
  /** Where read() stops, exclusive; may be lowered while streaming. */
  end: number | undefined
  /** The end asked of the backend: undefined for the rest of the file. */
  readonly limit: number | undefined
  /** The whole file's size as the backend announced it. */
  size: number | undefined
  /** Whether the backend says it serves ranges. */
  ranges = false
  private iterator: AsyncIterator<Uint8Array> | undefined
  /** The first chunk, read by connect(), or the rest of one cut at `end`: not returned yet. */
  private held: Uint8Array | undefined
  private skip = 0
  private closed = false
  // The watchdog.
  private timer: ReturnType<typeof setTimeout> | undefined
  private waitFrom: number | undefined
  private idleFrom = 0
  private waited = 0
  private windowBytes = 0
  private wake: ((error: unknown) => void) | undefined
  private failure: unknown
  private readonly onAbort = (): void => this.fail(this.signal.reason)

  constructor(
    private readonly context: SourceContext,
    readonly backend: NarBackend,
    name: string,
    parent: AbortSignal | undefined,
    offset: number,
    end?: number,
  ) {
    this.name = name
    this.position = offset
    this.end = end
    this.limit = end
    this.signal = parent ? AbortSignal.any([parent, this.controller.signal]) : this.controller.signal
    this.signal.addEventListener('abort', this.onAbort, { once: true })
  }

  /** Fetches and reads up to the first byte at `position`; rejects when the source fails or stalls first. */
  async connect(): Promise<void> {
    if (typeof this.backend?.fetch !== 'function') {
      throw new NarBackendError(`backend ${this.name} is missing or has no fetch()`, { backend: this.name })
    }
    this.beginWait()
    try {
      const request: NarFetchOptions = { signal: this.signal, offset: this.position }
      if (this.end !== undefined) request.end = this.end
      if (this.context.fileSize !== undefined) request.size = this.context.fileSize
      if (this.context.url !== undefined) request.url = this.context.url
      request.queued = (waiting) => this.queued(waiting)
      const fetching = (async () => this.backend.fetch(this.context.hash, request))()
      const source = await this.guard(fetching).catch((error: unknown) => {
        // A backend that answers after all, despite the abort or stall, still gets its body closed.
        fetching.then((late) => closeIterator(late?.body?.[Symbol.asyncIterator]?.()), noop)
        throw error
      })
      this.iterator = this.open(source)
      const first = await this.next()
      if (first === undefined) {
        throw new NarBackendError(`${this.name} ended without a byte at offset ${this.position}`, { backend: this.name })
      }
      this.held = first
    } catch (error) {
      this.close(error)
      throw error
    } finally {
      this.endWait()
      this.connecting = false
      // A backend that never said its request left the queue: the queue is over all the same.
      this.stopQueueTimer()
      this.inQueue = false
    }
  }

  /** Until connect() is over, the backend's own queue: the watchdog stops while the request waits there. */
  private connecting = true
  private inQueue = false
  private queuedAt = 0
  /** Time spent in the queue so far, over every redirect hop. */
  private queuedMs = 0
  private queueTimer: ReturnType<typeof setTimeout> | undefined

  private queued(waiting: boolean): void {
    if (!this.connecting || this.closed || waiting === this.inQueue) return
    this.inQueue = waiting
    const now = performance.now()
    if (waiting) {
      this.queuedAt = now
      this.endWait()
      // The queue has a limit too: clients that hold every connection of a source for ever must not keep
      // a file that another source has waiting for ever.
      const cap = this.context.stallMs * MAX_QUEUED_STALLS
      if (Number.isFinite(cap)) {
        this.queueTimer = setTimeout(
          () => this.stall(`waited ${cap} ms in its own queue for a connection`),
          Math.max(0, cap - this.queuedMs),
        )
      }
      return
    }
    this.stopQueueTimer()
    this.queuedMs += now - this.queuedAt
    // The clock goes on from where it stood, not from 0: each redirect hop queues again, and a source
    // must not win a fresh stall timeout for every hop (nor a fresh timer, if it fired in the queue).
    clearTimeout(this.timer)
    this.timer = undefined
    this.beginWait(this.idleFrom + (now - this.queuedAt))
  }

  private stopQueueTimer(): void {
    clearTimeout(this.queueTimer)
    this.queueTimer = undefined
  }

  /** Bytes this source handed out since it last took its share of a turn. */
  private owed = 0

  /** The next chunk at `position`, or undefined at the body's end or at `end`. */
  async read(): Promise<Uint8Array | undefined> {
    if (this.end !== undefined && this.position >= this.end) return undefined
    if (this.held) {
      const chunk = this.held
      this.held = undefined
      return this.handOut(chunk)
    }
    // Its turn comes before the stall clock starts: time given to other work is never the source's.
    if (this.owed > 0) {
      const turn = ingest.take(this.owed)
      this.owed = 0
      if (turn) {
        await turn
        // Closed or aborted meanwhile: the backend is not asked again.
        if (this.failure !== undefined) throw this.failure
        if (this.signal.aborted) throw this.signal.reason
      }
    }
    this.beginWait()
    try {
      const chunk = await this.next()
      return chunk === undefined ? undefined : this.handOut(chunk)
    } finally {
      this.endWait()
    }
  }

  private handOut(chunk: Uint8Array): Uint8Array {
    const out = this.take(chunk)
    this.owed += out.length
    return out
  }

  /**
   * At the end it asked for: reads the body's own end when it is already there, so that the request
   * ends as finished, not aborted, and an HTTP connection goes back to its pool for the next one. Never
   * waits on a backend that has not ended; never throws.
   */
  async settle(): Promise<void> {
    if (this.closed || this.limit === undefined || this.position < this.limit || this.held || !this.iterator) return
    const iterator = this.iterator
    try {
      await Promise.race([iterator.next(), new Promise((resolve) => setImmediate(resolve))])
    } catch {
      // Its failure after the last byte it owed changes nothing.
    }
  }

  /** Stops watching, and unless `reason` is undefined, aborts the backend. Safe to call more than once. */
  close(reason?: unknown): void {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.timer)
    this.timer = undefined
    this.stopQueueTimer()
    this.signal.removeEventListener('abort', this.onAbort)
    if (reason !== undefined) {
      this.controller.abort(reason)
      // A pending read must not wait for a source that ignores its signal.
      this.wake?.(reason)
    }
    closeIterator(this.iterator)
  }

  get isClosed(): boolean {
    return this.closed
  }

  /** Hands out a chunk, cut at `end`; the rest is kept, for when `end` moves on. */
  private take(chunk: Uint8Array): Uint8Array {
    if (this.end !== undefined && this.position + chunk.length > this.end) {
      this.held = chunk.subarray(this.end - this.position)
      chunk = chunk.subarray(0, this.end - this.position)
    }
    this.position += chunk.length
    return chunk
  }

  /** The next non-empty chunk after the skip, or undefined at the end of the body. */
  private async next(): Promise<Uint8Array | undefined> {
    let empty = 0
    for (;;) {
      if (this.failure !== undefined) throw this.failure
      const step = await this.guard(this.stepIterator())
      if (step.done) return undefined
      let chunk = this.toChunk(step.value)
      if (this.skip > 0) {
        // A source that ignored the offset: drop what is already there.
        const dropped = Math.min(this.skip, chunk.length)
        chunk = chunk.subarray(dropped)
        this.skip -= dropped
        // Catching up is progress: a large file must not be dropped for the time the skip takes.
        if (dropped > 0) this.progress(dropped)
      }
      if (chunk.length > 0) {
        this.progress(chunk.length)
        return chunk
      }
      // No byte: it can neither win nor put off the stall. A long run lets the watchdog fire.
      if (++empty % EMPTY_RUN === 0) await breathe()
    }
  }

  private stepIterator(): Promise<IteratorResult<Uint8Array>> {
    try {
      return Promise.resolve(this.iterator!.next())
    } catch (error) {
      return Promise.reject(error)
    }
  }

  private toChunk(value: unknown): Uint8Array {
    if (value instanceof Uint8Array) return value
    throw new NarBackendError(`backend ${this.name} yielded ${typeof value}, not a Uint8Array`, { backend: this.name })
  }

  /** Checks what a backend returned before trusting any of it. */
  private open(source: NarSource): AsyncIterator<Uint8Array> {
    const name = this.name
    const junk = (why: string): never => {
      throw new NarBackendError(`backend ${name} returned junk: ${why}`, { backend: name })
    }
    if (typeof source !== 'object' || source === null) junk('no source object')
    const body = source.body as AsyncIterable<Uint8Array> | undefined
    if (!body || typeof body[Symbol.asyncIterator] !== 'function') junk('body is not an AsyncIterable')
    if (!Number.isSafeInteger(source.offset) || source.offset < 0 || source.offset > this.position) {
      junk(`offset ${String(source.offset)} for a request at ${this.position}`)
    }
    const expected = this.context.expected()
    if (source.size !== undefined) {
      if (!Number.isSafeInteger(source.size) || source.size < 0) junk(`size ${String(source.size)}`)
      if (expected === undefined && source.size > this.context.maxBytes) {
        throw new NarSizeMismatchError(
          `${name} offers ${source.size} bytes of ${this.context.hash}, more than maxNarBytes (${this.context.maxBytes})`,
          { expected: this.context.maxBytes, actual: source.size, hash: this.context.hash.toString(), sources: [name] },
        )
      }
      if (expected !== undefined && source.size !== expected) {
        throw new NarSizeMismatchError(`${name} offers ${source.size} bytes of ${this.context.hash}, expected ${expected}`, {
          expected,
          actual: source.size,
          hash: this.context.hash.toString(),
          sources: [name],
        })
      }
      this.size = source.size
    }
    this.ranges = source.ranges === true
    this.skip = this.position - source.offset
    return body![Symbol.asyncIterator]()
  }

  /** Waits for `promise`, but rejects when the source is aborted or the watchdog fires. */
  private guard<T>(promise: Promise<T>): Promise<T> {
    if (this.failure !== undefined || this.signal.aborted) {
      promise.catch(noop)
      return Promise.reject(this.failure ?? this.signal.reason)
    }
    return new Promise<T>((resolve, reject) => {
      const wake = (error: unknown): void => {
        if (this.wake !== wake) return
        this.wake = undefined
        reject(error)
      }
      this.wake = wake
      promise.then(
        (value) => {
          if (this.wake !== wake) return
          this.wake = undefined
          resolve(value)
        },
        wake,
      )
    })
  }

  private fail(error: unknown): void {
    this.failure ??= error
    this.wake?.(error)
  }

  private progress(bytes: number): void {
    this.windowBytes += bytes
    this.idleFrom = performance.now()
  }

  /** A read starts waiting; the idle clock runs from `idleFrom` (now, unless it goes on from earlier). */
  private beginWait(idleFrom = performance.now()): void {
    const now = performance.now()
    this.waitFrom = now
    this.idleFrom = idleFrom
    if (this.timer === undefined && Number.isFinite(this.context.stallMs) && !this.closed) {
      this.arm(this.context.stallMs - (now - idleFrom))
    }
  }

  private endWait(): void {
    if (this.waitFrom !== undefined) this.waited += performance.now() - this.waitFrom
    this.waitFrom = undefined
  }

  private stall(why: string): void {
    this.fail(
      new NarStallError(`${this.name} ${why} at byte ${this.position} of ${this.context.hash}`, {
        backend: this.name,
        timeoutMs: this.context.stallMs,
      }),
    )
  }

  /** The one timer of this source, re-armed only when it fires. */
  private arm(ms: number): void {
    this.timer = setTimeout(() => this.check(), Math.max(0, ms))
  }

  private check(): void {
    this.timer = undefined
    // Not reading: the consumer is slow, not the source. The next read arms the timer again.
    if (this.waitFrom === undefined || this.closed) return
    const { stallMs, minWindowBytes } = this.context
    const now = performance.now()
    const idle = now - this.idleFrom
    let window = this.waited + (now - this.waitFrom)
    if (idle >= stallMs) return this.stall(`sent no byte for ${stallMs} ms`)
    if (window >= stallMs) {
      if (this.windowBytes < minWindowBytes) {
        return this.stall(`sent ${this.windowBytes} bytes in ${stallMs} ms, under the minimum rate`)
      }
      this.waited = 0
      this.waitFrom = now
      this.windowBytes = 0
      window = 0
    }
    this.arm(stallMs - Math.max(idle, window))
  }
}
