import { once } from 'node:events'
import { rm } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { TurnPacer, type NarBackend } from '@narrace/core'
import { fetchCacheInfo, httpBackend, resolveNarInfo, type HttpBackend, type Upstream } from '@narrace/http'
import { openIndex, type NarIndex } from '@narrace/index'
import { pino, type Logger } from 'pino'
import { DEFAULT_MAX_CONNECTIONS, DEFAULT_MEMORY_BUDGET, DEFAULT_PRIORITY, DEFAULT_VERIFY_FIRST_BELOW } from './args.js'
import { upstreamCacheInfo } from './cache-info.js'
import { ProxyMetrics } from './metrics.js'
import { serveMapping, serveMappingsSince } from './mappings-route.js'
import { createNarRoute } from './nar-route.js'
import { createNarInfoRoute } from './narinfo-route.js'
import { passthroughCounter, servePassthrough, upstreamDispatcher } from './passthrough.js'
import type { PeerMappings } from './peer-mappings.js'
import { sendText, type RequestSignal } from './respond.js'
import { routeRequest, type Route } from './routes.js'
import { DEFAULT_CLIENT_TIMEOUT_MS, DEFAULT_TURN_BYTES } from './send.js'
import { learnNarInfo, servedNarInfo } from './served-narinfo.js'
import { spoolDirectory } from './spool.js'
import type { ProxyStore } from './store-wiring.js'
import { DEFAULT_LISTEN_SOCKETS, listenOn, type ExtraListeners } from './listeners.js'
import { perUpstreamUrls, type UpstreamNames } from './upstream-backends.js'

/** A narinfo lookup that no upstream finishes within this long answers 504. */
export const DEFAULT_NARINFO_TIMEOUT_MS = 10_000
/** Largest request head accepted; larger ones get a 400 before routing. */
export const MAX_HEADER_BYTES = 16 * 1024
/** A connection whose request head is not all in within this long (or that sends nothing) is closed. */
export const HEADERS_TIMEOUT_MS = 10_000
/**
 * Requests that do work (narinfo, NAR, mappings) started in one turn of the event loop; the rest wait
 * for the next turns. Hundreds of clients that connect at once are parsed in one batch, and starting all
 * their work in the same turn held `/nix-cache-info` for 80-200 ms (median about 145 over 12 runs of 500
 * clients on 2 cores); 16 a turn: 42-132 ms (median about 110 over 11 runs).
 * @default 16
 */
export const REQUEST_STARTS_PER_TURN = 16
/**
 * Turns in a row in which no request starts once the proxy accepted a connection (a request parsed earlier
 * in the same turn, with none waiting, still starts). libuv accepts one connection per listening socket per
 * turn (libuv#3696; see `listeners.ts`), so a burst of connections queues in the kernel and a
 * `/nix-cache-info` behind it waits for every turn before its own; request starts made those turns long
 * (about 0.2 ms each). With 500 clients at once and one listening socket, the slowest `/nix-cache-info`
 * went from 55-297 ms (median 110 over six paired runs) to 19-53 ms (median 34). The bound keeps a stream
 * of connections from starving the requests already in.
 * @default 64
 */
export const MAX_ACCEPT_TURNS = 64
/** Routes answered from memory at once, never paced: the health and cache-info answers Nix and monitors wait on. */
const CHEAP_ROUTES: ReadonlySet<Route['kind']> = new Set(['reject', 'cache-info', 'healthz', 'metrics'])
/** How long a narinfo that was found is served from memory. @default one hour */
export const DEFAULT_NARINFO_TTL_MS = 60 * 60 * 1000

