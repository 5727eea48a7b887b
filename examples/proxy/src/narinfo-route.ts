import type { ServerResponse } from 'node:http'
import type { HttpBackend } from '@narrace/http'
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { raceSignal } from 'race-signal'
import type { ProxyMetrics } from './metrics.js'
import { codeOf, message, NARINFO_TYPE, sendText, type RequestSignal } from './respond.js'
import { resolveServedNarInfo, type ServedNarInfo } from './served-narinfo.js'
import type { ProxyStore } from './store-wiring.js'

/**
 * Bytes of narinfo answers kept in memory (Nix asks for the same one several times in a single
 * `nix copy`), least recently used dropped first. @default 32 MiB
 */
export const NARINFO_CACHE_BYTES = 32 * 1024 * 1024

/**
 * A narinfo is "not here" only when every cache answered that it has none, or one not signed by a trusted
 * key (which Nix passes over as it does a missing one). A cache that could not answer, or answered with
 * garbage (an error page under a 200, a narinfo of another path, an endless body), may hold it: that is
 * an outage, a 503 that Nix retries, never a 404 that it takes for "not here" and remembers for an hour.
 */
export function isNotFound(error: unknown): boolean {
  const code = codeOf(error)
  return code === 'NARRACE_NOT_FOUND' || (code === 'NARRACE_INVALID_NARINFO' && (error as { untrusted?: unknown }).untrusted === true)
}

export interface NarInfoRouteContext {
  /** The upstreams' backends, each named by its URL as given. */
  upstreams: HttpBackend[]
  trustedKeys: string[] | undefined
  metrics: ProxyMetrics
  logger: Logger
  requestSignal: RequestSignal
  /** Records a found narinfo in the index (never throws). */
  learn(served: ServedNarInfo): void
  store?: ProxyStore
  narInfoTimeoutMs: number
  narInfoTtlMs: number
  /** Fires when the proxy closes: it ends the lookups that several requests share. */
  shutdown: AbortSignal
}

export interface NarInfoRoute {
  /**
   * The served form of `hashPart`'s narinfo: from memory, or raced across the upstreams, verified, and
   * learned into the index (a narinfo the index refuses is still served). Rejects as resolveNarInfo does.
   */
  lookupNarInfo(hashPart: string, signal: AbortSignal): Promise<{ served: ServedNarInfo; cached: boolean }>
  /** The served narinfo of a hash part if it is in memory; never asks an upstream. */
  cachedNarInfo(hashPart: string): ServedNarInfo | undefined
  serveNarInfo(hashPart: string, res: ServerResponse, head: boolean): Promise<void>
}

export function createNarInfoRoute(context: NarInfoRouteContext): NarInfoRoute {
  const { metrics, logger, requestSignal, narInfoTimeoutMs, narInfoTtlMs } = context
  /** Found narinfo by hash part; a miss is never cached, since the path may be pushed upstream any time. */
  const narInfos = new LRUCache<string, ServedNarInfo>({
    maxSize: NARINFO_CACHE_BYTES,
    // The text twice (served and as parsed) and the parsed fields.
    sizeCalculation: (served) => 2 * served.text.length + 1024,
    ttl: Math.max(narInfoTtlMs, 1),
  })
  /** Lookups in flight, by hash part, shared by every request for it. */
  const lookups = new Map<string, Promise<ServedNarInfo>>()

  function remember(hashPart: string, served: ServedNarInfo): void {
    if (narInfoTtlMs > 0) narInfos.set(hashPart, served)
  }

  function cachedNarInfo(hashPart: string): ServedNarInfo | undefined {
    return narInfos.get(hashPart)
  }

  async function lookupNarInfo(hashPart: string, signal: AbortSignal): Promise<{ served: ServedNarInfo; cached: boolean }> {
    const cached = narInfos.get(hashPart)
    if (cached) return { served: cached, cached: true }
    let lookup = lookups.get(hashPart)
    if (!lookup) {
      // One lookup for every request asking at once; a client that leaves does not end it for the others.
      lookup = resolveServedNarInfo(hashPart, {
        upstreams: context.upstreams,
        trustedKeys: context.trustedKeys,
        signal: AbortSignal.any([context.shutdown, AbortSignal.timeout(narInfoTimeoutMs)]),
      })
        .then((served) => {
          context.learn(served)
          remember(hashPart, served)
          return served
        })
        .finally(() => lookups.delete(hashPart))
      // Every waiting request may have left before it settles: its failure is theirs to hear, not the process's.
      lookup.catch(() => {})
      lookups.set(hashPart, lookup)
    }
    return { served: await raceSignal(lookup, signal), cached: false }
  }

  async function serveNarInfo(hashPart: string, res: ServerResponse, head: boolean): Promise<void> {
    // The store first: it answers with no upstream reachable, and a warm store asks none.
    const stored = await context.store?.narInfo(hashPart)
    if (stored !== undefined) {
      metrics.narinfoRequests.inc({ outcome: 'cached' })
      sendText(res, head, 200, stored, NARINFO_TYPE)
      return
    }
    const { signal, done } = requestSignal(res)
    const timeout = AbortSignal.timeout(narInfoTimeoutMs)
    try {
      const { served, cached } = await lookupNarInfo(hashPart, AbortSignal.any([signal, timeout]))
      // Kept beside its NAR once the NAR is in the store: the upstream's signed lines, the served URL.
      context.store?.keepNarInfo(served.text)
      metrics.narinfoRequests.inc({ outcome: cached ? 'cached' : 'ok' })
      sendText(res, head, 200, served.text, NARINFO_TYPE)
    } catch (error) {
      if (signal.aborted) return
      if (timeout.aborted) {
        metrics.narinfoRequests.inc({ outcome: 'failed' })
        logger.warn({ hashPart }, 'narinfo timed out')
        sendText(res, head, 504, `no upstream answered for ${hashPart} in time\n`)
        return
      }
      const notFound = isNotFound(error)
      metrics.narinfoRequests.inc({ outcome: notFound ? 'not_found' : 'failed' })
      if (!notFound) logger.warn({ hashPart, err: error }, 'narinfo failed')
      sendText(res, head, notFound ? 404 : 503, notFound ? 'not found\n' : `${message(error)}\n`)
    } finally {
      done()
    }
  }

  return { lookupNarInfo, cachedNarInfo, serveNarInfo }
}
