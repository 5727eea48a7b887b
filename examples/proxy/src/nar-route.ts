import type { ServerResponse } from 'node:http'
import { performance } from 'node:perf_hooks'
import {
  isNarMismatch,
  NarNotFoundError,
  parseNarHash,
  resolveNar,
  type NarBackend,
  type NarEvent,
  type NarHash,
  type TurnPacer,
} from '@narrace/core'
import type { NarIndex, NarLocation } from '@narrace/index'
import { compressionExtension, isStoreHashPart, parseStorePath } from '@narrace/narinfo'
import type { Logger } from 'pino'
import { Downloads, type NarDownload } from './downloads.js'
import type { NarOutcome, ProxyMetrics } from './metrics.js'
import type { PeerMappings } from './peer-mappings.js'
import { codeOf, message, NAR_TYPE, sendText, type RequestSignal } from './respond.js'
import type { Route } from './routes.js'
import { clientGone, sendBody, type SendProgress } from './send.js'
import { IdleTrim } from './trim.js'
import type { ServedNarInfo } from './served-narinfo.js'
import { MemoryBudget } from './spool.js'
import type { ProxyStore } from './store-wiring.js'
import { serveUnverifiedNar, unverifiedBound } from './unverified-nar.js'

/** How long a HEAD request's one cheap check may take. @default 10000 */
export const HEAD_CHECK_TIMEOUT_MS = 10_000

type NarRoute = Extract<Route, { kind: 'nar' }>

/**
 * The one classification of a NAR failure, for the status, the outcome label and the metrics alike:
 * 404 only when every source said "not here"; a copy that failed verification (by size or hash, before or
 * after the first byte) is a 502 `hash_mismatch`; anything else, an outage above all, is a 503, which Nix
 * retries, never a 404, which Nix takes for "not here".
 */
export function classifyNarFailure(error: unknown, clientGone: boolean): { status: 404 | 502 | 503; outcome: NarOutcome } {
  if (isNarMismatch(error)) return { status: 502, outcome: 'hash_mismatch' }
  if (clientGone) return { status: 503, outcome: 'aborted' }
  if (codeOf(error) === 'NARRACE_NOT_FOUND') return { status: 404, outcome: 'not_found' }
  return { status: 503, outcome: 'failed' }
}

export interface NarRouteContext {
  index: NarIndex
  metrics: ProxyMetrics
  logger: Logger
  /** Every source for a NAR: the upstreams (each under its own URL) and the p2p backends. */
  backends: NarBackend[]
  /** The upstreams' backends alone, for HEAD's cheap check. */
  upstreamBackends: NarBackend[]
  /** The upstream backends by `--upstream` URL, for files with no FileHash. */
  upstreams: Map<string, NarBackend>
  store: ProxyStore | undefined
  peerMappings: PeerMappings | undefined
  /** The narinfo of a store path's hash part, from memory or raced across the upstreams. */
  lookupNarInfo(hashPart: string, signal: AbortSignal): Promise<{ served: ServedNarInfo }>
  /** The narinfo of a hash part if it is in memory; never asks an upstream. */
  cachedNarInfo(hashPart: string): ServedNarInfo | undefined
  requestSignal: RequestSignal
  narInfoTimeoutMs: number
  verifyFirstBelow: number
  memoryBudget: number
  spoolDir: string
  stallTimeoutMs: number | undefined
  minBytesPerSecond: number | undefined
  maxNarBytes: number | undefined
  /** Shared by every response body, so that together they never hold a turn of the event loop for long. */
  pacer: TurnPacer
  /** A client whose socket does not drain for this long is cut. */
  clientTimeoutMs: number
}

/**
 * The NAR route: `/nar/<FileHash>.nar<ext>`. Every request for one FileHash shares one download, read by
 * each client at its own pace; small files reach clients only once verified whole.
 */
