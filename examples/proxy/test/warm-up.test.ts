import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { warmUp } from '../src/warm-up.js'

describe('warmUp', () => {
  const servers: Server[] = []
  afterEach(() => {
    for (const server of servers.splice(0)) server.closeAllConnections()
  })

  function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): { server: Server; open: () => number } {
    const server = createServer(handler)
    servers.push(server)
    const sockets = new Set<Socket>()
    server.on('connection', (socket: Socket) => {
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
    })
    return { server, open: () => sockets.size }
  }

  it("sends /healthz through the server's own handler over a loopback socket of its own, never the server's address", async () => {
    const paths: string[] = []
    const locals = new Set<number>()
    // The server listens nowhere: every request has to come through the warm-up's own listener.
    const { server, open } = serve((req, res) => {
      paths.push(`${req.method} ${req.url}`)
      locals.add(req.socket.localPort!)
      res.end('ok\n')
    })
    expect(await warmUp(server, { requests: 40 })).toBe(40)
    expect(paths).toEqual(Array(40).fill('GET /healthz'))
    expect(locals.size).toBe(1)
    expect(server.listening).toBe(false)
    // Every connection it made is closed once it resolves; the server sees the last of them go at once.
    await new Promise((resolve) => setImmediate(resolve))
    await expect.poll(open, { timeout: 1000 }).toBe(0)
  })

  it('holds every connection open until all are answered, as a burst of clients does', async () => {
    let most = 0
    const { server, open } = serve((_req, res) => {
      most = Math.max(most, open())
      res.end('ok\n')
    })
    expect(await warmUp(server, { requests: 30 })).toBe(30)
    // Answered at once, yet none went before the last came.
    expect(most).toBe(30)
  })

  it('gives up after timeoutMs when the server never answers, and leaves no connection behind', async () => {
    const { server, open } = serve(() => {})
    const started = performance.now()
    expect(await warmUp(server, { requests: 20, timeoutMs: 300 })).toBe(0)
    expect(performance.now() - started).toBeLessThan(2000)
    await expect.poll(open, { timeout: 1000 }).toBe(0)
  })

  it('stops at once when its signal aborts, and counts only 200 answers', async () => {
    const { server } = serve((_req, res) => {
      res.statusCode = 503
      res.end()
    })
    expect(await warmUp(server, { requests: 10 })).toBe(0)
    const controller = new AbortController()
    controller.abort()
    expect(await warmUp(serve(() => {}).server, { requests: 10, signal: controller.signal })).toBe(0)
  })

  it('does nothing for zero requests', async () => {
    const { server } = serve(() => {
      throw new Error('no request expected')
    })
    expect(await warmUp(server, { requests: 0 })).toBe(0)
  })
})
