import { once } from 'node:events'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { join, normalize, sep } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

/** Faults a cache server injects into its answers. Every field is off when absent. */
export interface CacheFaults {
  /** Wait this long before sending the status line and headers. */
  firstByteDelayMs?: number
  /** Send the body at this many bytes per second. */
  bytesPerSecond?: number
  /** Destroy the socket after this many body bytes (the headers still announce the full length). */
  cutAfter?: number
  /** Send this many body bytes, then hang with the connection open until the client or `close()` ends it. */
  hangAfter?: number
  /** Flip every bit of the byte at this file offset, wherever a response covers it. */
  flipByteAt?: number
  /** Answer with this status and a short text body (404, 500, 403, 410; 302 with a `location` header). */
  status?: number
  /** Ignore `Range` and answer 200 with the whole file. */
  noRange?: boolean
  /** Serve these bytes instead of the file (a lying narinfo, garbage). Range still applies. */
  body?: string | Uint8Array
  /** Extra response headers: a `content-encoding` for a compressed `body`, a `location` for a redirect. */
  headers?: Record<string, string>
}

/** One request as the server saw it. */
export interface CacheRequest {
  method: string
  /** The URL path, with the prefix and query. */
  path: string
  /** The `Range` header, if any. */
  range: string | undefined
  /** The status sent, or the one set when the client went away first. */
  status: number
  headers: IncomingHttpHeaders
  /** Undefined while in flight; then whether the whole response went out (false: cut, or the client left). */
  completed: boolean | undefined
}

/** Where a fault applies: a path relative to the cache root (`nar/x.nar.xz`, leading slash optional) or a pattern. */
export type FaultTarget = string | RegExp

export interface CacheServerOptions {
  /** The binary-cache directory to serve: nix-cache-info, *.narinfo, nar/*. */
  root: string
  /** Faults for every path from the start. */
  faults?: CacheFaults
  /** A path prefix such as `/cache/`, for caches that do not live at the root. @default '/' */
  prefix?: string
}

export interface CacheServer {
  /** The cache URL, with the prefix and a trailing slash. */
  url: string
  port: number
  /** Every request so far, in arrival order. Clear it with `requests.length = 0`. */
  requests: CacheRequest[]
  /** The most requests waiting at once for their answer to start, since the start or `resetMaxInFlight()`. */
  readonly maxInFlight: number
  resetMaxInFlight(): void
  /** Sets the faults for every path (no target) or for one target, replacing what that target had. */
  setFaults(faults: CacheFaults, target?: FaultTarget): void
  /** Drops every fault, global and per path. */
  clearFaults(): void
  /** Stops listening and destroys every open connection, hanging ones included. */
  close(): Promise<void>
}

const CONTENT_TYPES: [RegExp, string][] = [
  [/\.narinfo$/, 'text/x-nix-narinfo'],
  [/^nix-cache-info$/, 'text/x-nix-cache-info'],
  [/\.nar(\.\w+)?$/, 'application/x-nix-nar'],
]

/** The largest piece written at once under a rate limit, so that the pace is even. */
const RATE_TICKS_PER_SECOND = 20

/**
 * Starts a real node:http server on 127.0.0.1 (port 0) that serves a binary-cache directory the way
 * nix-serve or a static file server does: GET and HEAD, `Range: bytes=a-` / `a-b` / `-n` answered with 206,
 * and faults that a test switches at runtime, for every path or per path. A per-path fault replaces
 * the global one field by field. Every request is logged in `requests`.
 */
export async function startCacheServer(options: CacheServerOptions): Promise<CacheServer> {
  const root = normalize(options.root)
  const prefix = `/${(options.prefix ?? '/').replace(/^\/+|\/+$/g, '')}/`.replace(/^\/\/$/, '/')
  let global: CacheFaults = { ...options.faults }
  let targeted: { target: FaultTarget; faults: CacheFaults }[] = []
  const requests: CacheRequest[] = []
  const sockets = new Set<Socket>()
  let inFlight = 0
  let maxInFlight = 0

  const faultsFor = (path: string): CacheFaults => {
    let faults = { ...global }
    for (const t of targeted) {
      const hit = typeof t.target === 'string' ? t.target === path : t.target.test(path)
      if (hit) faults = { ...faults, ...t.faults }
    }
    return faults
  }

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const entry: CacheRequest = {
      method: req.method ?? '',
      path: url.pathname + url.search,
      range: req.headers.range,
      status: 0,
      headers: req.headers,
      completed: undefined,
    }
    requests.push(entry)
    maxInFlight = Math.max(maxInFlight, ++inFlight)
    // Counted out when the answer starts: a client can't be done with a request the server hasn't
    // answered yet, so a client that keeps N requests in flight is never seen with more.
    let waiting = true
    const answering = (): void => {
      if (waiting) inFlight--
      waiting = false
    }
    res.on('close', () => {
      answering()
      if (entry.status === 0) entry.status = res.statusCode
      entry.completed = res.writableFinished
    })
    const plain = (status: number, text: string, headers?: Record<string, string>): void => {
      entry.status = status
      res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text), ...headers })
      res.end(req.method === 'HEAD' ? undefined : text)
    }

    const relative = url.pathname.startsWith(prefix) ? decodeURIComponent(url.pathname.slice(prefix.length)) : undefined
    const faults = relative === undefined ? global : faultsFor(relative)
    if (faults.firstByteDelayMs) {
      const gone = new AbortController()
      res.once('close', () => gone.abort())
      const waited = await sleep(faults.firstByteDelayMs, true, { signal: gone.signal }).catch(() => false)
      if (!waited) return
    }
    answering()
    if (req.method !== 'GET' && req.method !== 'HEAD') return plain(405, 'method not allowed\n')
    if (faults.status !== undefined) return plain(faults.status, `status ${faults.status} by request\n`, faults.headers)
    if (relative === undefined) return plain(404, 'not found\n')

    if (faults.body !== undefined) {
      const bytes = typeof faults.body === 'string' ? Buffer.from(faults.body) : faults.body
      return send(req, res, entry, faults, bytes.length, (start, end) => [bytes.subarray(start, end)], relative)
    }
    const file = normalize(join(root, relative))
    if (!file.startsWith(root + sep)) return plain(404, 'not found\n')
    const info = await stat(file).catch(() => undefined)
    if (!info?.isFile()) return plain(404, 'not found\n')
    return send(req, res, entry, faults, info.size, (start, end) => createReadStream(file, { start, end: end - 1 }), relative)
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain' })
        res.end(`${String(error)}\n`)
      } else {
        res.destroy()
      }
    })
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port

  return {
    url: `http://127.0.0.1:${port}${prefix}`,
    port,
    requests,
    get maxInFlight() {
      return maxInFlight
    },
    resetMaxInFlight() {
      maxInFlight = inFlight
    },
    setFaults(faults, target) {
      if (target === undefined) {
        global = { ...faults }
        return
      }
      const key = typeof target === 'string' ? target.replace(/^\/+/, '') : target
      targeted = targeted.filter((t) => String(t.target) !== String(key))
      targeted.push({ target: key, faults: { ...faults } })
    },
    clearFaults() {
      global = {}
      targeted = []
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      server.closeAllConnections()
      for (const socket of sockets) socket.destroy()
      await closed
    },
  }
}

