import { once } from 'node:events'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
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
import { DEFAULT_CONNECT_TIMEOUT_MS, httpBackend, resolveNarInfo, type HttpBackend } from '@narrace/http'
import { openIndex, type NarIndex } from '@narrace/index'
import { compressionExtension, isStoreHashPart, MAX_DOCUMENT_BYTES, parseCacheInfo } from '@narrace/narinfo'
import { pino, type Logger } from 'pino'
import { Agent } from 'undici'
import { DEFAULT_PRIORITY, DEFAULT_VERIFY_FIRST_BELOW } from './args.js'
import { upstreamCacheInfo } from './cache-info.js'
import { credentialInterceptor } from './credentials.js'
import { ProxyMetrics, type NarOutcome } from './metrics.js'
import { serveMapping, serveMappingsSince } from './mappings-route.js'
import { passthroughCounter, racePassthrough, servePassthrough } from './passthrough.js'
import type { PeerMappings } from './peer-mappings.js'
import { routeRequest, type Route } from './routes.js'
import { learnNarInfo, resolveServedNarInfo, servedNarInfo, type ServedNarInfo } from './served-narinfo.js'
import type { ProxyStore } from './store-wiring.js'
import { serveUnverifiedNar } from './unverified-nar.js'
import { perUpstreamUrls, type UpstreamNames } from './upstream-backends.js'

/** A narinfo lookup that no upstream finishes within this long answers 504. */
export const DEFAULT_NARINFO_TIMEOUT_MS = 10_000
/** Largest request head accepted; larger ones get a 400 before routing. */
export const MAX_HEADER_BYTES = 16 * 1024
/** narinfo answers kept in memory: Nix asks for the same one several times in a single `nix copy`. */
const MAX_CACHED_NARINFO = 10_000
/** How long a narinfo that was found is served from memory. @default one hour */
export const DEFAULT_NARINFO_TTL_MS = 60 * 60 * 1000

export interface ProxyOptions {
  /** The HTTP binary caches to race, for narinfo and NARs. */
  upstreams: string[]
  /** Serve only narinfo signed by one of these `name:base64` keys. @default [] (not checked) */
  trustedPublicKeys?: string[]
  /** Where narinfo FileHash, FileSize and each upstream's URL are remembered, and p2p mappings read. @default openIndex() in memory */
  index?: NarIndex
  /** Request headers per upstream URL (as in `upstreams`): credentials, sent to that upstream's origin and path only. */
  upstreamHeaders?: Record<string, Record<string, string>>
  /** Build logs, listings, realisations and debuginfo passed through are cut at this size. @default 64 MiB */
  maxPassthroughBytes?: number
  /** An upstream whose nix-cache-info could not be read is asked again at most this often. @default 30000 */
  cacheInfoRetryMs?: number
  /** More backends to race beside the upstreams (IPFS, torrent). The caller keeps ownership and closes them. */
  backends?: NarBackend[]
  /** @default { host: '127.0.0.1', port: 0 } */
  listen?: { host: string; port: number }
  /** NARs at or below this many bytes are verified whole before the first byte goes out. @default 8 MiB */
  verifyFirstBelow?: number
  /** The `Priority` in nix-cache-info. @default 30 */
  priority?: number
  /** How long a narinfo that was found (and verified) is served from memory; 0 turns that off. @default 1 hour */
  narInfoTtlMs?: number
  /** A narinfo lookup that no upstream finishes within this long answers 504, so Nix never waits on a hung cache. @default 10000 */
  narInfoTimeoutMs?: number
  /** Passed to `resolveNar`. @default its own (30 s) */
  stallTimeoutMs?: number
  /** @default pino at info level on stdout */
  logger?: Logger
  /** `--store`: answers first, keeps every NAR served and its narinfo. The caller closes it. */
  store?: ProxyStore
  /** `--mappings-from`: blames mappings that failed verification (the caller wraps the p2p backends). */
  peerMappings?: PeerMappings
}

export interface Proxy {
  readonly server: Server
  readonly metrics: ProxyMetrics
  /** `http://host:port` once listening. */
  readonly url: string
  /** Starts listening and resolves with the URL, the bound port filled in. */
  listen(): Promise<string>
  /** Aborts every request in flight, closes connections, the upstream pools and an index it opened. */
  close(): Promise<void>
}

const NARINFO_TYPE = 'text/x-nix-narinfo'
const NAR_TYPE = 'application/x-nix-nar'

