import { performance } from 'node:perf_hooks'
import { isNarMismatch, NarHashMismatchError, NarNotFoundError, NarraceError, NarSizeMismatchError, NarUnavailableError } from './errors.js'
import { NarHash, parseNarHash } from './hash.js'
import { exhausted, race, raceFailures, type Entry, type Failure, type RaceHost } from './race.js'
import { LostRaceError, noop, SourceStream, wrap, type SourceContext } from './source.js'
import { Stripe, StripeStuckError, type StripeHost } from './stripe.js'
import type { NarEvent, NarStream, ResolveNarOptions } from './types.js'
import { blame, Verifier } from './verify.js'

/** @default 30000: no byte for this long is a stall. */
export const DEFAULT_STALL_TIMEOUT_MS = 30_000
/** @default 1024: fewer bytes a second than this, averaged over the stall timeout, is a stall too. */
export const DEFAULT_MIN_BYTES_PER_SECOND = 1024
/** @default 64 GiB: where a file of unknown size is cut. */
export const DEFAULT_MAX_NAR_BYTES = 64 * 1024 ** 3
/** @default 8 MiB: a rest at least this large is striped over every source that serves ranges. */
export const DEFAULT_STRIPE_ABOVE = 8 << 20
/** @default 2: segments fetched from one source at a time while striping. */
export const DEFAULT_CONNECTIONS_PER_SOURCE = 2
/** @default 32 MiB: the reorder buffer of a striped download. */
export const DEFAULT_MAX_BUFFER_BYTES = 32 << 20

/**
 * A file that will be striped opens with a race for its first segment only, not the whole file: the
 * losers' requests, cut at the win, have put at most this much on their links. The other connections of
 * each source start with the race, so that no link waits for the win before its next request.
 */
const OPENING_SPAN_BYTES = 1 << 20

/** A backend fails over at most this many times before it is left out of the race. */
const MAX_STRIKES = 2

/** One download: the race, then one source at a time or a stripe over several, and the verifier. */
class Download implements RaceHost, StripeHost, SourceContext {
  readonly hash: NarHash
  readonly entries: Entry[]
  readonly signal: AbortSignal | undefined
  readonly url: string | undefined
  readonly hedge: Record<string, number> | undefined
  readonly stallMs: number
  readonly minWindowBytes: number
  readonly maxBytes: number
  readonly t0 = performance.now()
  /** The FileSize from the narinfo, when given. */
  readonly fileSize: number | undefined
  size: number | undefined
  winner = ''
  verifier: Verifier
  /** The one source streaming, when not striping. */
  active: SourceStream | undefined
  activeEntry: Entry | undefined
  stripe: Stripe | undefined
  finished = false
  /** A verified copy found while blaming a bad one, kept for a verify-first caller. */
  recovered: Uint8Array[] | undefined
  private readonly options: ResolveNarOptions

  constructor(hash: NarHash, options: ResolveNarOptions) {
    this.hash = hash
    this.options = options
    this.signal = options.signal
    this.url = options.url
    this.hedge = options.hedge
    this.stallMs = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS
    const minRate = options.minBytesPerSecond ?? DEFAULT_MIN_BYTES_PER_SECOND
    this.minWindowBytes = Number.isFinite(this.stallMs) && minRate > 0 ? (minRate * this.stallMs) / 1000 : 0
    this.maxBytes = options.maxNarBytes ?? DEFAULT_MAX_NAR_BYTES
    this.fileSize = options.size
    this.size = options.size
    this.verifier = new Verifier(hash, { track: false })
    const backends: unknown[] = Array.isArray(options.backends) ? options.backends : []
    this.entries = backends.map((backend, i) => {
      const b = backend as Entry['backend']
      const ok = typeof backend === 'object' && backend !== null && typeof b.fetch === 'function'
      const name = ok && typeof b.name === 'string' ? b.name : `backend#${i}`
      return { backend: b, name, strikes: 0, dead: false, ranges: undefined }
    })
  }

  get bytesRead(): number {
    return this.verifier.bytes
  }

  expected(): number | undefined {
    return this.size
  }

  live(): Entry[] {
    return this.entries.filter((e) => !e.dead)
  }

  source(entry: Entry, offset: number, end?: number): SourceStream {
    return new SourceStream(this, entry.backend, entry.name, this.signal, offset, end)
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
    if (error instanceof NarNotFoundError || error instanceof NarHashMismatchError || entry.strikes >= MAX_STRIKES) {
      entry.dead = true
    }
    this.emit('fail', entry.name, error)
  }

  private entryOf(source: SourceStream): Entry {
    return this.entries.find((e) => e.backend === source.backend && e.name === source.name)!
  }

