import { isNarMismatch, type NarEvent } from '@narrace/core'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'

/** How a NAR request ended, as counted in `narrace_nar_requests_total`. */
export type NarOutcome = 'ok' | 'not_found' | 'hash_mismatch' | 'failed' | 'aborted'

function codeOf(error: unknown): string {
  const code = (error as { code?: unknown } | undefined)?.code
  return typeof code === 'string' ? code : 'UNKNOWN'
}

/** The proxy's Prometheus metrics, in a registry of its own so that several proxies can share a process. */
export class ProxyMetrics {
  readonly registry = new Registry()
  readonly wins = new Counter({
    name: 'narrace_backend_wins_total',
    help: 'NAR races won, by backend',
    labelNames: ['backend'] as const,
    registers: [this.registry],
  })
  readonly failures = new Counter({
    name: 'narrace_backend_failures_total',
    help: 'Backend failures during NAR races and streams, by backend and error code',
    labelNames: ['backend', 'code'] as const,
    registers: [this.registry],
  })
  readonly bytes = new Counter({
    name: 'narrace_backend_bytes_total',
    help: 'NAR bytes delivered into verified streams, by backend',
    labelNames: ['backend'] as const,
    registers: [this.registry],
  })
  readonly firstByte = new Histogram({
    name: 'narrace_backend_first_byte_seconds',
    help: 'Time from the start of a race to the winning backend first byte',
    labelNames: ['backend'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  })
  readonly mismatches = new Counter({
    name: 'narrace_hash_mismatches_total',
    help: 'Copies whose bytes did not hash to the FileHash, by the backend that sent them',
    labelNames: ['backend'] as const,
    registers: [this.registry],
  })
  readonly requests = new Counter({
    name: 'narrace_nar_requests_total',
    help: 'NAR requests, by outcome',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  })
  readonly narinfoRequests = new Counter({
    name: 'narrace_narinfo_requests_total',
    help: 'narinfo requests, by outcome',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  })
  readonly rejected = new Counter({
    name: 'narrace_rejected_requests_total',
    help: 'Requests refused before reaching any backend, by HTTP status',
    labelNames: ['status'] as const,
    registers: [this.registry],
  })

  #upstreams: { upstream: string; isUp: () => boolean }[] = []
  readonly upstreamUp = new Gauge({
    name: 'narrace_upstream_up',
    help: "1 while an upstream's circuit breaker lets requests through, 0 while it is skipped",
    labelNames: ['upstream'] as const,
    registers: [this.registry],
    // The breakers keep no timer, so their state is read when /metrics is scraped.
    collect: () => {
      for (const { upstream, isUp } of this.#upstreams) this.upstreamUp.set({ upstream }, isUp() ? 1 : 0)
    },
  })

  /** The upstreams whose state `narrace_upstream_up` reports. */
  watchUpstreams(upstreams: { upstream: string; isUp: () => boolean }[]): void {
    this.#upstreams = upstreams
    for (const { upstream, isUp } of upstreams) this.upstreamUp.set({ upstream }, isUp() ? 1 : 0)
  }

  /** Starts the accounting of one NAR request; feed it every event of its `resolveNar`. */
  track(): NarTracker {
    return new NarTracker(this)
  }
}

/** Per-request bookkeeping: which backends ran, and whose bytes made it into the stream. */
export class NarTracker {
  readonly tried = new Set<string>()
  private current: string | undefined
  private credited = 0
  /** Backends already counted in narrace_hash_mismatches_total for this request. */
  private readonly mismatched = new Set<string>()

  constructor(private readonly metrics: ProxyMetrics) {}

  readonly onEvent = (event: NarEvent): void => {
    switch (event.type) {
      case 'start':
        this.tried.add(event.backend)
        break
      case 'first-byte':
        this.metrics.firstByte.observe({ backend: event.backend }, event.ms / 1000)
        break
      case 'win':
        this.metrics.wins.inc({ backend: event.backend })
        this.current = event.backend
        break
      case 'fail': {
        const code = codeOf(event.error)
        this.metrics.failures.inc({ backend: event.backend, code })
        // One predicate for every mismatch, of size or hash, before the first byte or at the end.
        if (isNarMismatch(event.error)) this.countMismatch(event.backend)
        break
      }
      case 'failover':
        this.credit(event.bytes)
        this.current = event.backend
        break
      case 'restart':
        // After a failed verification the stream starts over at 0 and the bad bytes are not credited.
        this.credited = 0
        this.current = event.backend
        break
      case 'done':
        this.credit(event.bytes)
        break
    }
  }

  /** Credits what the current source delivered up to `bytes`. */
  credit(bytes: number): void {
    if (this.current !== undefined && bytes > this.credited) {
      this.metrics.bytes.inc({ backend: this.current }, bytes - this.credited)
    }
    this.credited = Math.max(this.credited, bytes)
  }

  /** Counts a mismatch that ended the request, for each source not already counted through its `fail` event. */
  mismatch(error: { sources: readonly string[] }): void {
    for (const backend of error.sources) this.countMismatch(backend)
  }

  private countMismatch(backend: string): void {
    if (this.mismatched.has(backend)) return
    this.mismatched.add(backend)
    this.metrics.mismatches.inc({ backend })
  }

  /** Counts a failure of the streaming source after the race (the core reports no `fail` for these). */
  streamFailed(error: unknown): void {
    if (this.current !== undefined) this.metrics.failures.inc({ backend: this.current, code: codeOf(error) })
  }

  outcome(outcome: NarOutcome): void {
    this.metrics.requests.inc({ outcome })
  }
}
