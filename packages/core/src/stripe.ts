import { performance } from 'node:perf_hooks'
import { NarBackendError, NarHashMismatchError, NarNotFoundError } from './errors.js'
import type { Entry, Failure } from './race.js'
import { LostRaceError, noop, wrap, type SourceStream } from './source.js'
import type { NarEventType } from './types.js'

/**
 * A segment is never smaller than this, unless the buffer is: each one costs a request, queues included,
 * and the last ones, which decide when the file is done, should be small.
 */
const MIN_SEGMENT_BYTES = 2 << 20
/** Nor larger than this, so that a slow source never holds much of the file. */
const MAX_SEGMENT_BYTES = 8 << 20
/**
 * Each segment is the rest divided by this many per connection: segments shrink toward the end of the
 * file, so that the last ones, which decide when it is done, are small.
 */
const SHARE_PER_CONNECTION = 2
/** A source fails this many times per connection in a row, without a segment done, before it is out. */
const MAX_FAILURES_PER_CONNECTION = 2
/** A hedge starts only when the source holding the segment would take this many times as long as the hedge. */
const HEDGE_FACTOR = 2
/** A connection that failed waits this long, times its source's failures in a row, before it tries again. */
const RETRY_BACKOFF_MS = 20
/**
 * Connections started with the opening race wait this long, so that each source answers its race request
 * first: on a link whose queue they share, their bytes would otherwise go ahead of the race's first byte.
 */
const EARLY_START_MS = 15
/** How often idle connections look for a segment to hedge. */
const HEDGE_CHECK_MS = 50
/** A source is compared by its rate only after it has streamed this long. */
const MIN_RATE_SAMPLE_MS = 50

/** What the stripe needs from the download it runs for. */
export interface StripeHost {
  readonly signal: AbortSignal | undefined
  emit(type: NarEventType, backend: string, error?: unknown): void
  /** Counts a failure; a source that has no copy, or lies, is out for good. */
  strike(entry: Entry, error: unknown): void
  /** Every backend that is not out for good. */
  live(): Entry[]
  /** A connection to `entry` for the bytes from `offset` to `end`, not yet connected. */
  source(entry: Entry, offset: number, end: number): SourceStream
}

export interface StripeOptions {
  /** The file's size. */
  size: number
  /** Where the consumer is: everything before it was delivered. */
  position: number
  maxBufferBytes: number
  connectionsPerSource: number
}

/** A received chunk and who sent it. */
export interface Delivery {
  chunk: Uint8Array
  sender: string
}

/** A byte range handed to one source at a time (two, while hedged). */
interface Segment {
  readonly start: number
  readonly end: number
  /** Every byte below this has arrived. */
  received: number
  /** What arrived and was not delivered yet, in order. */
  readonly chunks: Delivery[]
  readonly runners: Set<Runner>
}

/** One connection of one source, taking one segment after another. */
interface Runner {
  readonly entry: Entry
  source: SourceStream | undefined
  segment: Segment | undefined
  /** Bytes this connection received in its past segments and how long they took, for its rate. */
  bytes: number
  ms: number
  /** When its current segment started, and how much of it this runner received since. */
  since: number
  segmentBytes: number
  /** When the first byte of its current segment came; 0 before. */
  firstByteAt: number
  /** Set when a faster source finished this runner's segment first: it takes no more work. */
  outrun: boolean
}

/** Thrown by read() when no source can go on: the download falls back to one source at a time. */
export class StripeStuckError extends Error {
  constructor(
    readonly reason: unknown,
    /** The last failure of each source that failed in the stripe. */
    readonly failures: Failure[],
  ) {
    super('no source left to stripe over', { cause: reason })
  }
}

/**
 * The striped part of a download: the rest of the file cut into segments, spread over every source that
 * serves ranges, `connectionsPerSource` at a time. A connection that finishes takes the lowest segment
 * that fits in the reorder buffer, so each source gets work in proportion to its rate. When none is left,
 * an idle connection hedges a running segment that a slower source would finish later. A connection that
 * fails or stalls leaves its segment, with what already arrived, to the others.
 */