export function createNarRoute(context: NarRouteContext): {
  serve(route: NarRoute, res: ServerResponse, head: boolean): Promise<void>
  downloads: Downloads
  /** The idle trim, told of every request so that it waits for a quiet moment. */
  trim: IdleTrim
} {
  const { index, metrics, logger } = context
  const budget = new MemoryBudget(context.memoryBudget)
  metrics.memoryBudget(() => budget.used)

  /** The most bytes a file may have when its FileSize is unknown: from its narinfo's NarSize, if in memory. */
  function boundOf(location: NarLocation | undefined): number | undefined {
    if (location?.storePath === undefined) return context.maxNarBytes
    const served = context.cachedNarInfo(parseStorePath(location.storePath).hashPart)
    return served ? unverifiedBound(served) : context.maxNarBytes
  }

  // Memory the downloads freed goes back to the system once none runs.
  const trim = new IdleTrim()
  const downloads = new Downloads({
    budget,
    onBusy: (busy) => (busy ? trim.busy() : trim.idle()),
    spoolDir: context.spoolDir,
    verifyFirstBelow: context.verifyFirstBelow,
    async open(hash, { signal, size, verifyFirstBelow }, download) {
      const location = index.get(hash)
      const tracker = metrics.track()
      download.tracker = tracker
      const blame = context.peerMappings?.blame(hash, location)
      const onEvent = (event: NarEvent): void => {
        tracker.onEvent(event)
        blame?.(event)
      }
      const maxNarBytes = size === undefined ? boundOf(location) : undefined
      // The standard name; each upstream that named the file otherwise is asked under its own name.
      const url = `nar/${hash.nix32}.nar${compressionSuffix(location)}`
      try {
        const stream = await resolveNar(hash, {
          backends: context.store ? context.store.backendsFor(hash, context.backends) : context.backends,
          signal,
          size,
          url,
          verifyFirstBelow,
          ...(context.stallTimeoutMs !== undefined ? { stallTimeoutMs: context.stallTimeoutMs } : {}),
          ...(context.minBytesPerSecond !== undefined ? { minBytesPerSecond: context.minBytesPerSecond } : {}),
          ...(maxNarBytes !== undefined ? { maxNarBytes } : {}),
          onEvent,
        })
        const body = context.store ? context.store.tee(stream, url) : stream
        return { stream, body }
      } catch (error) {
        // A stored copy that failed verification is dropped; Nix retries and gets a fresh one.
        if (isNarMismatch(error) && error.sources.includes('store')) await context.store?.forget(hash)
        throw error
      }
    },
    onEnd(download, error) {
      const tracker = download.tracker
      if (download.stream) tracker?.credit(download.stream.bytesRead)
      if (error !== undefined && download.stream && isNarMismatch(error)) {
        if (error.sources.includes('store')) void context.store?.forget(download.hash)
        tracker?.streamMismatch(error)
      }
    },
  })

  /** The extension the file's narinfo gives it, `.xz` when nothing is known. */
  function compressionSuffix(location: NarLocation | undefined): string {
    if (location?.storePath === undefined) return '.xz'
    const served = context.cachedNarInfo(parseStorePath(location.storePath).hashPart)
    return served ? compressionExtension(served.narInfo.compression) : '.xz'
  }

  /**
   * The FileHash a NAR request names: a URL an upstream gave (which older versions served unchanged) as
   * the index knows it, else the name itself. A name of 32 characters is a store path's hash part: the
   * served name of a compressed file with no FileHash, found again through its narinfo and passed through.
   */
  async function narHashOf(route: NarRoute, res: ServerResponse, head: boolean): Promise<NarHash | undefined> {
    const known = index.findByUrl(route.path)
    if (known) return known
    if (route.name.length === 52) {
      try {
        return parseNarHash(route.name)
      } catch (error) {
        metrics.rejected.inc({ status: '400' })
        sendText(res, head, 400, `${message(error)}\n`)
        return undefined
      }
    }
    if (route.name.length === 32 && isStoreHashPart(route.name)) {
      const { signal, done } = context.requestSignal(res)
      try {
        const timeout = AbortSignal.timeout(context.narInfoTimeoutMs)
        const { served } = await context.lookupNarInfo(route.name, AbortSignal.any([signal, timeout]))
        const ext = compressionExtension(served.narInfo.compression) === route.ext
        if (served.fileHash && ext) return served.fileHash
        const backend = context.upstreams.get(served.upstream)
        if (!served.fileHash && ext && backend) {
          await serveUnverifiedNar(served, res, head, signal, {
            backend,
            logger,
            requests: metrics.requests,
            pacer: context.pacer,
            clientTimeoutMs: context.clientTimeoutMs,
          })
          return undefined
        }
      } catch (error) {
        if (signal.aborted) return undefined
        const { status, outcome } = classifyNarFailure(error, false)
        if (status !== 404) {
          logger.warn({ nar: route.path, err: error }, 'narinfo for an unverified NAR failed')
          metrics.requests.inc({ outcome })
          sendText(res, head, status, `${message(error)}\n`)
          return undefined
        }
      } finally {
        done()
      }
    }
    metrics.requests.inc({ outcome: 'not_found' })
    sendText(res, head, 404, 'unknown NAR\n')
    return undefined
  }

  /**
   * HEAD answers from what the narinfo said (the size) and one cheap check: the store has the file, or
   * an upstream serves its first byte. No race, no p2p source, no torrent added.
   */
  async function serveHead(hash: NarHash, res: ServerResponse): Promise<void> {
    const location = index.get(hash)
    const started = performance.now()
    const answer = (status: number, outcome: NarOutcome, size: number | undefined, winner?: string): void => {
      metrics.requests.inc({ outcome })
      res.writeHead(status, { 'content-type': NAR_TYPE, ...(size !== undefined ? { 'content-length': String(size) } : {}) })
      res.end()
      const line = { nar: hash.nix32, method: 'HEAD', storePath: location?.storePath, outcome, winner, size, ms: Math.round(performance.now() - started) }
      if (outcome === 'ok') logger.info(line, 'nar')
      else logger.warn(line, 'nar')
    }
    if (context.store?.has(hash)) return answer(200, 'ok', location?.size, 'store')
    const { signal, done } = context.requestSignal(res)
    const controller = new AbortController()
    const checkSignal = AbortSignal.any([signal, controller.signal, AbortSignal.timeout(HEAD_CHECK_TIMEOUT_MS)])
    const url = `nar/${hash.nix32}.nar${compressionSuffix(location)}`
    try {
      const { size, winner } = await Promise.any(
        context.upstreamBackends.map(async (backend) => {
          const options = { signal: checkSignal, url, offset: 0, end: 1, ...(location?.size !== undefined ? { size: location.size } : {}) }
          const source = await backend.fetch(hash, options)
          await source.body[Symbol.asyncIterator]().return?.()
          return { size: location?.size ?? source.size, winner: backend.name }
        }),
      )
      answer(200, 'ok', size, winner)
    } catch (error) {
      if (signal.aborted) return
      const errors = error instanceof AggregateError ? error.errors : [error]
      const notHere = errors.every((e) => e instanceof NarNotFoundError)
      answer(notHere ? 404 : 503, notHere ? 'not_found' : 'failed', undefined)
    } finally {
      controller.abort()
      done()
    }
  }

  async function serve(route: NarRoute, res: ServerResponse, head: boolean): Promise<void> {
    const hash = await narHashOf(route, res, head)
    if (!hash) return
    if (head) return serveHead(hash, res)
    const location = index.get(hash)
    const { signal, done } = context.requestSignal(res)
    const started = performance.now()
    const download = downloads.join(hash, location?.size)
    let outcome: NarOutcome = 'ok'
    let failure: unknown
    const sent: SendProgress = { bytes: 0 }
    try {
      await download.opened
      if (download.verifyFirst) await download.finished
      const stream = download.stream!
      const headers: Record<string, string> = { 'content-type': NAR_TYPE }
      if (stream.size !== undefined) headers['content-length'] = String(stream.size)
      const body = download.spool!.read({ verifyFirst: download.verifyFirst, signal })
      await sendBody(res, headers, body, context.pacer, signal, { progress: sent, clientTimeoutMs: context.clientTimeoutMs })
    } catch (error) {
      failure = error
      // Checked before the cut below, which fires the signal too. A client cut for not draining went too.
      const classified = classifyNarFailure(error, clientGone(error, signal))
      outcome = classified.outcome
      // A failure after the status went out must reach Nix as a broken transfer: cut, never end cleanly.
      if (res.headersSent) res.destroy()
      else if (!signal.aborted) sendText(res, false, classified.status, `${message(error)}\n`)
    } finally {
      download.leave()
      done()
    }
    metrics.requests.inc({ outcome })
    log(download, location, outcome, failure, sent.bytes, started)
  }

  function log(
    download: NarDownload,
    location: NarLocation | undefined,
    outcome: NarOutcome,
    failure: unknown,
    sent: number,
    started: number,
  ): void {
    const stream = download.stream
    const line = {
      nar: download.hash.nix32,
      storePath: location?.storePath,
      outcome,
      winner: stream?.winner,
      size: stream?.size ?? location?.size,
      bytes: sent,
      ms: Math.round(performance.now() - started),
      tried: download.tracker ? [...download.tracker.tried] : [],
      sources: stream ? [...stream.sources] : [],
      ...(failure === undefined ? {} : { error: message(failure) }),
    }
    if (outcome === 'ok' || outcome === 'aborted') logger.info(line, 'nar')
    else logger.warn(line, 'nar')
  }

  return { serve, downloads, trim }
}