function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | undefined)?.code
  return typeof code === 'string' ? code : undefined
}

/**
 * A narinfo is "not here" when at least one cache answered and none gave a valid one (missing, garbage,
 * or not signed by a trusted key), even if others could not be reached: Nix then moves on to its next
 * substituter instead of failing. Only when no cache could be asked at all is it an error (502).
 */
function isNotFound(error: unknown): boolean {
  if (codeOf(error) === 'NARRACE_NOT_FOUND') return true
  const cause = (error as { cause?: unknown } | undefined)?.cause
  if (!(cause instanceof AggregateError)) return false
  return cause.errors.some((e) => codeOf(e) === 'NARRACE_NOT_FOUND' || codeOf(e) === 'NARRACE_INVALID_NARINFO')
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

function sendText(res: ServerResponse, head: boolean, status: number, body: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) })
  res.end(head ? undefined : body)
}

/**
 * Holds back the latest chunk until the next one arrives. The stream ends normally only once the
 * FileHash has checked out, so when it fails the client is always missing bytes and sees a broken
 * transfer, never a complete corrupt file.
 */
async function* holdLast(stream: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let held: Uint8Array | undefined
  for await (const chunk of stream) {
    if (held) yield held
    held = chunk
  }
  if (held) yield held
}

/**
 * Creates the substituter proxy: a node:http server that answers Nix's binary-cache protocol, racing
 * narinfo across the upstreams and every NAR across the upstreams and the extra backends.
 */