  /** Makes `source` the one streaming, and stripes the rest when that can help. */
  private activate(source: SourceStream): void {
    const entry = this.entryOf(source)
    entry.ranges = source.ranges
    this.active = source
    this.activeEntry = entry
    this.size ??= source.size
  }

  /** Whether the rest of the file is worth striping: its size is known, it is large, there are sources. */
  private stripeable(): boolean {
    const above = this.options.stripeAbove ?? DEFAULT_STRIPE_ABOVE
    return (
      this.size !== undefined &&
      this.size - this.bytesRead >= above &&
      this.live().filter((e) => e.ranges !== false || e === this.activeEntry).length >= 2
    )
  }

  private newStripe(span: number | undefined): Stripe {
    const options = {
      size: this.size!,
      position: this.bytesRead,
      maxBufferBytes: this.options.maxBufferBytes ?? DEFAULT_MAX_BUFFER_BYTES,
      connectionsPerSource: Math.max(1, this.options.connectionsPerSource ?? DEFAULT_CONNECTIONS_PER_SOURCE),
    }
    return new Stripe(this, options, span)
  }

  private startStripe(): void {
    if (!this.active || !this.activeEntry || !this.verifier.tracking || !this.stripeable()) return
    this.stripe = this.newStripe(this.active.limit)
    this.stripe.adopt({ entry: this.activeEntry, source: this.active })
    this.active = undefined
    this.activeEntry = undefined
  }

  /** Where the opening race stops: only when the narinfo's FileSize says the file will be striped. */
  private openingSpan(): number | undefined {
    const above = this.options.stripeAbove ?? DEFAULT_STRIPE_ABOVE
    if (this.fileSize === undefined || this.fileSize < above || this.live().length < 2) return undefined
    // Never more than a segment of the stripe would be, nor than the reorder buffer holds.
    const buffer = this.options.maxBufferBytes ?? DEFAULT_MAX_BUFFER_BYTES
    return Math.max(1, Math.min(OPENING_SPAN_BYTES, Math.floor(buffer / 2), Math.floor(this.fileSize / 8)))
  }

  /**
   * Runs the first race and makes its winner the active source. When the FileSize says the file will be
   * striped, the stripe starts with the race: the other connections of each source take the segments
   * after the opening span at once, instead of a round trip after the win.
   */
  async start(): Promise<void> {
    const span = this.openingSpan()
    let stripe: Stripe | undefined
    if (span !== undefined) {
      this.verifier = new Verifier(this.hash, { track: true })
      stripe = this.newStripe(span)
      // A source held back by a hedge delay joins at the win, as it would have without a stripe.
      for (const entry of this.live()) if (!(this.hedge?.[entry.name] ?? 0)) stripe.early(entry)
    }
    let winner: SourceStream
    try {
      winner = await race(this, this.entries, 0, true, span)
    } catch (error) {
      stripe?.close(error)
      throw error
    }
    this.activate(winner)
    this.winner = winner.name
    if (stripe && !this.stripeable()) {
      // The others turned out to have no copy: one source at a time, as without a stripe.
      stripe.close(new LostRaceError(`${winner.name} is the only source left`))
      stripe = undefined
      this.verifier = new Verifier(this.hash, { track: false })
    }
    // A copy from several sources keeps a digest per sender, to blame a liar.
    if (!stripe && this.stripeable()) this.verifier = new Verifier(this.hash, { track: true })
    this.emit('win', winner.name)
    if (!stripe) return this.startStripe()
    this.stripe = stripe
    stripe.adopt({ entry: this.activeEntry!, source: winner })
    this.active = undefined
    this.activeEntry = undefined
  }

  /**
   * Hands the stream to another source at `bytesRead`. When none is left, throws what a failed race
   * throws, with `cause` first among the errors: an outage mid-stream is NarUnavailableError, as before
   * the first byte.
   */
  private async failover(cause: unknown, failed: Entry | undefined, earlier?: Failure[]): Promise<void> {
    let candidates = this.live().filter((e) => e !== failed)
    if (candidates.length === 0 && failed && !failed.dead) candidates = [failed]
    // A cause that a race threw stands for its candidates' own failures, not for one more source.
    const first = earlier?.length ? earlier : (raceFailures(cause) ?? [{ name: failed?.name ?? 'a striped source', error: cause }])
    if (candidates.length === 0) throw exhausted(this.hash, this.bytesRead, first)
    try {
      this.activate(await race(this, candidates, this.bytesRead, false))
    } catch (error) {
      if (this.signal?.aborted) throw this.signal.reason
      const rest = raceFailures(error) ?? candidates.map((c) => ({ name: c.name, error }))
      // A lone source asked once more is named twice: the second time as asked again.
      const again = rest.map((f) => (first.some((g) => g.name === f.name) ? { ...f, name: `${f.name} (asked again)` } : f))
      throw exhausted(this.hash, this.bytesRead, [...first, ...again])
    }
    this.emit('failover', this.active!.name)
    this.startStripe()
  }

