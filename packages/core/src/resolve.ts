import { createHash, type Hash } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import {
  NarBackendError,
  NarHashMismatchError,
  NarNotFoundError,
  NarraceError,
  NarSizeMismatchError,
  NarStallError,
  NarUnavailableError,
} from './errors.js'
import { NarHash, encodeNix32, parseNarHash } from './hash.js'
import type { NarBackend, NarEvent, NarSource, NarStream, ResolveNarOptions } from './types.js'

/** @default 30000: no byte for this long is a stall. */
export const DEFAULT_STALL_TIMEOUT_MS = 30_000
/** @default 1024: fewer bytes a second than this, averaged over the stall timeout, is a stall too. */
export const DEFAULT_MIN_BYTES_PER_SECOND = 1024
/** @default 64 GiB: where a file of unknown size is cut. */
export const DEFAULT_MAX_NAR_BYTES = 64 * 1024 ** 3

/** A backend fails over at most this many times before it is left out of the race. */
const MAX_STRIKES = 2

interface Entry {
  backend: NarBackend
  name: string
  strikes: number
  dead: boolean
}

/** The source currently streaming. */
interface Active {
  entry: Entry
  controller: AbortController
  signal: AbortSignal
  iterator: AsyncIterator<Uint8Array>
  /** The first chunk, read during the race and not yet delivered. */
  first: Uint8Array | undefined
  size: number | undefined
  /** When the pending read started; undefined while the consumer holds a chunk. */
  waitingSince?: number | undefined
  /** Time spent waiting on this source in the current rate window, not counting the pending read. */
  waited: number
  /** Bytes received in the current rate window. */
  windowBytes: number
  /** Fails the pending read: set while one is pending. */
  wake?: ((error: unknown) => void) | undefined
  /** The one stall timer of this source, re-armed only when it fires. */
  timer?: ReturnType<typeof setTimeout> | undefined
  onAbort?: (() => void) | undefined
}

/** Marks an abort that narrace itself caused, so it is never reported as a backend failure. */
class LostRaceError extends NarraceError {
  override name = 'LostRaceError'
  override readonly code = 'NARRACE_ABORTED'
}

const noop = (): void => {}

/** After this many empty chunks in a row, narrace lets timers and I/O run before it reads on. */
const EMPTY_RUN = 64

/** A source that only ever yields empty chunks resolves every read at once and would starve the timers. */
function breathe(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

/**
 * Waits for `promise`, but rejects with `signal.reason` on abort and with `onStall()` after `ms`.
 * The promise's own rejection is always handled, so a dropped source never raises an unhandled rejection.
 */
function guard<T>(promise: Promise<T>, signal: AbortSignal, ms: number, onStall: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) {
      promise.catch(noop)
      reject(signal.reason)
      return
    }
    const timer = Number.isFinite(ms) ? setTimeout(() => settle(reject, onStall()), Math.max(0, ms)) : undefined
    const onAbort = (): void => settle(reject, signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    let settled = false
    function settle<V>(fn: (v: V) => void, value: V): void {
      if (settled) return
      settled = true
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      fn(value)
    }
    promise.then(
      (value) => settle(resolve, value),
      (error: unknown) => settle(reject, error),
    )
  })
}

