import { NarBackendError, NarHashMismatchError, NarNotFoundError, NarUnavailableError } from './errors.js'
import type { NarHash } from './hash.js'
import { LostRaceError, describe, noop, SourceStream } from './source.js'
import type { NarBackend, NarEventType } from './types.js'

/** A backend as the download sees it: how often it failed, and whether it is out for good. */
export interface Entry {
  backend: NarBackend
  name: string
  strikes: number
  dead: boolean
  /** Whether it serves ranges: unknown until one of its answers says. */
  ranges: boolean | undefined
}

/** What the race needs from the download it runs for. */
export interface RaceHost {
  readonly hash: NarHash
  readonly signal: AbortSignal | undefined
  readonly hedge: Record<string, number> | undefined
  emit(type: NarEventType, backend: string, error?: unknown): void
  strike(entry: Entry, error: unknown): void
  /** A connection to `entry` from `offset` (to `end`, when given), not yet connected. */
  source(entry: Entry, offset: number, end?: number): SourceStream
}

/** Waits `ms`, or less once `wake` fires; rejects when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal, wake: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const either = AbortSignal.any([signal, wake])
    if (either.aborted) return done()
    const timer = setTimeout(done, ms)
    either.addEventListener('abort', done, { once: true })
    function done(): void {
      clearTimeout(timer)
      either.removeEventListener('abort', done)
      if (signal.aborted) reject(signal.reason)
      else resolve()
    }
  })
}

/**
 * Starts `candidates` at `offset`, up to `end` when given (after their hedge delays, when `hedged`);
 * resolves with the first to yield a byte and aborts the rest. When every one fails: the verification error if that is all there
 * was, NarNotFoundError when every one said "not here", else NarUnavailableError with every error.
 */
export async function race(
  host: RaceHost,
  candidates: Entry[],
  offset: number,
  hedged: boolean,
  end?: number,
): Promise<SourceStream> {
  const failures = new Map<Entry, unknown>()
  let settled = false
  let running = 0
  // Once every started attempt has failed, hedged ones stop waiting.
  const wake = new AbortController()
  const attempts = candidates.map((entry) => {
    const source = host.source(entry, offset, end)
    let started = false
    const run = async (): Promise<SourceStream> => {
      const delay = hedged ? (host.hedge?.[entry.name] ?? 0) : 0
      if (delay > 0) await sleep(delay, source.signal, wake.signal)
      if (settled || source.signal.aborted) throw source.signal.reason ?? new LostRaceError('race already won')
      started = true
      running++
      host.emit('start', entry.name)
      await source.connect()
      if (settled) throw new LostRaceError('race already won')
      settled = true
      host.emit('first-byte', entry.name)
      return source
    }
    const promise = run().catch((error: unknown) => {
      source.close(error)
      if (started && --running === 0 && !settled) wake.abort()
      // After the win, a loser's failure is no news; after the caller's abort, nothing is.
      if (!settled && !host.signal?.aborted) {
        failures.set(entry, error)
        host.strike(entry, error)
      }
      throw error
    })
    return { entry, source, promise, started: () => started }
  })
  try {
    const won = await Promise.any(attempts.map((a) => a.promise))
    for (const a of attempts) {
      if (a.source === won) continue
      if (!a.source.signal.aborted) {
        a.source.close(new LostRaceError(`${a.entry.name} lost the race to ${won.name}`))
        if (a.started()) host.emit('abort', a.entry.name)
      } else a.source.close()
    }
    return won
  } catch (error) {
    for (const a of attempts) a.promise.catch(noop)
    if (host.signal?.aborted) {
      for (const a of attempts) if (a.started() && !failures.has(a.entry)) host.emit('abort', a.entry.name)
      throw host.signal.reason
    }
    if (!(error instanceof AggregateError)) throw error
    const each = candidates.map((c) => ({ name: c.name, error: failures.get(c) ?? new NarBackendError(`${c.name} failed`) }))
    const thrown = exhausted(host.hash, offset, each)
    listed.set(thrown, each)
    throw thrown
  }
}

/** One source's failure, by its name. */
export interface Failure {
  name: string
  error: unknown
}

/** Each candidate's own failure, by what a failed race threw (a lone mismatch too, which has no list of its own). */
const listed = new WeakMap<object, Failure[]>()

/** The failure of each candidate of the race that threw `error`; undefined for any other error. */
export function raceFailures(error: unknown): Failure[] | undefined {
  return typeof error === 'object' && error !== null ? listed.get(error) : undefined
}

/**
 * What a download throws once every source in `failures` failed: the verification error if that is all
 * there was, NarNotFoundError when every one said "not here" before any byte came, else
 * NarUnavailableError with every error.
 */
export function exhausted(hash: NarHash, offset: number, failures: readonly Failure[]): Error {
  const errors = failures.map((f) => f.error)
  const mismatch = errors.find((e): e is NarHashMismatchError => e instanceof NarHashMismatchError)
  if (mismatch && errors.every((e) => e instanceof NarHashMismatchError || e instanceof NarNotFoundError)) return mismatch
  const reasons = failures.map((f) => `${f.name}: ${describe(f.error)}`).join('; ')
  // "Not here" from every source is a miss; anything else may be an outage of a source that has it, and
  // so is "not here" once bytes of the file came.
  if (offset === 0 && errors.every((e) => e instanceof NarNotFoundError)) {
    return failures.length === 0
      ? new NarNotFoundError(`no backend left to fetch ${hash}`, { errors })
      : new NarNotFoundError(`no backend has ${hash} (${reasons})`, { errors })
  }
  const why = failures.length === 0 ? 'no backend left' : reasons
  return new NarUnavailableError(`no backend could deliver ${hash} from byte ${offset} (${why})`, { errors })
}