  /** Counts a chunk from `sender` into the copy being verified. */
  private deliver(chunk: Uint8Array, sender: string): Uint8Array {
    const known = this.size !== undefined
    this.verifier.checkSize(chunk.length, sender, this.size ?? this.maxBytes, known)
    this.verifier.update(chunk, sender)
    return chunk
  }

  /** The next verified-so-far chunk, or undefined at a verified end. Fails over on errors, stalls and short ends. */
  async read(): Promise<Uint8Array | undefined> {
    for (;;) {
      if (this.stripe) {
        const stripe = this.stripe
        let next
        try {
          next = await stripe.read()
        } catch (error) {
          if (this.signal?.aborted) throw this.signal.reason
          if (!(error instanceof StripeStuckError) || this.stripe !== stripe) throw error
          // Every ranged source failed: one source at a time, as before the stripe.
          this.stripe = undefined
          stripe.close()
          await this.failover(error.reason ?? new NarraceError(`no source left for ${this.hash}`), undefined, error.failures)
          continue
        }
        if (!next) return this.finish()
        return this.deliver(next.chunk, next.sender)
      }
      const active = this.active
      const entry = this.activeEntry
      if (!active || !entry) throw new NarraceError('the stream is closed')
      let chunk: Uint8Array | undefined
      try {
        chunk = await active.read()
      } catch (error) {
        if (this.signal?.aborted) throw this.signal.reason
        if (this.active !== active) throw error
        const cause = wrap(error, entry.name, this.bytesRead)
        this.dropActive(cause)
        await this.failover(cause, entry)
        continue
      }
      if (chunk === undefined) {
        if (active.limit !== undefined && this.bytesRead >= active.limit && (this.size === undefined || this.bytesRead < this.size)) {
          // The opening span is done and no stripe took over (the others failed): the winner goes on.
          await this.proceed(active, entry)
          continue
        }
        if (this.size !== undefined && this.bytesRead < this.size) {
          const cause = new NarSizeMismatchError(`${entry.name} ended at byte ${this.bytesRead} of ${this.size} of ${this.hash}`, {
            expected: this.size,
            actual: this.bytesRead,
            hash: this.hash.toString(),
            sources: [...this.verifier.sources],
          })
          this.dropActive(cause)
          await this.failover(cause, entry)
          continue
        }
        return this.finish()
      }
      return this.deliver(chunk, entry.name)
    }
  }

  /** Asks `entry` for the rest of the file after its ranged stream `done` ended where it was asked to. */
  private async proceed(done: SourceStream, entry: Entry): Promise<void> {
    done.close()
    this.active = undefined
    this.activeEntry = undefined
    try {
      this.activate(await race(this, [entry], this.bytesRead, false))
    } catch (error) {
      if (this.signal?.aborted) throw this.signal.reason
      await this.failover(wrap(error, entry.name, this.bytesRead), entry)
      return
    }
    this.startStripe()
  }

  private dropActive(cause: unknown): void {
    const active = this.active!
    const entry = this.activeEntry!
    this.active = undefined
    this.activeEntry = undefined
    active.close(cause)
    this.strike(entry, cause)
  }

  private async finish(): Promise<undefined> {
    try {
      this.verifier.finish()
    } catch (error) {
      if (!(error instanceof NarHashMismatchError) || this.verifier.sources.length < 2 || !this.verifier.tracking) throw error
      throw await this.identify(this.verifier, error)
    }
    this.finished = true
    this.emit('done', this.activeEntry?.name ?? this.winner)
    this.close()
    return undefined
  }