/** Waits `ms`, or less once `wake` fires; rejects when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal, wake: AbortSignal): Promise<void> {
  const either = AbortSignal.any([signal, wake])
  return guard(new Promise<never>(noop), either, ms, () => new Error('slept')).catch(() => {
    if (signal.aborted) throw signal.reason
  })
}

function closeIterator(iterator: AsyncIterator<Uint8Array> | undefined): void {
  if (!iterator?.return) return
  try {
    Promise.resolve(iterator.return()).catch(noop)
  } catch {
    // A backend whose return() throws has nothing more to release.
  }
}

function toChunk(value: unknown, name: string): Uint8Array {
  if (value instanceof Uint8Array) return value
  throw new NarBackendError(`backend ${name} yielded ${typeof value}, not a Uint8Array`, { backend: name })
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

class Download {
  readonly hash: NarHash
  readonly entries: Entry[]
  readonly signal: AbortSignal | undefined
  readonly stallMs: number
  /** The fewest bytes a source must send per `stallMs` of waiting for it. */
  readonly minWindowBytes: number
  readonly maxBytes: number
  readonly t0 = performance.now()
  /** The FileSize from the narinfo, when given. */
  readonly fileSize: number | undefined
  expected: number | undefined
  winner = ''
  sources: string[] = []
  bytesRead = 0
  active: Active | undefined
  hasher: Hash = createHash('sha256')
  finished = false
  private readonly options: ResolveNarOptions

  constructor(hash: NarHash, options: ResolveNarOptions) {
    this.hash = hash
    this.options = options
    this.signal = options.signal
    this.stallMs = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS
    const minRate = options.minBytesPerSecond ?? DEFAULT_MIN_BYTES_PER_SECOND
    this.minWindowBytes = Number.isFinite(this.stallMs) && minRate > 0 ? (minRate * this.stallMs) / 1000 : 0
    this.maxBytes = options.maxNarBytes ?? DEFAULT_MAX_NAR_BYTES
    this.fileSize = options.size
    this.expected = options.size
    const backends: unknown[] = Array.isArray(options.backends) ? options.backends : []
    this.entries = backends.map((backend, i) => {
      const ok = typeof backend === 'object' && backend !== null && typeof (backend as NarBackend).fetch === 'function'
      const name = ok && typeof (backend as NarBackend).name === 'string' ? (backend as NarBackend).name : `backend#${i}`
      return { backend: backend as NarBackend, name, strikes: 0, dead: false }
    })
  }

  emit(type: NarEvent['type'], backend: string, error?: unknown): void {
    if (!this.options.onEvent) return
    const event: NarEvent = { type, backend, ms: performance.now() - this.t0, bytes: this.bytesRead }
    if (error !== undefined) event.error = error
    try {
      this.options.onEvent(event)
    } catch {
      // A listener's bug must not break the download it observes.
    }
  }

  /** Records a failure; a source that has no copy, or lies, is out for good. */
  strike(entry: Entry, error: unknown): void {
    entry.strikes++
    if (
      error instanceof NarNotFoundError ||
      error instanceof NarHashMismatchError ||
      entry.strikes >= MAX_STRIKES
    ) {
      entry.dead = true
    }
    this.emit('fail', entry.name, error)
  }

  /** Starts `candidates` at `offset`; resolves with the first to yield a byte and aborts the rest. */
  async race(candidates: Entry[], offset: number, hedged: boolean): Promise<Active> {
    const failures = new Map<Entry, unknown>()
    // `running` counts started attempts; when all have failed, hedged ones stop waiting.
    const state = { settled: false, running: 0, wake: new AbortController() }
    const attempts = candidates.map((entry) => {
      const controller = new AbortController()
      const signal = this.signal ? AbortSignal.any([this.signal, controller.signal]) : controller.signal
      const started = { value: false }
      const promise = this.attempt(entry, controller, signal, offset, hedged, state, started).catch((error: unknown) => {
        if (started.value && --state.running === 0 && !state.settled) state.wake.abort()
        if (!signal.aborted || !state.settled) {
          if (!this.signal?.aborted) {
            failures.set(entry, error)
            this.strike(entry, error)
          }
        }
        throw error
      })
      return { entry, controller, promise, started }
    })
    try {
      const won = await Promise.any(attempts.map((a) => a.promise))
      for (const a of attempts) {
        if (a.entry === won.entry) continue
        if (!a.controller.signal.aborted) {
          a.controller.abort(new LostRaceError(`${a.entry.name} lost the race to ${won.entry.name}`))
          if (a.started.value) this.emit('abort', a.entry.name)
        }
      }
      return won
    } catch (error) {
      if (this.signal?.aborted) {
        for (const a of attempts) if (a.started.value && !failures.has(a.entry)) this.emit('abort', a.entry.name)
        throw this.signal.reason
      }
      if (error instanceof AggregateError) {
        const errors = candidates.map((c) => failures.get(c) ?? new NarBackendError(`${c.name} failed`))
        const mismatch = errors.find((e) => e instanceof NarHashMismatchError)
        if (mismatch && errors.every((e) => e instanceof NarHashMismatchError || e instanceof NarNotFoundError)) {
          throw mismatch
        }
        if (candidates.length === 0) throw new NarNotFoundError(`no backend left to fetch ${this.hash}`, { errors })
        const reasons = candidates.map((c, i) => `${c.name}: ${describe(errors[i])}`).join('; ')
        // "Not here" from every source is a miss; anything else may be an outage of a source that has it.
        if (errors.every((e) => e instanceof NarNotFoundError)) {
          throw new NarNotFoundError(`no backend has ${this.hash} (${reasons})`, { errors })
        }
        throw new NarUnavailableError(`no backend could deliver ${this.hash} from byte ${offset} (${reasons})`, {
          errors,
        })
      }
      throw error
    }
  }

  private async attempt(
    entry: Entry,
    controller: AbortController,
    signal: AbortSignal,
    offset: number,
    hedged: boolean,
    state: { settled: boolean; running: number; wake: AbortController },
    started: { value: boolean },
  ): Promise<Active> {
    const delay = hedged ? (this.options.hedge?.[entry.name] ?? 0) : 0
    if (delay > 0) await sleep(delay, signal, state.wake.signal)
    if (state.settled || signal.aborted) throw signal.reason ?? new LostRaceError('race already won')
    started.value = true
    state.running++
    if (typeof entry.backend?.fetch !== 'function') {
      throw new NarBackendError(`backend ${entry.name} is missing or has no fetch()`, { backend: entry.name })
    }
    this.emit('start', entry.name)
    let deadline = performance.now() + this.stallMs
    const onStall = (): Error =>
      new NarStallError(`${entry.name} sent no byte of ${this.hash} within ${this.stallMs} ms`, {
        backend: entry.name,
        timeoutMs: this.stallMs,
      })
    let iterator: AsyncIterator<Uint8Array> | undefined
    try {
      const request: Parameters<NarBackend['fetch']>[1] = { signal, offset }
      if (this.fileSize !== undefined) request.size = this.fileSize
      if (this.options.url !== undefined) request.url = this.options.url
      const fetching = (async () => entry.backend.fetch(this.hash, request))()
      const source = await guard(fetching, signal, deadline - performance.now(), onStall).catch((error: unknown) => {
        // A backend that answers after all, despite the abort or stall, still gets its body closed.
        fetching.then((late) => closeIterator(late?.body?.[Symbol.asyncIterator]?.()), noop)
        throw error
      })
      iterator = this.open(source, entry.name, offset)
      let skip = offset - source.offset
      let empty = 0
      for (;;) {
        const step = await guard(iterator.next(), signal, deadline - performance.now(), onStall)
        if (step.done) {
          throw new NarBackendError(`${entry.name} ended without a byte at offset ${offset}`, { backend: entry.name })
        }
        let chunk = toChunk(step.value, entry.name)
        if (skip > 0) {
          // A source that ignored the offset: drop what the consumer already has.
          const dropped = Math.min(skip, chunk.length)
          chunk = chunk.subarray(dropped)
          skip -= dropped
          // Catching up is progress: a large file must not be dropped for the time the skip takes.
          if (dropped > 0) deadline = performance.now() + this.stallMs
        }
        if (chunk.length === 0) {
          // No byte: it can neither win nor put off the stall.
          if (performance.now() >= deadline) throw onStall()
          if (++empty % EMPTY_RUN === 0) await breathe()
          continue
        }
        if (state.settled) throw new LostRaceError('race already won')
        state.settled = true
        this.emit('first-byte', entry.name)
        return { entry, controller, signal, iterator, first: chunk, size: source.size, waited: 0, windowBytes: 0 }
      }
    } catch (error) {
      closeIterator(iterator)
      controller.abort(error)
      throw error
    }
  }

  /** Checks what a backend returned before trusting any of it. */
  private open(source: NarSource, name: string, offset: number): AsyncIterator<Uint8Array> {
    const junk = (why: string): never => {
      throw new NarBackendError(`backend ${name} returned junk: ${why}`, { backend: name })
    }
    if (typeof source !== 'object' || source === null) junk('no source object')
    const body = source.body as AsyncIterable<Uint8Array> | undefined
    if (!body || typeof body[Symbol.asyncIterator] !== 'function') junk('body is not an AsyncIterable')
    if (!Number.isSafeInteger(source.offset) || source.offset < 0 || source.offset > offset) {
      junk(`offset ${String(source.offset)} for a request at ${offset}`)
    }
    if (source.size !== undefined) {
      if (!Number.isSafeInteger(source.size) || source.size < 0) junk(`size ${String(source.size)}`)
      if (this.expected === undefined && source.size > this.maxBytes) {
        throw new NarSizeMismatchError(
          `${name} offers ${source.size} bytes of ${this.hash}, more than maxNarBytes (${this.maxBytes})`,
          { expected: this.maxBytes, actual: source.size, hash: this.hash.toString(), sources: [name] },
        )
      }
      if (this.expected !== undefined && source.size !== this.expected) {
        throw new NarSizeMismatchError(
          `${name} offers ${source.size} bytes of ${this.hash}, expected ${this.expected}`,
          { expected: this.expected, actual: source.size, hash: this.hash.toString(), sources: [name] },
        )
      }
    }
    return body![Symbol.asyncIterator]()
  }

  /**
   * Makes a source the active one. Reads of it share one abort listener and one stall timer instead of
   * a timer and a listener per chunk, which at 16 KiB chunks would cost more than the hashing.
   */
  private activate(active: Active): Active {
    active.onAbort = () => active.wake?.(active.signal.reason)
    active.signal.addEventListener('abort', active.onAbort, { once: true })
    this.active = active
    return active
  }

  /** Stops watching a source, and unless it finished, aborts it and closes its body. */
  private release(active: Active, reason?: unknown): void {
    clearTimeout(active.timer)
    active.timer = undefined
    if (active.onAbort) active.signal.removeEventListener('abort', active.onAbort)
    if (reason !== undefined) {
      active.controller.abort(reason)
      // A pending read must not wait for a source that ignores its signal.
      active.wake?.(reason)
    }
    closeIterator(active.iterator)
  }

  /**
   * The one watchdog of a source: it fails a read pending for `stallMs`, and a source that sent fewer
   * than `minWindowBytes` over `stallMs` of waiting for it. Time the consumer holds a chunk never counts.
   */
  private armStall(active: Active, ms: number): void {
    active.timer = setTimeout(() => {
      active.timer = undefined
      // Not reading: the consumer is slow, not the source. The next read arms the timer again.
      if (active.waitingSince === undefined) return
      const now = performance.now()
      const pending = now - active.waitingSince
      const window = active.waited + pending
      const stall = (why: string): void =>
        active.wake?.(
          new NarStallError(`${active.entry.name} ${why} at byte ${this.bytesRead} of ${this.hash}`, {
            backend: active.entry.name,
            timeoutMs: this.stallMs,
          }),
        )
      if (pending >= this.stallMs) return stall(`stalled for ${this.stallMs} ms`)
      if (window >= this.stallMs) {
        if (active.windowBytes < this.minWindowBytes) {
          return stall(`sent ${active.windowBytes} bytes in ${this.stallMs} ms, under the minimum rate`)
        }
        active.waited = 0
        active.waitingSince = now
        active.windowBytes = 0
        this.armStall(active, this.stallMs)
        return
      }
      this.armStall(active, this.stallMs - Math.max(pending, window))
    }, ms)
  }

  /** The active source's next step; rejects on its abort and when it stalls. */
  private step(active: Active): Promise<IteratorResult<Uint8Array>> {
    if (active.signal.aborted) return Promise.reject(active.signal.reason)
    return new Promise<IteratorResult<Uint8Array>>((resolve, reject) => {
      const settle = (): boolean => {
        if (active.wake !== wake) return false
        active.wake = undefined
        if (active.waitingSince !== undefined) active.waited += performance.now() - active.waitingSince
        active.waitingSince = undefined
        return true
      }
      const wake = (error: unknown): void => {
        if (settle()) reject(error)
      }
      active.wake = wake
      active.waitingSince = performance.now()
      if (active.timer === undefined && Number.isFinite(this.stallMs)) this.armStall(active, this.stallMs)
      active.iterator.next().then((result) => {
        if (settle()) resolve(result)
      }, wake)
    })
  }

  /** Runs the first race and makes its winner the active source. */
  async start(): Promise<void> {
    const active = this.activate(await this.race(this.entries, 0, true))
    this.winner = active.entry.name
    this.expected ??= active.size
    this.emit('win', active.entry.name)
  }

  /** Hands the stream to another source at `bytesRead`, or throws `cause` when none is left. */
  private async failover(cause: unknown): Promise<void> {
    const failed = this.active!
    this.active = undefined
    this.release(failed, cause)
    this.strike(failed.entry, cause)
    let candidates = this.entries.filter((e) => !e.dead && e !== failed.entry)
    if (candidates.length === 0 && !failed.entry.dead) candidates = [failed.entry]
    if (candidates.length === 0) throw cause
    try {
      this.activate(await this.race(candidates, this.bytesRead, false))
    } catch (error) {
      if (this.signal?.aborted) throw this.signal.reason
      throw cause
    }
    this.expected ??= this.active!.size
    this.emit('failover', this.active!.entry.name)
  }

  /** The next verified-so-far chunk, or undefined at a verified end. Fails over on errors, stalls and short ends. */
  async read(): Promise<Uint8Array | undefined> {
    let empty = 0
    let emptySince = 0
    for (;;) {
      const active = this.active
      if (!active) throw new NarraceError('the stream is closed')
      let chunk: Uint8Array
      if (active.first) {
        chunk = active.first
        active.first = undefined
      } else {
        let step: IteratorResult<Uint8Array>
        try {
          step = await this.step(active)
        } catch (error) {
          if (this.signal?.aborted) throw this.signal.reason
          if (this.active !== active) throw error
          await this.failover(wrap(error, active.entry.name, this.bytesRead))
          continue
        }
        if (step.done) {
          if (this.expected !== undefined && this.bytesRead < this.expected) {
            await this.failover(
              new NarSizeMismatchError(
                `${active.entry.name} ended at byte ${this.bytesRead} of ${this.expected} of ${this.hash}`,
                { expected: this.expected, actual: this.bytesRead, hash: this.hash.toString(), sources: [...this.sources] },
              ),
            )
            continue
          }
          return this.finish()
        }
        try {
          chunk = toChunk(step.value, active.entry.name)
        } catch (error) {
          await this.failover(error)
          continue
        }
      }
      if (chunk.length === 0) {
        // Empty chunks are no progress: a run of them as long as stallTimeoutMs is a stall.
        if (empty++ === 0) emptySince = performance.now()
        else if (performance.now() - emptySince >= this.stallMs) {
          empty = 0
          const why = `${active.entry.name} sent only empty chunks for ${this.stallMs} ms at byte ${this.bytesRead} of ${this.hash}`
          await this.failover(new NarStallError(why, { backend: active.entry.name, timeoutMs: this.stallMs }))
          continue
        }
        if (empty % EMPTY_RUN === 0) await breathe()
        continue
      }
      active.windowBytes += chunk.length
      const limit = this.expected ?? this.maxBytes
      if (this.bytesRead + chunk.length > limit) {
        const bound = this.expected === undefined ? `maxNarBytes (${limit})` : `the ${limit} bytes of ${this.hash}`
        throw new NarSizeMismatchError(
          `${active.entry.name} sent more than ${bound}`,
          {
            expected: limit,
            actual: this.bytesRead + chunk.length,
            hash: this.hash.toString(),
            sources: [...this.sources, active.entry.name].filter((v, i, all) => all.indexOf(v) === i),
          },
        )
      }
      if (this.sources.at(-1) !== active.entry.name && !this.sources.includes(active.entry.name)) {
        this.sources.push(active.entry.name)
      }
      this.hasher.update(chunk)
      this.bytesRead += chunk.length
      return chunk
    }
  }

  private finish(): undefined {
    const actual = this.hasher.digest()
    if (!actual.equals(this.hash.bytes)) {
      throw new NarHashMismatchError(
        `${this.hash} does not match the bytes received from ${this.sources.join(', ')} (sha256:${encodeNix32(actual)})`,
        { expected: this.hash.toString(), actual: `sha256:${encodeNix32(actual)}`, sources: [...this.sources] },
      )
    }
    this.finished = true
    this.emit('done', this.active!.entry.name)
    return undefined
  }

  /** Starts over from byte 0 after a failed verification, without the sources that delivered the bad copy. */
  async restart(cause: unknown): Promise<void> {
    const failed = this.active
    this.active = undefined
    if (failed) this.release(failed, cause)
    // The active source is to blame too: it may have sent too much before it got into `sources`.
    const blamed = new Set(failed ? [...this.sources, failed.entry.name] : this.sources)
    for (const name of blamed) {
      const entry = this.entries.find((e) => e.name === name)
      if (entry && !entry.dead) this.strike(entry, cause)
    }
    this.sources = []
    this.bytesRead = 0
    this.hasher = createHash('sha256')
    this.expected = this.fileSize
    const candidates = this.entries.filter((e) => !e.dead)
    try {
      this.activate(await this.race(candidates, 0, false))
    } catch (error) {
      if (this.signal?.aborted) throw this.signal.reason
      if (error instanceof NarNotFoundError && cause instanceof NarraceError) throw cause
      throw error
    }
    this.winner = this.active!.entry.name
    this.expected ??= this.active!.size
    this.emit('restart', this.active!.entry.name)
  }

  /** Cancels whatever is still running. Safe to call more than once. */
  close(reason?: unknown): void {
    const active = this.active
    this.active = undefined
    if (!active) return
    if (this.finished) {
      this.release(active)
      return
    }
    this.release(active, reason ?? new LostRaceError('the consumer stopped reading'))
    this.emit('abort', active.entry.name)
  }
}