export function createProxy(options: ProxyOptions): Proxy {
  if (options.upstreams.length === 0) throw new TypeError('createProxy needs at least one upstream')
  const logger = options.logger ?? pino()
  const metrics = new ProxyMetrics()
  const ownIndex = options.index === undefined
  const index = options.index ?? openIndex()
  const credentials = options.upstreamHeaders ?? {}
  const upstreams = new Map<string, HttpBackend>(
    options.upstreams.map((url) => [url, httpBackend({ url, name: url, headers: credentials[url] })]),
  )
  // narinfo and passthrough requests go through a pool the proxy owns, so that close() leaves no socket
  // behind; it adds each upstream's credentials to the requests for that upstream alone.
  const narInfoAgent = new Agent({ connect: { timeout: DEFAULT_CONNECT_TIMEOUT_MS } })
  const upstreamDispatcher = narInfoAgent.compose(credentialInterceptor(credentials))
  const trustedKeys = options.trustedPublicKeys?.length ? options.trustedPublicKeys : undefined
  const narInfoTimeoutMs = options.narInfoTimeoutMs ?? DEFAULT_NARINFO_TIMEOUT_MS
  const names: UpstreamNames = {
    index,
    async narInfo(upstream, hashPart, signal) {
      const found = await resolveNarInfo(hashPart, {
        caches: [upstream],
        trustedKeys,
        signal: AbortSignal.any([signal, AbortSignal.timeout(narInfoTimeoutMs)]),
        dispatcher: upstreamDispatcher,
      })
      return servedNarInfo(found.cache, found.narInfo, found.text, hashPart)
    },
    learn(served) {
      try {
        learnNarInfo(index, served)
      } catch (error) {
        logger.warn({ storePath: served.narInfo.storePath, upstream: served.upstream, err: error }, 'narinfo not remembered')
      }
    },
  }
  // Each upstream is asked for a file under the name its own narinfo gave it.
  const upstreamBackends = [...upstreams].map(([url, backend]) => perUpstreamUrls(backend, url, names))
  const backends: NarBackend[] = [...upstreamBackends, ...(options.backends ?? [])]
  const passthroughUpstreams = options.upstreams.map((url) => ({ url: new URL(url.endsWith('/') ? url : `${url}/`).href }))
  const passthrough = {
    upstreams: passthroughUpstreams,
    dispatcher: upstreamDispatcher,
    maxBytes: options.maxPassthroughBytes,
    logger,
    counter: passthroughCounter(metrics.registry),
  }
  const cacheInfo = upstreamCacheInfo({
    upstreams: options.upstreams,
    retryMs: options.cacheInfoRetryMs,
    fetch: (upstream, signal) => fetchCacheInfo(upstream, signal),
    onError: (upstream, error) => logger.warn({ upstream, err: error }, 'nix-cache-info not read'),
  })
  const verifyFirstBelow = options.verifyFirstBelow ?? DEFAULT_VERIFY_FIRST_BELOW
  const priority = options.priority ?? DEFAULT_PRIORITY
  const listenOn = options.listen ?? { host: '127.0.0.1', port: 0 }
  /** Found narinfo by hash part; a miss is never cached, since the path may be pushed upstream any time. */
  const narInfos = new Map<string, { served: ServedNarInfo; expires: number }>()
  const narInfoTtlMs = options.narInfoTtlMs ?? DEFAULT_NARINFO_TTL_MS
  const inFlight = new Set<AbortController>()
  let url: string | undefined
  let closing: Promise<void> | undefined

  const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES, headersTimeout: 10_000 }, (req, res) => {
    handle(req, res).catch((error: unknown) => {
      logger.error({ err: error, url: req.url }, 'request failed')
      if (!res.headersSent) sendText(res, req.method === 'HEAD', 500, 'internal error\n')
      else res.destroy()
    })
  })
  // Node answers an oversized head with 431; the proxy's contract is a plain 400 for every malformed request.
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => {
    if (error.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy()
      return
    }
    metrics.rejected.inc({ status: '400' })
    // Ending (not destroying) lets the answer reach a client that is still sending; the timer bounds the wait.
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
    setTimeout(() => socket.destroy(), 1000).unref()
  })

  /** A signal that fires when the client goes away before the response is done, or the proxy closes. */
  function requestSignal(res: ServerResponse): { signal: AbortSignal; done: () => void } {
    const controller = new AbortController()
    inFlight.add(controller)
    const onClose = (): void => {
      if (!res.writableFinished) controller.abort(new Error('the client disconnected'))
      inFlight.delete(controller)
    }
    res.once('close', onClose)
    return { signal: controller.signal, done: () => inFlight.delete(controller) }
  }

  /** One upstream's nix-cache-info, through its credentials, at most MAX_DOCUMENT_BYTES. */
  async function fetchCacheInfo(upstream: string, signal: AbortSignal): Promise<ReturnType<typeof parseCacheInfo>> {
    const url = new URL(upstream.endsWith('/') ? upstream : `${upstream}/`).href
    const answer = await racePassthrough('nix-cache-info', {
      upstreams: [{ url }],
      dispatcher: upstreamDispatcher,
      signal,
      maxBytes: MAX_DOCUMENT_BYTES,
    })
    const chunks: Uint8Array[] = []
    for await (const chunk of answer.body) chunks.push(chunk)
    return parseCacheInfo(Buffer.concat(chunks).toString('utf8'))
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const route: Route = routeRequest(req.method, req.url)
    const head = req.method === 'HEAD'
    switch (route.kind) {
      case 'reject':
        metrics.rejected.inc({ status: String(route.status) })
        if (route.status === 405) res.setHeader('allow', 'GET, HEAD')
        sendText(res, head, route.status, `${route.reason}\n`)
        return
      case 'cache-info':
        cacheInfo.retryFailed()
        sendText(
          res,
          head,
          200,
          `StoreDir: /nix/store\nWantMassQuery: ${cacheInfo.wantMassQuery() ? 1 : 0}\nPriority: ${priority}\n`,
          'text/x-nix-cache-info',
        )
        return
      case 'healthz':
        sendText(res, head, 200, 'ok\n')
        return
      case 'metrics':
        sendText(res, head, 200, await metrics.registry.metrics(), metrics.registry.contentType)
        return
      case 'narinfo':
        await serveNarInfo(route.hashPart, res, head)
        return
      case 'nar':
        await serveNar(route, res, head)
        return
      case 'mapping':
        serveMapping(index, route.fileHash, res, head)
        return
      case 'mappings': {
        const { signal, done } = requestSignal(res)
        try {
          await serveMappingsSince(index, route.since, res, head, signal)
        } finally {
          done()
        }
        return
      }
      case 'passthrough': {
        const { signal, done } = requestSignal(res)
        try {
          await servePassthrough(route, res, head, signal, passthrough)
        } finally {
          done()
        }
        return
      }
    }
  }

  /**
   * The served form of `hashPart`'s narinfo: from memory, or raced across the upstreams, verified, and
   * learned into the index (a narinfo the index refuses is still served). Rejects as resolveNarInfo does.
   */
  async function lookupNarInfo(hashPart: string, signal: AbortSignal): Promise<{ served: ServedNarInfo; cached: boolean }> {
    const cached = narInfos.get(hashPart)
    if (cached && cached.expires > performance.now()) return { served: cached.served, cached: true }
    const served = await resolveServedNarInfo(hashPart, {
      upstreams: options.upstreams,
      trustedKeys,
      signal,
      dispatcher: upstreamDispatcher,
    })
    names.learn(served)
    if (narInfoTtlMs > 0) {
      narInfos.delete(hashPart)
      narInfos.set(hashPart, { served, expires: performance.now() + narInfoTtlMs })
      if (narInfos.size > MAX_CACHED_NARINFO) narInfos.delete(narInfos.keys().next().value!)
    }
    return { served, cached: false }
  }

  async function serveNarInfo(hashPart: string, res: ServerResponse, head: boolean): Promise<void> {
    // The store first: it answers with no upstream reachable, and a warm store asks none.
    const stored = await options.store?.narInfo(hashPart)
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
      options.store?.keepNarInfo(served.text)
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
      sendText(res, head, notFound ? 404 : 502, notFound ? 'not found\n' : `${message(error)}\n`)
    } finally {
      done()
    }
  }

  /**
   * The FileHash a NAR request names: a URL an upstream gave (which older versions served unchanged) as
   * the index knows it, else the name itself. A name of 32 characters is a store path's hash part: the
   * served name of a compressed file with no FileHash, found again through its narinfo.
   */
  async function narHashOf(
    route: Extract<Route, { kind: 'nar' }>,
    res: ServerResponse,
    head: boolean,
  ): Promise<NarHash | undefined> {
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
        const timeout = AbortSignal.timeout(narInfoTimeoutMs)
        const { served } = await lookupNarInfo(route.name, AbortSignal.any([signal, timeout]))
        const ext = compressionExtension(served.narInfo.compression) === route.ext
        if (served.fileHash && ext) return served.fileHash
        const backend = upstreams.get(served.upstream)
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

  async function serveNar(route: Extract<Route, { kind: 'nar' }>, res: ServerResponse, head: boolean): Promise<void> {
    const hash = await narHashOf(route, res, head)
    if (!hash) return
    const location = index.get(hash)
    const tracker = metrics.track()
    const { signal, done } = requestSignal(res)
    const started = performance.now()
    let stream: NarStream | undefined
    let outcome: NarOutcome = 'ok'
    let failure: unknown
    const blame = options.peerMappings?.blame(hash, location)
    try {
      stream = await resolveNar(hash, {
        backends: options.store ? options.store.backendsFor(hash, backends) : backends,
        signal,
        size: location?.size,
        // The standard name; each upstream that named the file otherwise is asked under its own name.
        url: `nar/${hash.nix32}.nar${route.ext}`,
        // HEAD sends no body, so the first byte of a copy is enough to answer; no need to fetch it whole.
        verifyFirstBelow: head ? 0 : verifyFirstBelow,
        stallTimeoutMs: options.stallTimeoutMs,
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
      if (error instanceof NarHashMismatchError && error.sources.includes('store')) await options.store?.forget(hash)
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
          const body = options.store ? options.store.tee(stream, route.path) : stream
          await pipeline(Readable.from(holdLast(body), { objectMode: false }), res)
        }
      } catch (error) {
        failure = error
        // A late failure must reach Nix as a broken transfer: cut the connection, never end it cleanly.
        res.destroy()
        // Cutting the connection fires the request signal too, so the error's type decides, not the signal.
        if (error instanceof NarHashMismatchError) {
          if (error.sources.includes('store')) await options.store?.forget(hash)
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

  return {
    server,
    metrics,
    get url(): string {
      if (url === undefined) throw new Error('the proxy is not listening')
      return url
    },
    async listen(): Promise<string> {
      await cacheInfo.start()
      server.listen(listenOn.port, listenOn.host)
      await once(server, 'listening')
      const address = server.address() as AddressInfo
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
      url = `http://${host}:${address.port}`
      return url
    },
    close(): Promise<void> {
      closing ??= (async () => {
        cacheInfo.close()
        for (const controller of inFlight) controller.abort(new Error('the proxy is closing'))
        const closed = server.listening ? once(server, 'close') : Promise.resolve()
        server.close()
        server.closeAllConnections()
        await closed
        await Promise.all([...[...upstreams.values()].map((backend) => backend.close()), narInfoAgent.destroy()])
        if (ownIndex) index.close()
      })()
      return closing
    },
  }
}