export interface ProxyOptions {
  /**
   * The HTTP binary caches to race, for narinfo and NARs: URLs, or URLs with options (`headers`, `netrc`
   * credentials, `allowedOrigins`, …) as `httpBackend` takes them; each is named by its URL as given.
   */
  upstreams: Upstream[]
  /** Serve only narinfo signed by one of these `name:base64` keys. @default [] (not checked) */
  trustedPublicKeys?: string[]
  /** Where narinfo FileHash, FileSize and each upstream's URL are remembered, and p2p mappings read. @default openIndex() in memory */
  index?: NarIndex
  /** Build logs, listings, realisations and debuginfo passed through are cut at this size. @default 64 MiB */
  maxPassthroughBytes?: number
  /** An upstream whose nix-cache-info could not be read is asked again at most this often. @default 30000 */
  cacheInfoRetryMs?: number
  /** More backends to race beside the upstreams (IPFS, torrent). The caller keeps ownership and closes them. */
  backends?: NarBackend[]
  /** Backends that come and go (`--lan` peers), read again for each download. The caller owns them. */
  dynamicBackends?: () => NarBackend[]
  /** @default { host: '127.0.0.1', port: 0 } */
  listen?: { host: string; port: number }
  /** Sockets listening on that one address (SO_REUSEPORT), so that a burst of connections is accepted sooner. @default DEFAULT_LISTEN_SOCKETS */
  listenSockets?: number
  /** NARs at or below this many bytes are verified whole before the first byte goes out. @default 8 MiB */
  verifyFirstBelow?: number
  /** The `Priority` in nix-cache-info. @default 30 */
  priority?: number
  /** How long a narinfo that was found (and verified) is served from memory; 0 turns that off. @default 1 hour */
  narInfoTtlMs?: number
  /** A narinfo lookup that no upstream finishes within this long answers 504, so Nix never waits on a hung cache. @default 10000 */
  narInfoTimeoutMs?: number
  /** Passed to `resolveNar`, and bounds passthrough bodies the same way. @default its own (30 s) */
  stallTimeoutMs?: number
  /** Passed to `resolveNar`: a source slower than this over `stallTimeoutMs` fails over (a passthrough body is cut). @default its own (1 KiB/s) */
  minBytesPerSecond?: number
  /** `--client-timeout`: a client whose socket does not drain for this long is cut; Infinity turns it off. @default 300 s */
  clientTimeoutMs?: number
  /** A file with no FileSize and no narinfo NarSize is cut here. @default core's DEFAULT_MAX_NAR_BYTES (64 GiB) */
  maxNarBytes?: number
  /** `--memory-budget`: verify-first buffering across all requests stays under this many bytes. @default 256 MiB */
  memoryBudget?: number
  /** Where downloads are spooled. @default `narrace-spool-<pid>` under the temp dir, removed on close */
  spoolDir?: string
  /** `--max-connections`: downloads open at once to each upstream; the rest queue. @default 25 */
  maxConnections?: number
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
  /**
   * `--shutdown-grace`: stops accepting connections, lets the requests in flight finish for up to
   * `graceMs`, then closes (aborting what is left).
   */
  shutdown(graceMs: number): Promise<void>
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
  // One backend per upstream, for NARs, narinfo and every other file: its connections, credentials (to
  // its own origin only), origin checks and circuit breaker are shared by all of them.
  const upstreams = new Map<string, HttpBackend>(
    options.upstreams.map((upstream) => {
      const given = typeof upstream === 'string' ? { url: upstream } : upstream
      return [given.url, httpBackend({ name: given.url, connections: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS, ...given })]
    }),
  )
  const upstreamUrls = [...upstreams.keys()]
  // narrace_upstream_up follows each upstream's circuit breaker; it keeps no timer, so read it at scrape time.
  metrics.upstreamUp(() => [...upstreams].map(([url, backend]) => [url, backend.health.isUp()] as [string, boolean]))
  const trustedKeys = options.trustedPublicKeys?.length ? options.trustedPublicKeys : undefined
  const narInfoTimeoutMs = options.narInfoTimeoutMs ?? DEFAULT_NARINFO_TIMEOUT_MS
  const names: UpstreamNames = {
    index,
    async narInfo(upstream, hashPart, signal) {
      const found = await resolveNarInfo(hashPart, {
        caches: [upstreams.get(upstream)!],
        trustedKeys,
        signal: AbortSignal.any([signal, AbortSignal.timeout(narInfoTimeoutMs)]),
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
  // One pacer for every response body, NAR or pass-through: together they never hold a turn for long.
  const bodies = new TurnPacer(DEFAULT_TURN_BYTES)
  const clientTimeoutMs = options.clientTimeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS
  if (!(clientTimeoutMs > 0)) throw new RangeError(`clientTimeoutMs must be above 0 (Infinity turns it off), not ${clientTimeoutMs}`)
  const passthrough = {
    upstreams: [...upstreams.values()].map((backend) => ({ url: backend.url, dispatcher: upstreamDispatcher(backend) })),
    maxBytes: options.maxPassthroughBytes,
    stallTimeoutMs: options.stallTimeoutMs,
    minBytesPerSecond: options.minBytesPerSecond,
    logger,
    counter: passthroughCounter(metrics.registry),
    pacer: bodies,
    clientTimeoutMs,
  }
  const cacheInfo = upstreamCacheInfo({
    upstreams: upstreamUrls,
    retryMs: options.cacheInfoRetryMs,
    fetch: (upstream, signal) => fetchCacheInfo(upstreams.get(upstream)!, { signal }),
    onError: (upstream, error) => logger.warn({ upstream, err: error }, 'nix-cache-info not read'),
  })
  const verifyFirstBelow = options.verifyFirstBelow ?? DEFAULT_VERIFY_FIRST_BELOW
  const priority = options.priority ?? DEFAULT_PRIORITY
  const listenAt = options.listen ?? { host: '127.0.0.1', port: 0 }
  let extraListeners: ExtraListeners | undefined
  const inFlight = new Set<AbortController>()
  /** Aborts what no single request owns (a narinfo lookup shared by several) when the proxy closes. */
  const shutdown = new AbortController()
  let url: string | undefined
  let closing: Promise<void> | undefined

  /** Called whenever a request leaves `inFlight`; shutdown() waits on it for the set to empty. */
  let onSettled: (() => void) | undefined
  const settle = (controller: AbortController): void => {
    if (inFlight.delete(controller) && inFlight.size === 0) onSettled?.()
  }
  const requestSignal: RequestSignal = (res) => {
    const controller = new AbortController()
    inFlight.add(controller)
    const onClose = (): void => {
      if (!res.writableFinished) controller.abort(new Error('the client disconnected'))
      settle(controller)
    }
    res.once('close', onClose)
    return { signal: controller.signal, done: () => settle(controller) }
  }
  const { lookupNarInfo, cachedNarInfo, serveNarInfo } = createNarInfoRoute({
    upstreams: [...upstreams.values()],
    trustedKeys,
    metrics,
    logger,
    requestSignal,
    learn: (served) => names.learn(served),
    store: options.store,
    narInfoTimeoutMs,
    narInfoTtlMs: options.narInfoTtlMs ?? DEFAULT_NARINFO_TTL_MS,
    shutdown: shutdown.signal,
  })
  // A spool folder of its own is removed on close; one the caller gave is the caller's.
  const spoolDir = options.spoolDir ?? spoolDirectory()
  const dynamicBackends = options.dynamicBackends
  const narRoute = createNarRoute({
    index,
    metrics,
    logger,
    get backends() {
      return dynamicBackends ? [...backends, ...dynamicBackends()] : backends
    },
    upstreamBackends,
    upstreams,
    store: options.store,
    peerMappings: options.peerMappings,
    lookupNarInfo,
    cachedNarInfo,
    requestSignal,
    narInfoTimeoutMs,
    verifyFirstBelow,
    memoryBudget: options.memoryBudget ?? DEFAULT_MEMORY_BUDGET,
    spoolDir,
    stallTimeoutMs: options.stallTimeoutMs,
    minBytesPerSecond: options.minBytesPerSecond,
    maxNarBytes: options.maxNarBytes,
    pacer: bodies,
    clientTimeoutMs,
  })


  // Node looks for connections past their head timeout only every connectionsCheckingInterval (30 s by
  // default): a slowloris head would live up to 40 s, not 10. Once a second the bound is what it says.
  const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES, headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 1000 }, (req, res) => {
    narRoute.trim.touch()
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

  // One pacer for the requests that do work: the cheap ones below answer at once, whatever the load.
  const starts = new TurnPacer(REQUEST_STARTS_PER_TURN, MAX_ACCEPT_TURNS)
  // Accepting comes first: a connection may be a cheap request, and the next one is accepted only next turn.
  server.on('connection', () => starts.yieldTurn())

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const route: Route = routeRequest(req.method, req.url)
    const head = req.method === 'HEAD'
    if (!CHEAP_ROUTES.has(route.kind)) await starts.take(1)
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
        await narRoute.serve(route, res, head)
        return
      case 'mapping':
        serveMapping(index, route.fileHash, res, head)
        return
      case 'mappings': {
        const { signal, done } = requestSignal(res)
        try {
          await serveMappingsSince(index, route.since, res, head, signal, { pacer: bodies, clientTimeoutMs })
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

  return {
    server,
    metrics,
    get url(): string {
      if (url === undefined) throw new Error('the proxy is not listening')
      return url
    },
    async listen(): Promise<string> {
      await cacheInfo.start()
      extraListeners = await listenOn(server, listenAt.host, listenAt.port, options.listenSockets ?? DEFAULT_LISTEN_SOCKETS)
      const address = server.address() as AddressInfo
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
      url = `http://${host}:${address.port}`
      return url
    },
    async shutdown(graceMs: number): Promise<void> {
      // No new connections; idle keep-alive ones go now, busy ones once their answer is out.
      server.close()
      void extraListeners?.close()
      server.closeIdleConnections()
      const idle = setInterval(() => server.closeIdleConnections(), 100)
      try {
        if (inFlight.size > 0) {
          let timer: NodeJS.Timeout | undefined
          await Promise.race([
            new Promise<void>((resolve) => (onSettled = resolve)),
            new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs))),
          ])
          clearTimeout(timer)
        }
      } finally {
        clearInterval(idle)
        onSettled = undefined
      }
      if (inFlight.size > 0) logger.warn({ aborted: inFlight.size }, 'shutdown grace over: aborting the downloads left')
      await this.close()
    },
    close(): Promise<void> {
      closing ??= (async () => {
        cacheInfo.close()
        shutdown.abort(new Error('the proxy is closing'))
        for (const controller of inFlight) controller.abort(new Error('the proxy is closing'))
        narRoute.downloads.abortAll(new Error('the proxy is closing'))
        const closed = server.listening ? once(server, 'close') : Promise.resolve()
        if (server.listening) server.close()
        const extrasClosed = extraListeners?.close()
        server.closeAllConnections()
        await closed
        await extrasClosed
        await Promise.all([...upstreams.values()].map((backend) => backend.close()))
        if (options.spoolDir === undefined) await rm(spoolDir, { recursive: true, force: true })
        if (ownIndex) index.close()
      })()
      return closing
    },
  }
}
