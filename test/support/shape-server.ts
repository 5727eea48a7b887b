import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { parseRange } from './cache-server.js'
import { shapedFiles, type CacheShape, type ShapedFile } from './cache-shapes.js'

/** A file the server holds beyond its shape, with what to answer for it. */
export interface ExtraFile extends ShapedFile {
  headers?: Record<string, string>
  /** Answer this status (a redirect, with a `location` in `headers`) instead of the file. */
  status?: number
  /** Send no Content-Length: the body goes out chunked, its length unknown until it ends. */
  chunked?: boolean
}

/** One request as the shape server saw it. */
export interface ShapeRequest {
  /** Relative to the cache, query string included: `nar/x.nar?hash=y`. */
  target: string
  status: number
  headers: IncomingHttpHeaders
}

export interface ShapeServerOptions {
  /** The cache layout to serve; none serves only `extra`. */
  shape?: CacheShape
  /** The fixture paths it holds. @default SHAPED_PATHS */
  only?: readonly string[]
  /** More files, by target relative to the cache (`log/<drv>`, `<hashpart>.ls`), with their headers. */
  extra?: Record<string, ExtraFile>
  /** A path prefix, such as `/cache/`. @default '/' */
  prefix?: string
  /** Answer 401 to every request whose `authorization` header is not exactly this. */
  authorization?: string
}

export interface ShapeServer {
  /** The cache URL, with the prefix and a trailing slash. */
  url: string
  requests: ShapeRequest[]
  /** The targets the server has files for. */
  readonly targets: string[]
  /** The file served at `target` (with its headers), or undefined. */
  file(target: string): ExtraFile | undefined
  /** Serves `file` at `target` from now on; undefined removes it. */
  setFile(target: string, file: ExtraFile | undefined): void
  close(): Promise<void>
}

/**
 * A real node:http server on 127.0.0.1 (port 0) that serves a cache of one shape: every file by its exact
 * target, query string included (harmonia, snix), with `Range: bytes=…` answered by 206.
 */
export async function startShapeServer(options: ShapeServerOptions): Promise<ShapeServer> {
  const prefix = `/${(options.prefix ?? '/').replace(/^\/+|\/+$/g, '')}/`.replace(/^\/\/$/, '/')
  const files = new Map<string, ExtraFile>()
  const requests: ShapeRequest[] = []
  const sockets = new Set<Socket>()

  const plain = (res: ServerResponse, entry: ShapeRequest, status: number, text: string): void => {
    entry.status = status
    res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) })
    res.end(res.req.method === 'HEAD' ? undefined : text)
  }

  const server = createServer((req, res) => {
    const raw = req.url ?? '/'
    const target = raw.startsWith(prefix) ? raw.slice(prefix.length) : undefined
    const entry: ShapeRequest = { target: target ?? raw, status: 0, headers: req.headers }
    requests.push(entry)
    if (options.authorization !== undefined && req.headers.authorization !== options.authorization) {
      return plain(res, entry, 401, 'unauthorized\n')
    }
    const file = target === undefined ? undefined : files.get(target)
    if (!file) return plain(res, entry, 404, 'not found\n')
    if (file.status !== undefined) {
      entry.status = file.status
      res.writeHead(file.status, { 'content-length': 0, ...file.headers })
      return res.end()
    }
    const size = file.body.length
    const range = file.chunked ? undefined : parseRange(req.headers.range, size)
    if (range === null) {
      entry.status = 416
      res.writeHead(416, { 'content-range': `bytes */${size}`, 'content-length': 0 })
      return res.end()
    }
    const start = range?.start ?? 0
    const end = range?.end ?? size
    const headers: Record<string, string | number> = {
      'content-type': file.type,
      'content-length': end - start,
      'accept-ranges': 'bytes',
      ...file.headers,
    }
    if (range) headers['content-range'] = `bytes ${start}-${end - 1}/${size}`
    if (file.chunked) delete headers['content-length']
    entry.status = range ? 206 : 200
    res.writeHead(entry.status, headers)
    res.end(req.method === 'HEAD' ? undefined : file.body.subarray(start, end))
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${prefix}`
  if (options.shape) for (const [target, file] of shapedFiles(options.shape, url, options.only)) files.set(target, file)
  for (const [target, file] of Object.entries(options.extra ?? {})) files.set(target, file)

  return {
    url,
    requests,
    get targets() {
      return [...files.keys()]
    },
    file: (target) => files.get(target),
    setFile(target, file) {
      if (file) files.set(target, file)
      else files.delete(target)
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      server.closeAllConnections()
      for (const socket of sockets) socket.destroy()
      await closed
    },
  }
}
