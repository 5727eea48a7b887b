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
import { pino, type Logger } from 'pino'
import { Agent } from 'undici'
import { DEFAULT_PRIORITY, DEFAULT_VERIFY_FIRST_BELOW } from './args.js'
import { ProxyMetrics, type NarOutcome } from './metrics.js'
import { routeRequest, type Route } from './routes.js'

/** A narinfo lookup that no upstream finishes within this long answers 504. */
export const DEFAULT_NARINFO_TIMEOUT_MS = 10_000
/** Largest request head accepted; larger ones get a 400 before routing. */
export const MAX_HEADER_BYTES = 16 * 1024
/** narinfo URLs remembered for caches whose NAR file names are not the FileHash. */
const MAX_REMEMBERED_URLS = 100_000
/** narinfo answers kept in memory: Nix asks for the same one several times in a single `nix copy`. */
const MAX_CACHED_NARINFO = 10_000
/** How long a narinfo that was found is served from memory. @default one hour */
export const DEFAULT_NARINFO_TTL_MS = 60 * 60 * 1000

export interface ProxyOptions {
  /** The HTTP binary caches to race, for narinfo and NARs. */
  upstreams: string[]
  /** Serve only narinfo signed by one of these `name:base64` keys. @default [] (not checked) */
  trustedPublicKeys?: string[]
  /** Where narinfo FileHash, FileSize and URL are remembered, and p2p mappings read. @default openIndex() in memory */
  index?: NarIndex
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
async function* holdLast(stream: NarStream): AsyncGenerator<Uint8Array> {
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
  const upstreams: HttpBackend[] = options.upstreams.map((url) => httpBackend({ url, name: url }))
  const backends: NarBackend[] = [...upstreams, ...(options.backends ?? [])]
  // narinfo requests go through a pool the proxy owns, so that close() leaves no socket behind.
  const narInfoAgent = new Agent({ connect: { timeout: DEFAULT_CONNECT_TIMEOUT_MS } })
  const trustedKeys = options.trustedPublicKeys?.length ? options.trustedPublicKeys : undefined
  const verifyFirstBelow = options.verifyFirstBelow ?? DEFAULT_VERIFY_FIRST_BELOW
  const cacheInfo = `StoreDir: /nix/store\nWantMassQuery: 1\nPriority: ${options.priority ?? DEFAULT_PRIORITY}\n`
  const listenOn = options.listen ?? { host: '127.0.0.1', port: 0 }
  /** narinfo URL → FileHash, for URLs that don't name the FileHash themselves. */
  const urls = new Map<string, NarHash>()
  /** Found narinfo by hash part; a miss is never cached, since the path may be pushed upstream any time. */
  const narInfos = new Map<string, { text: string; expires: number }>()
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
        sendText(res, head, 200, cacheInfo, 'text/x-nix-cache-info')
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
    }
  }

  /** Records what the NAR route needs later; a narinfo the index refuses is still served. */
  function remember(narInfo: { storePath: string; url: string; fileHash?: string; fileSize?: number }): void {
    if (narInfo.fileHash === undefined) return
    try {
      const fileHash = parseNarHash(narInfo.fileHash)
      const location: Parameters<NarIndex['put']>[0] = { fileHash: fileHash.toString(), url: narInfo.url, storePath: narInfo.storePath }
      if (narInfo.fileSize !== undefined) location.size = narInfo.fileSize
      index.put(location)
      urls.delete(narInfo.url)
      urls.set(narInfo.url, fileHash)
      if (urls.size > MAX_REMEMBERED_URLS) urls.delete(urls.keys().next().value!)
    } catch (error) {
      logger.warn({ storePath: narInfo.storePath, err: error }, 'narinfo not remembered')
    }
  }

  async function serveNarInfo(hashPart: string, res: ServerResponse, head: boolean): Promise<void> {
    const cached = narInfos.get(hashPart)
    if (cached && cached.expires > performance.now()) {
      metrics.narinfoRequests.inc({ outcome: 'cached' })
      sendText(res, head, 200, cached.text, NARINFO_TYPE)
      return
    }
    const { signal, done } = requestSignal(res)
    const timeout = AbortSignal.timeout(options.narInfoTimeoutMs ?? DEFAULT_NARINFO_TIMEOUT_MS)
    try {
      const found = await resolveNarInfo(hashPart, {
        caches: options.upstreams,
        trustedKeys,
        signal: AbortSignal.any([signal, timeout]),
        dispatcher: narInfoAgent,
      })
      remember(found.narInfo)
      if (narInfoTtlMs > 0) {
        narInfos.delete(hashPart)
        narInfos.set(hashPart, { text: found.text, expires: performance.now() + narInfoTtlMs })
        if (narInfos.size > MAX_CACHED_NARINFO) narInfos.delete(narInfos.keys().next().value!)
      }
      metrics.narinfoRequests.inc({ outcome: 'ok' })
      sendText(res, head, 200, found.text, NARINFO_TYPE)
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

  async function serveNar(route: Extract<Route, { kind: 'nar' }>, res: ServerResponse, head: boolean): Promise<void> {
    let hash = urls.get(route.path)
    if (!hash) {
      // Without a remembered narinfo, only a file named by its FileHash can be fetched.
      if (route.name.length !== 52) {
        sendText(res, head, 404, 'unknown NAR\n')
        return
      }
      try {
        hash = parseNarHash(route.name)
      } catch (error) {
        metrics.rejected.inc({ status: '400' })
        sendText(res, head, 400, `${message(error)}\n`)
        return
      }
    }
    const location = index.get(hash)
    const tracker = metrics.track()
    const { signal, done } = requestSignal(res)
    const started = performance.now()
    let stream: NarStream | undefined
    let outcome: NarOutcome = 'ok'
    let failure: unknown
    try {
      stream = await resolveNar(hash, {
        backends,
        signal,
        size: location?.size,
        url: location?.url ?? route.path,
        // HEAD sends no body, so the first byte of a copy is enough to answer; no need to fetch it whole.
        verifyFirstBelow: head ? 0 : verifyFirstBelow,
        stallTimeoutMs: options.stallTimeoutMs,
        onEvent: tracker.onEvent,
      })
    } catch (error) {
      failure = error
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
          await pipeline(Readable.from(holdLast(stream), { objectMode: false }), res)
        }
      } catch (error) {
        failure = error
        // A late failure must reach Nix as a broken transfer: cut the connection, never end it cleanly.
        res.destroy()
        // Cutting the connection fires the request signal too, so the error's type decides, not the signal.
        if (error instanceof NarHashMismatchError) {
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
      server.listen(listenOn.port, listenOn.host)
      await once(server, 'listening')
      const address = server.address() as AddressInfo
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
      url = `http://${host}:${address.port}`
      return url
    },
    close(): Promise<void> {
      closing ??= (async () => {
        for (const controller of inFlight) controller.abort(new Error('the proxy is closing'))
        const closed = server.listening ? once(server, 'close') : Promise.resolve()
        server.close()
        server.closeAllConnections()
        await closed
        await Promise.all([...upstreams.map((backend) => backend.close()), narInfoAgent.destroy()])
        if (ownIndex) index.close()
      })()
      return closing
    },
  }
}