function wrap(error: unknown, name: string, at: number): unknown {
  if (error instanceof NarraceError) return error
  return new NarBackendError(`${name} failed at byte ${at}: ${describe(error)}`, { backend: name, cause: error })
}

class Stream implements NarStream {
  private consumed = false
  constructor(
    private readonly download: Download,
    private readonly buffered: Uint8Array[] | undefined,
  ) {}

  get hash(): NarHash {
    return this.download.hash
  }
  get winner(): string {
    return this.download.winner
  }
  get size(): number | undefined {
    return this.download.expected
  }
  get bytesRead(): number {
    return this.download.bytesRead
  }
  get sources(): readonly string[] {
    return this.download.sources
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.consumed) throw new NarraceError(`the stream of ${this.download.hash} can be iterated only once`)
    this.consumed = true
    const download = this.download
    const buffered = this.buffered
    let done = false
    const end = (): IteratorResult<Uint8Array> => {
      done = true
      download.close()
      return { done: true, value: undefined }
    }
    const pull = async (): Promise<IteratorResult<Uint8Array>> => {
      if (done) return { done: true, value: undefined }
      try {
        // An abort ends the stream even when the next chunk is already at hand.
        download.signal?.throwIfAborted()
        const chunk = buffered ? buffered.shift() : await download.read()
        return chunk ? { done: false, value: chunk } : end()
      } catch (error) {
        // The consumer called return() while this read was pending: that is an end, not a failure.
        if (done) return { done: true, value: undefined }
        done = true
        download.close(error)
        throw error
      }
    }
    // Reads one at a time: a caller may call next() again before the last one settled.
    let queue: Promise<unknown> = Promise.resolve()
    return {
      next(): Promise<IteratorResult<Uint8Array>> {
        const result = queue.then(pull)
        queue = result.catch(noop)
        return result
      },
      async return(): Promise<IteratorResult<Uint8Array>> {
        return end()
      },
    }
  }
}

/**
 * Races every backend for the file with this FileHash, and streams from the first to yield a byte.
 * Every byte is hashed; the stream ends normally only when the SHA-256 matches.
 */
export async function resolveNar(hash: string | NarHash, options: ResolveNarOptions): Promise<NarStream> {
  const narHash = parseNarHash(hash)
  if (options.signal?.aborted) throw options.signal.reason
  const download = new Download(narHash, options)
  const verifyFirstBelow = options.verifyFirstBelow ?? 0
  try {
    await download.start()
    if (download.expected === undefined || download.expected > verifyFirstBelow) {
      return new Stream(download, undefined)
    }
    for (;;) {
      const chunks: Uint8Array[] = []
      try {
        for (let chunk = await download.read(); chunk; chunk = await download.read()) chunks.push(chunk)
        download.close()
        return new Stream(download, chunks)
      } catch (error) {
        if (options.signal?.aborted) throw options.signal.reason
        if (!(error instanceof NarHashMismatchError)) throw error
        await download.restart(error)
      }
    }
  } catch (error) {
    download.close(error)
    throw error
  }
}