export class Stripe {
  private readonly segments: Segment[] = []
  private front = 0
  private position: number
  private readonly runners = new Set<Runner>()
  private failure: unknown
  /** The last error of a source, for when none is left. */
  private lastError: unknown
  private readonly lastErrors = new Map<Entry, unknown>()
  private closed = false
  /** Wakes read() when the front segment gets bytes, and idle runners when anything changes. */
  private reader: (() => void) | undefined
  private idle: (() => void)[] = []
  /** Ends the pauses of connections waiting to retry, when the stripe closes. */
  private readonly pauses = new Set<() => void>()
  private idleTimer: ReturnType<typeof setTimeout> | undefined
  /** The longest wait for the first byte of a segment seen from each source: a request's cost, queues included. */
  private readonly latency = new Map<Entry, number>()
  /** Failures of each source since its last segment done. */
  private readonly failures = new Map<Entry, number>()
  /** Bytes that arrived and were not delivered: never more than maxBufferBytes. */
  buffered = 0
  /** Bytes received that another connection had already delivered: what hedges cost. */
  duplicated = 0

  /**
   * The first segment while an opening race for it runs: nobody claims it until the winner is adopted.
   * Connections that start before the win take the segments after it.
   */
  private opening: Segment | undefined

  /**
   * Cuts the rest of the file into segments; the first ends at `span` when given (the winner of an
   * opening race was asked for that much). Nothing runs until `adopt()` or `early()`.
   */
  constructor(
    private readonly host: StripeHost,
    private readonly options: StripeOptions,
    span?: number,
  ) {
    const { size, position, maxBufferBytes, connectionsPerSource } = options
    this.position = position
    const connections = Math.max(1, host.live().length * connectionsPerSource)
    let start = position
    if (span !== undefined && span > position && span < size) {
      this.segments.push({ start, end: span, received: start, chunks: [], runners: new Set() })
      start = span
    }
    while (start < size) {
      const share = Math.ceil((size - start) / (connections * SHARE_PER_CONNECTION))
      const bytes = Math.max(1, Math.min(Math.max(MIN_SEGMENT_BYTES, share), MAX_SEGMENT_BYTES, Math.floor(maxBufferBytes / 2)))
      const end = Math.min(size, start + bytes)
      this.segments.push({ start, end, received: start, chunks: [], runners: new Set() })
      start = end
    }
  }

  /**
   * Starts every connection of `entry` but the one its race attempt holds, before the race is won: they
   * take the segments after the first, so that no link waits for the win to get its next request. Such a
   * connection that fails before the win leaves quietly; the race speaks for its source.
   */
  early(entry: Entry): void {
    if (entry.ranges === false) return
    this.opening ??= this.segments[this.front]
    for (let i = 1; i < this.options.connectionsPerSource; i++) this.spawn(entry, undefined, EARLY_START_MS)
  }

  /** The winner's open stream goes on with the first segment, without a new request; every source gets its connections. */
  adopt(winner: { entry: Entry; source: SourceStream }): void {
    this.opening = undefined
    this.spawn(winner.entry, winner.source)
    for (const entry of this.host.live()) {
      if (entry.ranges === false) continue
      let have = 0
      for (const r of this.runners) if (r.entry === entry) have++
      for (let i = have; i < this.options.connectionsPerSource; i++) this.spawn(entry, undefined)
    }
    this.notify()
  }

  /** The next chunk in order, or undefined at the end of the file. */
  async read(): Promise<Delivery | undefined> {
    for (;;) {
      if (this.failure !== undefined) throw this.failure
      const segment = this.segments[this.front]
      if (!segment) return undefined
      const next = segment.chunks.shift()
      if (next) {
        this.position += next.chunk.length
        this.buffered -= next.chunk.length
        if (this.position >= segment.end) {
          this.front++
          this.notify()
        }
        return next
      }
      if (this.runners.size === 0) {
        const failures = [...this.lastErrors].map(([entry, error]) => ({ name: entry.name, error }))
        throw new StripeStuckError(this.lastError, failures)
      }
      await new Promise<void>((resolve) => (this.reader = resolve))
    }
  }

