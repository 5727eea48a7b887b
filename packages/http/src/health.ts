import { EventEmitter } from 'node:events'
import { NarBackendError } from '@narrace/core'

/** Connection failures in a row after which an upstream is skipped. */
export const DEFAULT_FAILURES_BEFORE_DOWN = 3
/** How long an upstream is first skipped; each failed probe doubles it. @default 1000 */
export const DEFAULT_MIN_BACKOFF_MS = 1000
/** The longest an upstream is skipped before the next probe. @default 60000 */
export const DEFAULT_MAX_BACKOFF_MS = 60_000

export interface UpstreamHealthOptions {
  /** @default 3 */
  failuresBeforeDown?: number
  /** @default 1000 */
  minBackoffMs?: number
  /** @default 60000 */
  maxBackoffMs?: number
  /** The clock, for tests. @default Date.now */
  now?: () => number
}

/** `up`: requests go through. `down`: skipped until `retryAt`. `probing`: one request is finding out. */
export type UpstreamState = 'up' | 'down' | 'probing'

/** How a request admitted by `admit()` ended, for the breaker. */
export type Outcome = 'answered' | 'connection-failed' | 'none'

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTDOWN',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
])

/** Whether an error (or its cause) says the upstream could not be reached or hung up before answering. */
export function isConnectionFailure(error: unknown): boolean {
  for (let e = error, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string' && CONNECTION_CODES.has(code)) return true
  }
  return false
}

function checkMs(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`)
  return value
}

/**
 * A circuit breaker for one upstream. After `failuresBeforeDown` connection failures in a row the
 * upstream is down: requests fail at once with NarBackendError (an outage to narrace, not a miss) and
 * cost no connection attempt, until the backoff has passed. Then one request probes it; the others still
 * fail fast. A probe that connects brings it up; one that fails doubles the backoff, from `minBackoffMs`
 * up to `maxBackoffMs`. It keeps no timer. Emits `change` with `true` (up) or `false` (down).
 */
export class UpstreamHealth extends EventEmitter<{ change: [up: boolean] }> {
  readonly upstream: string
  #state: UpstreamState = 'up'
  #failures = 0
  #backoffMs: number
  #retryAt = 0
  #lastError: unknown
  readonly #threshold: number
  readonly #minBackoffMs: number
  readonly #maxBackoffMs: number
  readonly #now: () => number

  constructor(upstream: string, options: UpstreamHealthOptions = {}) {
    super()
    this.upstream = upstream
    this.#threshold = checkMs('failuresBeforeDown', options.failuresBeforeDown ?? DEFAULT_FAILURES_BEFORE_DOWN)
    this.#minBackoffMs = checkMs('minBackoffMs', options.minBackoffMs ?? DEFAULT_MIN_BACKOFF_MS)
    this.#maxBackoffMs = Math.max(this.#minBackoffMs, checkMs('maxBackoffMs', options.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS))
    this.#backoffMs = this.#minBackoffMs
    this.#now = options.now ?? Date.now
  }

  /** `up`, `down` or `probing`. */
  get state(): UpstreamState {
    return this.#state
  }

  /** False from the moment the upstream is skipped until a probe gets through. */
  isUp(): boolean {
    return this.#state === 'up'
  }

  /** Connection failures in a row so far. */
  get failures(): number {
    return this.#failures
  }

  /** When a down upstream gets its next probe (ms since the epoch); 0 while up. */
  get retryAt(): number {
    return this.#state === 'up' ? 0 : this.#retryAt
  }

  /**
   * Lets one request through, or throws NarBackendError at once when the upstream is skipped. The
   * returned function must be called once with how the request ended.
   */
  admit(): (outcome: Outcome, error?: unknown) => void {
    let probe = false
    if (this.#state !== 'up') {
      const wait = this.#retryAt - this.#now()
      if (this.#state === 'probing' || wait > 0) {
        const why = this.#lastError instanceof Error ? ` (last: ${this.#lastError.message})` : ''
        const when = this.#state === 'probing' ? 'a probe is under way' : `next try in ${Math.ceil(wait / 1000)} s`
        throw new NarBackendError(
          `${this.upstream}: skipped after ${this.#failures} connection failures in a row; ${when}${why}`,
          { backend: this.upstream, cause: this.#lastError },
        )
      }
      this.#state = 'probing'
      probe = true
    }
    let settled = false
    return (outcome, error) => {
      if (settled) return
      settled = true
      if (outcome === 'answered') this.#answered()
      else if (outcome === 'connection-failed') this.#failed(error, probe)
      // A probe that ended without a verdict (aborted: another source won) leaves the next probe to the
      // next backoff, not to the next request; its connect, still under way, may yet bring a verdict.
      else if (probe && this.#state === 'probing') {
        this.#state = 'down'
        this.#retryAt = this.#now() + this.#backoffMs
      }
    }
  }

  /**
   * A connection attempt failed, whatever became of the request that asked for it: a request that lost
   * the race is aborted long before a connect to a cache that drops packets times out, and would
   * otherwise never count. `probe`: the attempt began while a probe was under way.
   */
  connectFailed(error: unknown, probe: boolean): void {
    this.#failed(error, probe)
  }

  #answered(): void {
    this.#failures = 0
    this.#backoffMs = this.#minBackoffMs
    this.#lastError = undefined
    if (this.#state !== 'up') {
      this.#state = 'up'
      this.emit('change', true)
    }
  }

  #failed(error: unknown, probe: boolean): void {
    this.#failures++
    this.#lastError = error
    if (this.#state === 'up') {
      if (this.#failures < this.#threshold) return
      this.#backoffMs = this.#minBackoffMs
      this.#state = 'down'
      this.#retryAt = this.#now() + this.#backoffMs
      this.emit('change', false)
    } else if (probe) {
      this.#backoffMs = Math.min(this.#backoffMs * 2, this.#maxBackoffMs)
      this.#state = 'down'
      this.#retryAt = this.#now() + this.#backoffMs
    }
  }
}

/** Upstreams whose health is kept, beyond which the oldest is forgotten. */
const MAX_SHARED_HEALTH = 1024
const shared = new Map<string, UpstreamHealth>()

/**
 * The health of an upstream, by its cache URL (origin and path prefix), shared by every httpBackend,
 * resolveNarInfo and walkClosure in the process that does not get one passed in: a dead upstream seen
 * by one is skipped by all.
 */
export function upstreamHealth(url: string): UpstreamHealth {
  let health = shared.get(url)
  if (!health) {
    if (shared.size >= MAX_SHARED_HEALTH) shared.delete(shared.keys().next().value!)
    health = new UpstreamHealth(url)
    shared.set(url, health)
  }
  return health
}
