import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { encodeNix32 } from '@narrace/core'
import { createHash } from 'node:crypto'
import { answerParent, spawnRpc } from './child.js'
import { makeNar } from './data.js'

/** Behaviour of a bench binary cache that scenarios switch at run time. */
export interface CacheBehaviour {
  /** Answer every `Range` request with the whole file (200), as a cache without range support does. */
  noRange?: boolean
  /** Wait this long before sending the response headers. */
  delayMs?: number
}

/** A NAR the server holds. */
export interface ServedNar {
  /** `sha256:<nix32>`: the FileHash. */
  hash: string
  size: number
  /** `nar/<nix32>.nar.xz`, relative to the cache. */
  url: string
}

/** A minimal Nix binary cache over HTTP/1.1 with keep-alive and `Range: bytes=N-` or `bytes=N-M`. */
export interface NarServer {
  readonly url: string
  add(size: number, seed: number): Promise<ServedNar>
  addNarInfo(hashPart: string, text: string): Promise<void>
  set(behaviour: CacheBehaviour): Promise<void>
  close(): Promise<void>
}

/** Starts a binary cache in this process. */
export async function startNarServer(behaviour: CacheBehaviour = {}): Promise<NarServer> {
  const nars = new Map<string, Buffer>()
  const narinfos = new Map<string, string>()
  let current = { ...behaviour }
  const server = createServer((req, res) => {
    const delay = current.delayMs ?? 0
    if (delay > 0) {
      const timer = setTimeout(() => serve(req, res), delay)
      res.once('close', () => clearTimeout(timer))
    } else serve(req, res)
  })
  server.keepAliveTimeout = 60_000

  function serve(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0]!
    if (path === '/nix-cache-info') {
      res.end('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n')
      return
    }
    const info = /^\/([0-9a-z]{32})\.narinfo$/.exec(path)
    if (info) {
      const text = narinfos.get(info[1]!)
      res.statusCode = text === undefined ? 404 : 200
      res.setHeader('content-type', 'text/x-nix-narinfo')
      res.end(text ?? '')
      return
    }
    const nar = /^\/nar\/([0-9a-z]{52})\.nar(?:\.xz)?$/.exec(path)
    const body = nar ? nars.get(nar[1]!) : undefined
    if (!body) {
      res.statusCode = 404
      res.end()
      return
    }
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
    const start = range && !current.noRange ? Number(range[1]) : 0
    // The last byte asked for is inclusive; a range past the end stops at it.
    const stop = range && !current.noRange && range[2] ? Math.min(body.length, Number(range[2]) + 1) : body.length
    if ((start >= body.length && start > 0) || stop <= start) {
      res.statusCode = 416
      res.end()
      return
    }
    res.statusCode = range && !current.noRange ? 206 : 200
    res.setHeader('content-type', 'application/x-nix-nar')
    res.setHeader('content-length', stop - start)
    if (!current.noRange) res.setHeader('accept-ranges', 'bytes')
    if (res.statusCode === 206) res.setHeader('content-range', `bytes ${start}-${stop - 1}/${body.length}`)
    if (req.method === 'HEAD') {
      res.end()
      return
    }
    // Slices of 1 MiB let backpressure work without copying the file.
    let offset = start
    const pump = (): void => {
      while (offset < stop) {
        const end = Math.min(stop, offset + 1024 * 1024)
        const more = res.write(body.subarray(offset, end))
        offset = end
        if (!more) {
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  }

  server.listen({ host: '127.0.0.1', port: 0 })
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`,
    async add(size, seed) {
      const body = makeNar(size, seed)
      const nix32 = encodeNix32(createHash('sha256').update(body).digest())
      nars.set(nix32, body)
      return { hash: `sha256:${nix32}`, size, url: `nar/${nix32}.nar.xz` }
    },
    async addNarInfo(hashPart, text) {
      narinfos.set(hashPart, text)
    },
    async set(next) {
      current = { ...next }
    },
    async close() {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

type Request =
  | { id: number; op: 'add'; size: number; seed: number }
  | { id: number; op: 'narinfo'; hashPart: string; text: string }
  | { id: number; op: 'set'; behaviour: CacheBehaviour }

/** A request before it gets its id; distributes over the union. */
type Call<T = Request> = T extends unknown ? Omit<T, 'id'> : never

/**
 * Starts a binary cache in a child process, so that serving does not share the client's event loop:
 * on 2 cores, the server gets one and narrace the other.
 */
export async function spawnNarServer(behaviour: CacheBehaviour = {}): Promise<NarServer> {
  const child = await spawnRpc<Call>('server-main', [JSON.stringify(behaviour)])
  return {
    url: child.ready as string,
    add: (size, seed) => child.call<ServedNar>({ op: 'add', size, seed }),
    addNarInfo: (hashPart, text) => child.call<void>({ op: 'narinfo', hashPart, text }),
    set: (next) => child.call<void>({ op: 'set', behaviour: next }),
    close: () => child.close(),
  }
}

/** The body of the child process started by {@link spawnNarServer}. */
export async function serveFromChild(): Promise<void> {
  const server = await startNarServer(JSON.parse(process.argv[2] ?? '{}') as CacheBehaviour)
  answerParent<Request>(
    server.url,
    async (request) => {
      if (request.op === 'add') return server.add(request.size, request.seed)
      if (request.op === 'narinfo') return server.addNarInfo(request.hashPart, request.text)
      return server.set(request.behaviour)
    },
    () => server.close(),
  )
}
