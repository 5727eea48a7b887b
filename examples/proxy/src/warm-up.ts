import { once } from 'node:events'
import type { Server } from 'node:http'
import { readFileSync } from 'node:fs'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { feeding } from './listeners.js'

/**
 * `/healthz` requests the proxy sends itself at start, each over a connection of its own, in waves of
 * {@link WARM_UP_WAVE}. A proxy that just started runs its accept and HTTP paths as cold code, on a
 * young heap that grows through collections while the first clients come in. The first burst of 500
 * clients on one NAR after a start, 2 cores, ten interleaved runs each: slowest `/nix-cache-info` 40-122
 * ms (median 60) without, 22-50 ms (median 42) with. It costs about 0.2-0.35 s at start.
 * @default 512
 */
export const WARM_UP_REQUESTS = 512
/**
 * Connections open at once, each of them two descriptors (both ends are this process's); fewer where the
 * descriptor limit is low, so that clients that come meanwhile are still accepted.
 * @default 256
 */
export const WARM_UP_WAVE = 256
/** The warm-up gives up after this long; the proxy serves either way. @default 3 s */
export const WARM_UP_MS = 3000

const REQUEST = 'GET /healthz HTTP/1.1\r\nHost: warm-up\r\n\r\n'

/**
 * Sends `requests` `/healthz` requests to `server` through a listening socket of its own on 127.0.0.1,
 * whose connections go to `server` as its own do: the proxy never dials the address it was told to
 * listen on, nor any other. Never throws: a warm-up that fails or runs out of time just ends, and the
 * proxy serves as it would have without it. Resolves with the requests answered.
 */
export async function warmUp(server: Server, options: { requests?: number; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<number> {
  const requests = options.requests ?? WARM_UP_REQUESTS
  if (requests <= 0) return 0
  const signal = AbortSignal.any([AbortSignal.timeout(options.timeoutMs ?? WARM_UP_MS), ...(options.signal ? [options.signal] : [])])
  const listener = feeding(server)
  const sockets = new Set<Socket>()
  const stop = (): void => {
    for (const socket of sockets) socket.destroy()
  }
  signal.addEventListener('abort', stop, { once: true })
  let answered = 0
  try {
    listener.listen({ host: '127.0.0.1', port: 0 })
    await once(listener, 'listening', { signal })
    const { port } = listener.address() as AddressInfo
    // Every connection of a wave stays open until all are answered: the heap holds many at once, as in a burst.
    const ask = (): Promise<void> =>
      new Promise((resolve) => {
        if (signal.aborted) return resolve()
        const socket = connect(port, '127.0.0.1')
        sockets.add(socket)
        socket.setEncoding('latin1')
        socket.once('data', (text: string) => {
          if (text.startsWith('HTTP/1.1 200')) answered++
          resolve()
        })
        socket.on('error', () => {})
        socket.once('close', () => {
          sockets.delete(socket)
          resolve()
        })
        socket.write(REQUEST)
      })
    const wave = Math.max(1, Math.min(WARM_UP_WAVE, Math.floor(descriptorLimit() / 8)))
    for (let left = requests; left > 0 && !signal.aborted; left -= wave) {
      await Promise.all(Array.from({ length: Math.min(wave, left) }, ask))
      stop()
    }
  } catch {
    // No loopback, or out of time: the warm-up is a nicety.
  } finally {
    signal.removeEventListener('abort', stop)
    stop()
    listener.close()
  }
  return answered
}

/** The soft limit on open descriptors, from /proc on Linux; elsewhere a common default. */
function descriptorLimit(): number {
  try {
    const limits = readFileSync('/proc/self/limits', 'utf8')
    const soft = /^Max open files\s+(\d+|unlimited)/m.exec(limits)?.[1]
    if (soft === 'unlimited') return Number.MAX_SAFE_INTEGER
    if (soft !== undefined) return Number(soft)
  } catch {
    // No /proc.
  }
  return 1024
}
