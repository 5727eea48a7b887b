import type { ServerResponse } from 'node:http'
import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import {
  NarHashMismatchError,
  NarraceError,
  parseNarHash,
  resolveNar,
  type NarBackend,
  type NarHash,
  type NarStream,
} from '@narrace/core'
import type { HttpBackend } from '@narrace/http'
import type { NarIndex } from '@narrace/index'
import { compressionExtension, isStoreHashPart } from '@narrace/narinfo'
import type { Logger } from 'pino'
import type { ProxyMetrics, NarOutcome } from './metrics.js'
import { isNotFound, type NarInfoRoute } from './narinfo-route.js'
import type { PeerMappings } from './peer-mappings.js'
import { codeOf, message, NAR_TYPE, sendText, type RequestSignal } from './respond.js'
import type { Route } from './routes.js'
import type { ProxyStore } from './store-wiring.js'
import { serveUnverifiedNar } from './unverified-nar.js'

export type NarRequest = Extract<Route, { kind: 'nar' }>

export interface NarRouteContext {
  index: NarIndex
  /** The upstreams' own backends by URL, for unverified NARs fetched from the upstream that named them. */
  upstreams: Map<string, HttpBackend>
  /** Everything raced for a verified NAR. */
  backends: NarBackend[]
  metrics: ProxyMetrics
  logger: Logger
  requestSignal: RequestSignal
  lookupNarInfo: NarInfoRoute['lookupNarInfo']
  store?: ProxyStore
  peerMappings?: PeerMappings
  verifyFirstBelow: number
  stallTimeoutMs?: number
  narInfoTimeoutMs: number
}

/**
 * Holds back the latest chunk until the next one arrives. The stream ends normally only once the
 * FileHash has checked out, so when it fails the client is always missing bytes and sees a broken
 * transfer, never a complete corrupt file.
 */
export async function* holdLast(stream: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let held: Uint8Array | undefined
  for await (const chunk of stream) {
    if (held) yield held
    held = chunk
  }
  if (held) yield held
}

export function createNarRoute(context: NarRouteContext): { serveNar(route: NarRequest, res: ServerResponse, head: boolean): Promise<void> } {
  const { index, metrics, logger, requestSignal, store } = context

  /**
   * The FileHash a NAR request names: a URL an upstream gave (which older versions served unchanged) as
   * the index knows it, else the name itself. A name of 32 characters is a store path's hash part: the
   * served name of a compressed file with no FileHash, found again through its narinfo.
   */
  async function narHashOf(route: NarRequest, res: ServerResponse, head: boolean): Promise<NarHash | undefined> {
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
      const { signal, done } = requestSignal(res)
      try {
        const timeout = AbortSignal.timeout(context.narInfoTimeoutMs)
        const { served } = await context.lookupNarInfo(route.name, AbortSignal.any([signal, timeout]))
        const ext = compressionExtension(served.narInfo.compression) === route.ext
        if (served.fileHash && ext) return served.fileHash
        const backend = context.upstreams.get(served.upstream)
        if (!served.fileHash && ext && backend) {
          await serveUnverifiedNar(served, res, head, signal, { backend, logger, requests: metrics.requests })
          return undefined
        }
      } catch (error) {
        if (signal.aborted) return undefined
        if (!isNotFound(error)) {
          // An outage is not "not here": Nix must not take it for a missing file.
          logger.warn({ nar: route.path, err: error }, 'narinfo for an unverified NAR failed')
          metrics.requests.inc({ outcome: 'failed' })
          sendText(res, head, 503, `${message(error)}\n`)
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

  async function serveNar(route: NarRequest, res: ServerResponse, head: boolean): Promise<void> {
    const hash = await narHashOf(route, res, head)
    if (!hash) return
    const location = index.get(hash)
    const tracker = metrics.track()
    const { signal, done } = requestSignal(res)
    const started = performance.now()
    let stream: NarStream | undefined
    let outcome: NarOutcome = 'ok'
    let failure: unknown
    const blame = context.peerMappings?.blame(hash, location)
    try {
      stream = await resolveNar(hash, {
        backends: store ? store.backendsFor(hash, context.backends) : context.backends,
        signal,
        size: location?.size,
        // The standard name; each upstream that named the file otherwise is asked under its own name.
        url: `nar/${hash.nix32}.nar${route.ext}`,
        // HEAD sends no body, so the first byte of a copy is enough to answer; no need to fetch it whole.
        verifyFirstBelow: head ? 0 : context.verifyFirstBelow,
        stallTimeoutMs: context.stallTimeoutMs,
        onEvent: blame
          ? (event) => {
              tracker.onEvent(event)
              blame(event)
            }
          : tracker.onEvent,
      })
    } catch (error) {
      failure = error
      // A stored copy that failed verification before the first byte went out is dropped; Nix retries.
      if (error instanceof NarHashMismatchError && error.sources.includes('store')) await store?.forget(hash)
      if (signal.aborted) outcome = 'aborted'
      else {
        const code = codeOf(error)
        outcome = code === 'NARRACE_NOT_FOUND' ? 'not_found' : code === 'NARRACE_HASH_MISMATCH' ? 'hash_mismatch' : 'failed'
        sendText(res, head, outcome === 'not_found' ? 404 : 502, `${message(error)}\n`)
      }
    }

    if (stream) {
      const headers: Record<string, string> = { 'content-type': NAR_TYPE }
      if (stream.size !== undefined) headers['content-length'] = String(stream.size)
      res.writeHead(200, headers)
      try {
        if (head) {
          await stream[Symbol.asyncIterator]().return?.()
          res.end()
        } else {
          const body = store ? store.tee(stream, route.path) : stream
          await pipeline(Readable.from(holdLast(body), { objectMode: false }), res)
        }
      } catch (error) {
        failure = error
        // A late failure must reach Nix as a broken transfer: cut the connection, never end it cleanly.
        res.destroy()
        // Cutting the connection fires the request signal too, so the error's type decides, not the signal.
        if (error instanceof NarHashMismatchError) {
          if (error.sources.includes('store')) await store?.forget(hash)
          outcome = 'hash_mismatch'
          metrics.streamMismatch(error.sources)
          tracker.streamFailed(error)
        } else if (error instanceof NarraceError || !signal.aborted) outcome = 'failed'
        else outcome = 'aborted'
      }
      tracker.credit(stream.bytesRead)
    }
    done()
    tracker.outcome(outcome)
    const line = {
      nar: hash.nix32,
      ...(head ? { method: 'HEAD' } : {}),
      storePath: location?.storePath,
      outcome,
      winner: stream?.winner,
      size: stream?.size ?? location?.size,
      bytes: stream?.bytesRead ?? 0,
      ms: Math.round(performance.now() - started),
      tried: [...tracker.tried],
      sources: stream ? [...stream.sources] : [],
      ...(failure === undefined ? {} : { error: message(failure) }),
    }
    if (outcome === 'ok' || outcome === 'aborted') logger.info(line, 'nar')
    else logger.warn(line, 'nar')
  }

  return { serveNar }
}
