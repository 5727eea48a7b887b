import { once } from 'node:events'
import type { Server } from 'node:http'
import { createServer, type AddressInfo, type Server as NetServer } from 'node:net'

/**
 * Listening sockets the proxy binds to its one address. libuv accepts one connection per listening socket
 * per turn of the event loop (libuv#3696), so a burst of connections waits in the kernel's queue for one
 * turn each, and every other piece of work in those turns (parsing the requests already in, a download's
 * data, a collection) is paid again before each accept. With several sockets on the port (SO_REUSEPORT,
 * where the kernel spreads connections among them), a turn accepts one from each. 500 clients at once on
 * two cores, slowest `/nix-cache-info` over a new connection, twelve interleaved runs each: one socket
 * 37-361 ms (median about 110), eight 21-91 ms (median about 45); four and 32 did about as well as eight.
 * @default 8 on Linux, 1 elsewhere
 */
export const DEFAULT_LISTEN_SOCKETS = process.platform === 'linux' ? 8 : 1

/** The listening sockets beside the HTTP server's own. */
export interface ExtraListeners {
  /** Stops them accepting at once; resolves once the connections they accepted are closed too. */
  close(): Promise<void>
}

/**
 * Starts `server` listening on `host:port`, with `count - 1` more sockets on the same address whose
 * connections go to `server` as its own do. Never joins sockets someone else already has on a fixed port:
 * a plain listen there first fails with EADDRINUSE as it would without the extra sockets (SO_REUSEPORT
 * would let a second proxy on that port share the connections unnoticed), and a later plain listen fails
 * against this group (a program of the same user that sets SO_REUSEPORT itself could still join it; the
 * kernel lets no other user). Port 0 never picks a port another group holds.
 */
export async function listenOn(server: Server, host: string, port: number, count: number): Promise<ExtraListeners> {
  if (count <= 1) {
    await listening(server, { host, port })
    return { close: async () => {} }
  }
  if (port !== 0) {
    const probe = createServer()
    await listening(probe, { host, port })
    await new Promise<void>((resolve) => probe.close(() => resolve()))
  }
  await listening(server, { host, port, reusePort: true })
  const bound = server.address() as AddressInfo
  const extras: NetServer[] = []
  try {
    for (let i = 1; i < count; i++) {
      const extra = feeding(server)
      await listening(extra, { host: bound.address, port: bound.port, reusePort: true })
      extras.push(extra)
    }
  } catch {
    // A platform without SO_REUSEPORT for this address: the sockets bound so far (at least the server's own) serve.
  }
  let closing: Promise<void> | undefined
  return {
    close() {
      closing ??= Promise.all(extras.map((extra) => new Promise<void>((resolve) => extra.close(() => resolve())))).then(() => {})
      return closing
    },
  }
}

/**
 * A listening socket, not yet bound, whose connections go to `server` as its own do. It is set up as
 * the HTTP server's own socket is: Node's defaults for an HTTP server.
 */
export function feeding(server: Server): NetServer {
  return createServer({ allowHalfOpen: true, noDelay: true }, (socket) => server.emit('connection', socket))
}

async function listening(server: NetServer, options: { host: string; port: number; reusePort?: boolean }): Promise<void> {
  server.listen(options)
  await once(server, 'listening')
}
