import { performance } from 'node:perf_hooks'
import type { CacheInfo } from '@narrace/narinfo'

/** The only store directory the proxy serves: narinfo under another one can't be substituted here. */
export const STORE_DIR = '/nix/store'
/** An upstream whose nix-cache-info could not be read is asked again at most this often. @default 30000 */
export const DEFAULT_CACHE_INFO_RETRY_MS = 30_000
/** How long one nix-cache-info request may take; the proxy waits this long at most to start. @default 5000 */
export const DEFAULT_CACHE_INFO_TIMEOUT_MS = 5_000

/** Thrown at start when an upstream serves another store directory; main prints its message alone. */
export class UpstreamStoreDirError extends Error {
  override readonly name = 'UpstreamStoreDirError' as const
  readonly code = 'NARRACE_UPSTREAM_STORE_DIR' as const
  readonly upstream: string
  constructor(upstream: string, storeDir: string) {
    super(`--upstream ${upstream} serves StoreDir ${storeDir}, not ${STORE_DIR}: refused`)
    this.upstream = upstream
  }
}

export interface UpstreamCacheInfoOptions {
  upstreams: readonly string[]
  /** Reads one upstream's nix-cache-info (through its credentials). */
  fetch(upstream: string, signal: AbortSignal): Promise<CacheInfo>
  /** @default DEFAULT_CACHE_INFO_RETRY_MS */
  retryMs?: number
  /** @default DEFAULT_CACHE_INFO_TIMEOUT_MS */
  timeoutMs?: number
  /** Told when an upstream's nix-cache-info could not be read, or says something the proxy refuses. */
  onError?(upstream: string, error: unknown): void
}

/** What the upstreams' nix-cache-info files say, together. */
export interface UpstreamCacheInfo {
  /**
   * Reads every upstream's nix-cache-info once. Rejects with UpstreamStoreDirError when one serves
   * another store directory; an upstream that can't be read is only reported, and asked again later.
   */
  start(signal?: AbortSignal): Promise<void>
  /** True only when every upstream said `WantMassQuery: 1`; one not read yet counts as no. */
  wantMassQuery(): boolean
  /** Asks again, in the background, the upstreams that failed, at most once per `retryMs` each. */
  retryFailed(): void
  /** Aborts what is in flight. */
  close(): void
}

/** Keeps each upstream's nix-cache-info, read once at start and again only where that failed. */
export function upstreamCacheInfo(options: UpstreamCacheInfoOptions): UpstreamCacheInfo {
  const retryMs = options.retryMs ?? DEFAULT_CACHE_INFO_RETRY_MS
  const timeoutMs = options.timeoutMs ?? DEFAULT_CACHE_INFO_TIMEOUT_MS
  const known = new Map<string, CacheInfo>()
  const lastTry = new Map<string, number>()
  const pending = new Map<string, Promise<void>>()
  const closing = new AbortController()

  /** Reads one upstream; a StoreDir mismatch is returned, any other failure only reported. */
  const read = (upstream: string, signal?: AbortSignal): Promise<void> => {
    const running = pending.get(upstream)
    if (running) return running
    lastTry.set(upstream, performance.now())
    const signals = [closing.signal, AbortSignal.timeout(timeoutMs), ...(signal ? [signal] : [])]
    const attempt = options
      .fetch(upstream, AbortSignal.any(signals))
      .then((info) => {
        if (info.storeDir !== STORE_DIR) throw new UpstreamStoreDirError(upstream, info.storeDir)
        known.set(upstream, info)
      })
      .catch((error: unknown) => {
        if (error instanceof UpstreamStoreDirError) throw error
        if (!closing.signal.aborted) options.onError?.(upstream, error)
      })
      .finally(() => pending.delete(upstream))
    pending.set(upstream, attempt)
    return attempt
  }

  return {
    async start(signal) {
      const results = await Promise.allSettled(options.upstreams.map((upstream) => read(upstream, signal)))
      signal?.throwIfAborted()
      const refused = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
      if (refused) throw refused.reason
    },
    wantMassQuery() {
      return options.upstreams.every((upstream) => known.get(upstream)?.wantMassQuery === true)
    },
    retryFailed() {
      const now = performance.now()
      for (const upstream of options.upstreams) {
        if (known.has(upstream) || now - (lastTry.get(upstream) ?? -Infinity) < retryMs) continue
        // After start, a StoreDir mismatch can only be reported: its narinfo fail to parse anyway.
        read(upstream).catch((error: unknown) => options.onError?.(upstream, error))
      }
    },
    close() {
      closing.abort(new Error('the proxy is closing'))
    },
  }
}