  /** Aborts every connection. Safe to call more than once. */
  close(reason?: unknown): void {
    if (this.closed) return
    this.closed = true
    this.failure ??= reason ?? new LostRaceError('the stripe was closed')
    for (const runner of this.runners) runner.source?.close(reason ?? new LostRaceError('the consumer stopped reading'))
    this.segments.length = 0
    this.buffered = 0
    for (const done of [...this.pauses]) done()
    this.wakeReader()
    this.notify()
  }

  /** Sources that delivered bytes in this stripe and are still running, for `abort` events. */
  get running(): string[] {
    return [...new Set([...this.runners].filter((r) => r.source && !r.source.isClosed).map((r) => r.entry.name))]
  }

  private spawn(entry: Entry, source: SourceStream | undefined, delayMs = 0): void {
    const runner: Runner = { entry, source, segment: undefined, bytes: 0, ms: 0, since: 0, segmentBytes: 0, firstByteAt: 0, outrun: false }
    this.runners.add(runner)
    void (delayMs > 0 ? this.pause(delayMs).then(() => this.run(runner)) : this.run(runner))
      .catch(noop)
      .finally(() => {
        this.runners.delete(runner)
        runner.source?.close(new LostRaceError(`${entry.name} has no segment left`))
        this.release(runner)
        this.notify()
        this.wakeReader()
      })
  }

  /** One connection's life: take a segment, fetch it, until none is left or the source is out. */
  private async run(runner: Runner): Promise<void> {
    for (;;) {
      if (this.closed || runner.entry.dead) return
      const segment = this.claim(runner)
      if (segment === 'retire') return
      if (!segment) {
        await this.waitIdle()
        continue
      }
      try {
        await this.fetch(runner, segment)
        this.failures.set(runner.entry, 0)
        // A source that recovered is not to blame for what it failed before.
        this.lastErrors.delete(runner.entry)
      } catch (error) {
        this.release(runner)
        runner.source?.close(error)
        runner.source = undefined
        // Before the win the race speaks for the source; once it is out, there is nothing more to say.
        if (this.closed || this.host.signal?.aborted || this.opening || runner.entry.dead) return
        // Outrun by a hedge, or a source that turned out not to serve ranges: no failure of the source.
        if (error instanceof LostRaceError) {
          if (runner.outrun || runner.entry.ranges === false) return
          continue
        }
        this.lastError = error
        this.lastErrors.set(runner.entry, error)
        const failures = (this.failures.get(runner.entry) ?? 0) + 1
        this.failures.set(runner.entry, failures)
        if (error instanceof NarHashMismatchError || error instanceof NarNotFoundError) {
          this.host.strike(runner.entry, error)
          return
        }
        // A cut connection is retried: the segment keeps what arrived, and no byte comes twice. The
        // retry waits a little longer after each failure in a row, so that one reset of every
        // connection at once counts once per connection, not until the source is out.
        this.host.emit('fail', runner.entry.name, error)
        if (failures >= MAX_FAILURES_PER_CONNECTION * this.options.connectionsPerSource) {
          runner.entry.dead = true
          return
        }
        await this.pause(RETRY_BACKOFF_MS * failures)
      }
    }
  }

  /**
   * The segment `runner` takes next: the one its open stream reaches next if nobody has it; else the
   * lowest that nobody has and that fits in the buffer, unless a running one below it is worth hedging.
   */
  private claim(runner: Runner): Segment | 'retire' | undefined {
    if (this.segments.every((s) => s.received >= s.end)) return 'retire'
    const fits = (s: Segment): boolean => s.end - this.position <= this.options.maxBufferBytes || s === this.segments[this.front]
    const open = (s: Segment): boolean => s.runners.size === 0 && s.received < s.end && s !== this.opening
    const at = runner.source && !runner.source.isClosed ? runner.source.position : undefined
    if (at !== undefined) {
      const next = this.segments.find((s) => s.received === at && s.start <= at && at < s.end)
      if (next && open(next) && fits(next)) return next
    }
    if (runner.entry.ranges === false) {
      // A source that can't serve a range goes on only where its one stream already is.
      return at !== undefined && this.segments.some((s) => s.received === at && open(s)) ? undefined : 'retire'
    }
    const reserved = this.reserved(runner)
    // The lowest: on a link shared by several connections, what is asked first arrives first. A source
    // that turns out slow or silent there is hedged (hedgeTarget) long before the front reaches it.
    const first = this.segments.slice(this.front).find((s) => open(s) && !reserved.has(s) && fits(s))
    // Nothing to start when the buffer is full behind a slow segment, or when every segment is taken.
    return this.hedgeTarget(runner, first === undefined) ?? first
  }

