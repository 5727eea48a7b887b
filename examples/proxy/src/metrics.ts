import { isNarMismatch, type NarEvent, type NarHashMismatchError } from '@narrace/core'
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
  readonly logDropped = new Counter({
    name: 'narrace_log_lines_dropped_total',
    help: 'Log lines dropped because stdout took none of the last 8 MiB of them',
    registers: [this.registry],
  })
  readonly rejected = new Counter({
    name: 'narrace_rejected_requests_total',
    help: 'Requests refused before reaching any backend, by HTTP status',
    labelNames: ['status'] as const,
    registers: [this.registry],
  })

  /** `narrace_memory_budget_used_bytes`: verify-first buffering held in memory now. */
  memoryBudget(used: () => number): void {
    new Gauge({
      name: 'narrace_memory_budget_used_bytes',
      help: 'Bytes of verify-first buffering held in memory, within --memory-budget',
      registers: [this.registry],
      collect() {
        this.set(used())
      },
    })
  }

  /** `narrace_upstream_up{upstream}`: 1 while an upstream is reachable, 0 while its circuit is open. */
  upstreamUp(upstreams: () => Iterable<[string, boolean]>): void {
    new Gauge({
      name: 'narrace_upstream_up',
      help: 'Whether each upstream is reachable (0 while it is skipped after connection failures)',
      labelNames: ['upstream'] as const,
      registers: [this.registry],
      collect() {
        for (const [upstream, up] of upstreams()) this.set({ upstream }, up ? 1 : 0)
      },
    })
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
  /** Mismatches already counted from `fail` events, so that one found at the end is not counted twice. */
  private readonly counted = new WeakSet<object>()

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
        // One predicate for a size or a hash mismatch, whenever it is found.
        if (isNarMismatch(event.error)) {
          this.metrics.mismatches.inc({ backend: event.backend })
          this.counted.add(event.error)
        }
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

  /** Counts a mismatch that ended a download, by the sources it blames, unless a `fail` event did. */
  streamMismatch(error: NarHashMismatchError<string | number>): void {
    if (this.counted.has(error)) return
    this.counted.add(error)
    for (const backend of error.sources) {
      this.metrics.mismatches.inc({ backend })
      this.metrics.failures.inc({ backend, code: error.code })
    }
  }

  outcome(outcome: NarOutcome): void {
    this.metrics.requests.inc({ outcome })
  }
}