/** Parses a single `bytes=` range against `size`; undefined means "serve it all", null "unsatisfiable". */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | undefined | null {
  if (!header) return undefined
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (!m || (m[1] === '' && m[2] === '')) return undefined
  if (m[1] === '') {
    const n = Math.min(Number(m[2]), size)
    return n === 0 ? null : { start: size - n, end: size }
  }
  const start = Number(m[1])
  const end = m[2] === '' ? size : Math.min(Number(m[2]) + 1, size)
  return start >= size || end <= start ? null : { start, end }
}

async function send(
  req: IncomingMessage,
  res: ServerResponse,
  entry: CacheRequest,
  faults: CacheFaults,
  size: number,
  open: (start: number, end: number) => AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  relative: string,
): Promise<void> {
  const range = faults.noRange ? undefined : parseRange(req.headers.range, size)
  const type = CONTENT_TYPES.find(([re]) => re.test(relative))?.[1] ?? 'application/octet-stream'
  if (range === null) {
    entry.status = 416
    res.writeHead(416, { 'content-range': `bytes */${size}`, 'content-length': 0 })
    res.end()
    return
  }
  const start = range?.start ?? 0
  const end = range?.end ?? size
  const headers: Record<string, string | number> = {
    'content-type': type,
    'content-length': end - start,
    'accept-ranges': faults.noRange ? 'none' : 'bytes',
    ...faults.headers,
  }
  if (range) headers['content-range'] = `bytes ${start}-${end - 1}/${size}`
  entry.status = range ? 206 : 200
  res.writeHead(entry.status, headers)
  if (req.method === 'HEAD' || end === start) {
    res.end()
    return
  }

  let sent = 0
  const limit = Math.min(faults.cutAfter ?? Infinity, faults.hangAfter ?? Infinity)
  const piece = faults.bytesPerSecond ? Math.max(1, Math.floor(faults.bytesPerSecond / RATE_TICKS_PER_SECOND)) : Infinity
  const gone = new AbortController()
  const closed = new Promise<void>((resolve) => res.once('close', resolve)).then(() => gone.abort())
  const write = async (chunk: Uint8Array): Promise<void> => {
    if (!res.write(chunk)) await Promise.race([once(res, 'drain'), closed])
  }

  for await (const data of open(start, end)) {
    let chunk: Uint8Array = data
    if (faults.flipByteAt !== undefined) {
      const at = faults.flipByteAt - (start + sent)
      if (at >= 0 && at < chunk.length) {
        chunk = Uint8Array.from(chunk)
        chunk[at]! ^= 0xff
      }
    }
    while (chunk.length > 0 && sent < limit) {
      if (res.destroyed) return
      const n = Math.min(chunk.length, piece, limit - sent)
      await write(chunk.subarray(0, n))
      sent += n
      chunk = chunk.subarray(n)
      if (faults.bytesPerSecond) {
        const waited = await sleep((n / faults.bytesPerSecond) * 1000, true, { signal: gone.signal }).catch(() => false)
        if (!waited) return
      }
    }
    if (sent >= limit) break
  }
  if (res.destroyed) return
  if (sent >= (faults.cutAfter ?? Infinity)) {
    // Let the bytes already written leave before the reset, so the client sees a cut mid-body.
    const socket = res.socket
    if (socket) await new Promise<void>((resolve) => socket.write('', () => resolve()))
    socket?.destroy()
    return
  }
  if (sent >= (faults.hangAfter ?? Infinity)) {
    await closed
    return
  }
  res.end()
}

/** Reserves a free port on 127.0.0.1 and closes it again: connecting to it is refused. */
export async function refusedPort(): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

/** A cache URL nobody listens on. */
export async function refusedUrl(): Promise<string> {
  return `http://127.0.0.1:${await refusedPort()}/`
}