  /**
   * After a bad copy from several sources: fetches the file again without striping, from each source in
   * turn, until one copy verifies. The pieces whose digests differ from it name the liars, which are out
   * for good; the error then names only them. With no verified copy, every sender stays to blame.
   */
  private async identify(
    bad: Verifier,
    error: NarHashMismatchError<string | number>,
  ): Promise<NarHashMismatchError<string | number>> {
    this.stripe?.close(new LostRaceError('the copy is complete'))
    this.stripe = undefined
    const boundaries = bad.pieces.map((p) => p.end)
    const keep = this.size !== undefined && this.size <= (this.options.verifyFirstBelow ?? 0)
    for (const entry of this.live()) {
      const copy = new Verifier(this.hash, { track: true, boundaries })
      const chunks: Uint8Array[] = []
      const source = this.source(entry, 0)
      this.emit('restart', entry.name)
      try {
        await source.connect()
        for (let chunk = await source.read(); chunk; chunk = await source.read()) {
          copy.checkSize(chunk.length, entry.name, this.size ?? this.maxBytes, this.size !== undefined)
          copy.update(chunk, entry.name)
          if (keep) chunks.push(chunk)
        }
        copy.finish()
      } catch (failure) {
        if (this.signal?.aborted) throw this.signal.reason
        this.strike(entry, wrap(failure, entry.name, copy.bytes))
        continue
      } finally {
        source.close()
      }
      const liars = blame(bad.pieces, copy.pieces)
      if (liars.length === 0) return error
      const blamed = new NarHashMismatchError(
        `${this.hash}: the bytes from ${liars.join(', ')} differ from a verified copy from ${entry.name}`,
        { expected: error.expected, actual: error.actual, sources: liars, cause: error },
      )
      for (const liar of liars) {
        const e = this.entries.find((x) => x.name === liar)
        if (e && !e.dead) this.strike(e, blamed)
      }
      if (keep) {
        this.recovered = chunks
        this.verifier = copy
        this.winner = entry.name
      }
      return blamed
    }
    return error
  }

  /** Starts over from byte 0 after a failed verification, without the sources that delivered the bad copy. */
  async restart(cause: unknown, thrown: unknown = cause): Promise<void> {
    const failed = this.activeEntry
    const blamed =
      cause instanceof NarHashMismatchError && cause.sources.length > 0 && this.verifier.tracking
        ? new Set(cause.sources)
        : new Set(failed ? [...this.verifier.sources, failed.name] : this.verifier.sources)
    if (this.active) this.active.close(cause)
    this.stripe?.close(cause)
    this.active = undefined
    this.activeEntry = undefined
    this.stripe = undefined
    // The active source is to blame too: it may have sent too much before it got into `sources`.
    for (const name of blamed) {
      const entry = this.entries.find((e) => e.name === name)
      if (entry && !entry.dead) this.strike(entry, cause)
    }
    this.verifier = new Verifier(this.hash, { track: false })
    this.size = this.fileSize
    try {
      this.activate(await race(this, this.live(), 0, false))
    } catch (error) {
      if (this.signal?.aborted) throw this.signal.reason
      // No source left, or none with a copy: the error that ended the copy stands, outage and all.
      if (error instanceof NarNotFoundError && cause instanceof NarraceError) throw thrown
      throw error
    }
    this.winner = this.active!.name
    if (this.stripeable()) this.verifier = new Verifier(this.hash, { track: true })
    this.emit('restart', this.active!.name)
    this.startStripe()
  }

  /** Cancels whatever is still running. Safe to call more than once. */
  close(reason?: unknown): void {
    const active = this.active
    const stripe = this.stripe
    this.active = undefined
    this.activeEntry = undefined
    this.stripe = undefined
    if (this.finished) {
      active?.close()
      stripe?.close(new LostRaceError('the download is complete'))
      return
    }
    const why = reason ?? new LostRaceError('the consumer stopped reading')
    if (active) {
      active.close(why)
      this.emit('abort', active.name)
    }
    if (stripe) {
      const running = stripe.running
      stripe.close(why)
      for (const name of running) this.emit('abort', name)
    }
  }
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
    return this.download.size
  }
  get bytesRead(): number {
    return this.download.bytesRead
  }
  get sources(): readonly string[] {
    return this.download.verifier.sources
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
 * Races every backend for the file with this FileHash, and streams from the first to yield a byte; a
 * large rest is striped over every source that serves ranges. Every byte is hashed, in order; the stream
 * ends normally only when the SHA-256 matches.
 */
export async function resolveNar(hash: string | NarHash, options: ResolveNarOptions): Promise<NarStream> {
  const narHash = parseNarHash(hash)
  if (options.signal?.aborted) throw options.signal.reason
  const download = new Download(narHash, options)
  const verifyFirstBelow = options.verifyFirstBelow ?? 0
  try {
    await download.start()
    if (download.size === undefined || download.size > verifyFirstBelow) {
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
        // A copy that went wrong, even when the source after it failed too, starts over from byte 0.
        const mismatch = isNarMismatch(error)
          ? error
          : error instanceof NarUnavailableError
            ? error.errors.find(isNarMismatch)
            : undefined
        if (!mismatch) throw error
        if (download.recovered) {
          download.finished = true
          download.close()
          return new Stream(download, download.recovered)
        }
        await download.restart(mismatch, error)
      }
    }
  } catch (error) {
    download.close(error)
    throw error
  }
}