  /** The segments right after another runner's open-ended stream: it goes on into them without a new request. */
  private reserved(runner: Runner): Set<Segment> {
    const reserved = new Set<Segment>()
    for (const other of this.runners) {
      if (other === runner || !other.source || other.source.isClosed || other.source.limit !== undefined) continue
      // Between two segments too, where its stream is now.
      const at = other.segment ? other.segment.end : other.source.position
      const next = this.segments.find((s) => s.start === at)
      if (next) reserved.add(next)
    }
    return reserved
  }

  /**
   * The lowest running segment whose one runner, of another source, would finish it HEDGE_FACTOR times
   * later than `runner` could: it would hold up the front once the others get there. A runner with
   * nothing else to do may try before its own rate is known.
   */
  private hedgeTarget(runner: Runner, idle: boolean): Segment | undefined {
    const mine = this.rateOf(runner) ?? this.entryRate(runner.entry)
    if (mine === undefined && !idle) return undefined
    const now = performance.now()
    for (let i = this.front; i < this.segments.length; i++) {
      const s = this.segments[i]!
      if (s.runners.size !== 1 || s.received >= s.end) continue
      const [owner] = s.runners
      if (!owner || owner.entry === runner.entry) continue
      const left = s.end - s.received
      // A new request costs about what this source's slowest first byte so far took.
      const cost = Math.max(MIN_RATE_SAMPLE_MS, this.latency.get(runner.entry) ?? 0)
      const mineMs = cost + (mine ? left / mine : 0)
      if (owner.firstByteAt === 0) {
        // No byte yet: slow once it waited HEDGE_FACTOR times longer than this source's slowest first byte.
        if (now - owner.since > HEDGE_FACTOR * cost) return s
        continue
      }
      const streamed = now - owner.firstByteAt
      if (streamed < MIN_RATE_SAMPLE_MS) continue
      if (left / (owner.segmentBytes / streamed) > HEDGE_FACTOR * mineMs) return s
    }
    return undefined
  }

  /**
   * Whether `winner`, which finished a segment before `loser`, was so much faster that `loser`'s source
   * had better take no more work in this download.
   */
  private outruns(winner: Runner, loser: Runner): boolean {
    const now = performance.now()
    const rate = (r: Runner): number => r.segmentBytes / Math.max(1, now - r.since)
    return loser.since < winner.since && rate(loser) * HEDGE_FACTOR < rate(winner)
  }

  /** Bytes per ms over the segments it finished or left, once it has any. */
  private rateOf(runner: Runner): number | undefined {
    return runner.bytes > 0 ? runner.bytes / Math.max(1, runner.ms) : undefined
  }

  private entryRate(entry: Entry): number | undefined {
    let best: number | undefined
    for (const r of this.runners) {
      if (r.entry !== entry) continue
      const rate = this.rateOf(r)
      if (rate !== undefined && (best === undefined || rate > best)) best = rate
    }
    return best
  }

