import type { ServerResponse } from 'node:http'
import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import {
  DEFAULT_MAX_NAR_BYTES,
  isNarMismatch,
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
import type { MemoryBudget } from './budget.js'
import type { Spool } from './spool.js'
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
  /** The upstreams alone (under their own URLs): what a HEAD asks, never a torrent or a DHT. */
  upstreamBackends: NarBackend[]
  metrics: ProxyMetrics
  logger: Logger
  requestSignal: RequestSignal
  lookupNarInfo: NarInfoRoute['lookupNarInfo']
  store?: ProxyStore
  peerMappings?: PeerMappings
  verifyFirstBelow: number
  stallTimeoutMs?: number
  /** Passed to `resolveNar`. @default its own (1 KiB/s) */
  minBytesPerSecond?: number
  /** The bound for a file of which nothing is known. @default core's DEFAULT_MAX_NAR_BYTES (64 GiB) */
  maxNarBytes?: number
  narInfoTimeoutMs: number
  /** `--memory-budget`: what verify-first buffering may hold across all requests. */
  budget: MemoryBudget
  /** The folder where NARs past the budget are verified; opened on first use. */
  spool: () => Promise<Spool>
}

/**
 * The largest a compressed file can be for a NAR of `narSize` bytes: `narSize + narSize / 16 + 64 KiB`.
 * xz, zstd, bzip2, brotli and lz4 grow incompressible input by well under 2 % plus a header of a few
 * hundred bytes, so this bound is loose for every real file and still cuts an endless body early.
 */
export function compressedBound(narSize: number): number {
  return narSize + Math.ceil(narSize / 16) + 64 * 1024
}

/** The HTTP status and outcome of a NAR that could not be served: 404 only when every source said "not here". */
export function narFailure(error: unknown): { status: number; outcome: NarOutcome } {
  if (isNarMismatch(error)) return { status: 502, outcome: 'hash_mismatch' }
  if (codeOf(error) === 'NARRACE_NOT_FOUND') return { status: 404, outcome: 'not_found' }
  // An outage (NarUnavailableError) or anything else: the file may exist, so Nix must not take it as missing.
  return { status: 503, outcome: 'failed' }
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

  /**
   * The most bytes the file may have when no FileSize is known: from its narinfo's NarSize (asked within
   * the narinfo timeout), else maxNarBytes.
   */
  async function sizeBound(storePath: string | undefined, signal: AbortSignal): Promise<number> {
    const fallback = context.maxNarBytes ?? DEFAULT_MAX_NAR_BYTES
    const hashPart = storePath?.split('/').pop()?.slice(0, 32)
    if (hashPart === undefined || !isStoreHashPart(hashPart)) return fallback
    try {
      const timeout = AbortSignal.timeout(context.narInfoTimeoutMs)
      const { served } = await context.lookupNarInfo(hashPart, AbortSignal.any([signal, timeout]))
      return Math.min(fallback, compressedBound(served.narInfo.narSize))
    } catch {
      return fallback
    }
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
    // Verify-first holds the whole file in memory: only within the budget. Past it, the file is verified
    // on disk instead, so that a crowd of clients costs disk, not memory.
    let verifyFirstBelow = head ? 0 : context.verifyFirstBelow
    let release: (() => void) | undefined
    let spooled = false
    if (verifyFirstBelow > 0 && (location?.size === undefined || location.size <= verifyFirstBelow)) {
      release = context.budget.reserve(location?.size ?? verifyFirstBelow)
      if (!release) {
        spooled = true
        verifyFirstBelow = 0
      }
    }
    try {
      // HEAD answers from one cheap check of the upstreams; it never adds a torrent or asks a DHT.
      const raced = head ? context.upstreamBackends : context.backends
      stream = await resolveNar(hash, {
        backends: store ? store.backendsFor(hash, raced) : raced,
        signal,
        size: location?.size,
        maxNarBytes: location?.size === undefined ? await sizeBound(location?.storePath, signal) : context.maxNarBytes,
        minBytesPerSecond: context.minBytesPerSecond,
        // The standard name; each upstream that named the file otherwise is asked under its own name.
        url: `nar/${hash.nix32}.nar${route.ext}`,
        // HEAD sends no body, so the first byte of a copy is enough to answer; no need to fetch it whole.
        verifyFirstBelow,
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
      outcome = await failedBeforeFirstByte(error)
    }

    /** A failure before any byte went out: a stored copy that failed verification is dropped (Nix retries). */
    async function failedBeforeFirstByte(error: unknown): Promise<NarOutcome> {
      if (isNarMismatch(error)) {
        if (error.sources.includes('store')) await store?.forget(hash!)
        tracker.mismatch(error)
      }
      if (signal.aborted) return 'aborted'
      const answer = narFailure(error)
      sendText(res, head, answer.status, `${message(error)}\n`)
      return answer.outcome
    }

    let file: Readable | undefined
    if (stream && spooled && !head) {
      try {
        file = await (await context.spool()).verified(store ? store.tee(stream, route.path) : stream, signal)
      } catch (error) {
        failure = error
        outcome = await failedBeforeFirstByte(error)
        tracker.credit(stream.bytesRead)
        stream = undefined
      }
    }

    if (stream) {
      const headers: Record<string, string> = { 'content-type': NAR_TYPE }
      const size = stream.size ?? (file ? stream.bytesRead : undefined)
      if (size !== undefined) headers['content-length'] = String(size)
      res.writeHead(200, headers)
      try {
        if (head) {
          await stream[Symbol.asyncIterator]().return?.()
          res.end()
        } else if (file) {
          await pipeline(file, res)
        } else {
          const body = store ? store.tee(stream, route.path) : stream
          await pipeline(Readable.from(holdLast(body), { objectMode: false }), res)
        }
      } catch (error) {
        failure = error
        // A late failure must reach Nix as a broken transfer: cut the connection, never end it cleanly.
        res.destroy()
        // Cutting the connection fires the request signal too, so the error's type decides, not the signal.
        if (isNarMismatch(error)) {
          if (error.sources.includes('store')) await store?.forget(hash)
          outcome = 'hash_mismatch'
          tracker.mismatch(error)
          tracker.streamFailed(error)
        } else if (error instanceof NarraceError || !signal.aborted) outcome = 'failed'
        else outcome = 'aborted'
      }
      tracker.credit(stream.bytesRead)
    }
    file?.destroy()
    release?.()
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