  /** Streams `segment` from where it got to, over the runner's open stream or a new one. */
  private async fetch(runner: Runner, segment: Segment): Promise<void> {
    runner.segment = segment
    runner.since = performance.now()
    runner.segmentBytes = 0
    runner.firstByteAt = 0
    segment.runners.add(runner)
    const from = segment.received
    let source = runner.source
    if (source && !source.isClosed && source.position === from && (source.limit === undefined || source.limit >= segment.end)) {
      // The open stream goes on into this segment; it must stop at its end unless it gets the next one.
      source.end = segment.end
    } else {
      source?.close(new LostRaceError(`${runner.entry.name} moves to byte ${from}`))
      source = this.host.source(runner.entry, from, segment.end)
      runner.source = source
      await source.connect()
      runner.entry.ranges = source.ranges
      if (!source.ranges) {
        // It may have answered from 0, or without end: it streams whole files only.
        throw new LostRaceError(`${runner.entry.name} does not serve ranges`)
      }
    }
    let at = from
    while (at < segment.end) {
      let chunk: Uint8Array | undefined
      try {
        chunk = await source.read()
      } catch (error) {
        throw wrap(error, runner.entry.name, at)
      }
      if (chunk === undefined) {
        throw new NarBackendError(`${runner.entry.name} ended at byte ${at}, before the end of its segment at ${segment.end}`, {
          backend: runner.entry.name,
        })
      }
      if (runner.firstByteAt === 0) {
        runner.firstByteAt = performance.now()
        this.latency.set(runner.entry, Math.max(this.latency.get(runner.entry) ?? 0, runner.firstByteAt - runner.since))
      }
      runner.segmentBytes += chunk.length
      this.append(segment, runner, at, chunk)
      at += chunk.length
      if (segment.received >= segment.end && at < segment.end) {
        // Another connection finished first: this request is worth nothing more.
        runner.outrun ||= [...segment.runners].some((other) => other !== runner && this.outruns(other, runner))
        throw new LostRaceError(`${runner.entry.name} lost segment ${segment.start} to a hedge`)
      }
    }
    // A request that ended where it was asked to: its connection is free once its end is read.
    if (source.limit !== undefined && at >= source.limit) await source.settle()
    for (const other of segment.runners) {
      if (other === runner) continue
      // The other one lost: its connection stops. The runner that was there first was the slow one.
      other.outrun = this.outruns(runner, other)
      other.source?.close(new LostRaceError(`${other.entry.name} lost segment ${segment.start} to ${runner.entry.name}`))
    }
    // Released last: its rate for this segment decides the others' fate above.
    this.release(runner)
  }

  /** Keeps the bytes of `chunk` (at `at`) that are new to the segment. */
  private append(segment: Segment, runner: Runner, at: number, chunk: Uint8Array): void {
    const skip = segment.received - at
    if (skip >= chunk.length) {
      this.duplicated += chunk.length
      return
    }
    if (skip > 0) {
      this.duplicated += skip
      chunk = chunk.subarray(skip)
    }
    if (this.closed) return
    segment.chunks.push({ chunk, sender: runner.entry.name })
    segment.received += chunk.length
    this.buffered += chunk.length
    if (segment === this.segments[this.front]) this.wakeReader()
  }

  /** Takes a runner off its segment, which goes back to the others with what already arrived. */
  private release(runner: Runner): void {
    const segment = runner.segment
    if (!segment) return
    segment.runners.delete(runner)
    runner.segment = undefined
    // Its rate counts the whole segment, the request included: a hedge costs one too.
    runner.bytes += runner.segmentBytes
    runner.ms += performance.now() - runner.since
    runner.segmentBytes = 0
    this.notify()
  }

  /** Waits `ms`, or less when the stripe closes. */
  private pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        this.pauses.delete(done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.pauses.add(done)
    })
  }

  private wakeReader(): void {
    const reader = this.reader
    this.reader = undefined
    reader?.()
  }

  /**
   * Waits for a change: a segment done or left, the consumer moving on. A slow source gives no such
   * sign, so idle runners also look again every HEDGE_CHECK_MS for a segment worth hedging.
   */
  private waitIdle(): Promise<void> {
    this.idleTimer ??= setTimeout(() => {
      this.idleTimer = undefined
      this.notify()
    }, HEDGE_CHECK_MS)
    return new Promise<void>((resolve) => this.idle.push(resolve))
  }

  private notify(): void {
    clearTimeout(this.idleTimer)
    this.idleTimer = undefined
    const idle = this.idle
    this.idle = []
    for (const wake of idle) wake()
  }
}
