import { once } from 'node:events'
import { createServer, get, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { answerParent, spawnRpc } from './child.js'

/** How often the floor server answers what it holds, whether or not all have arrived. */
const RELEASE_EVERY_MS = 60_000

/** A server that does no work of its own, for a baseline taken in the same run as the proxy. */
export interface FloorServer {
  url: string
  close(): Promise<void>
}

type Call = { op: 'close' }

/**
 * Starts, in a process of its own, the least an HTTP server on Node can do under a burst: node:http with
 * its defaults, warmed by 512 requests of its own as the proxy is, `/nix-cache-info` answered at once,
 * and every other request held, unanswered and without any work, until `expect` of them have arrived
 * (and in any case once a minute); then each gets an empty 204. A poller beside a burst of `expect`
 * clients then times what accepting and parsing that many connections costs on this machine, whatever a
 * server does with them afterwards.
 */
export async function spawnFloorServer(expect: number): Promise<FloorServer> {
  const child = await spawnRpc<Call>('floor-main', [String(expect)])
  return {
    url: child.ready as string,
    close: () => child.close(),
  }
}

/** The body of the child process started by {@link spawnFloorServer}. */
export async function floorFromChild(): Promise<void> {
  const expect = Number(process.argv[2])
  const held: ServerResponse[] = []
  const releaseAll = (): void => {
    for (const res of held.splice(0)) res.writeHead(204).end()
  }
  const server = createServer((req, res) => {
    if (req.url === '/nix-cache-info') {
      res.end('StoreDir: /nix/store\n')
      return
    }
    held.push(res)
    if (held.length >= expect) releaseAll()
  })
  const limit = setInterval(releaseAll, RELEASE_EVERY_MS)
  server.listen({ host: '127.0.0.1', port: 0 })
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  // Warmed as the proxy warms itself at start (two waves of 256 connections held open), so that neither
  // meets the burst with cold code.
  for (let wave = 0; wave < 2; wave++) {
    await Promise.all(
      Array.from({ length: 256 }, () => new Promise<void>((resolve) => {
        get({ host: '127.0.0.1', port, path: '/nix-cache-info', agent: false }, (res) => res.resume().once('end', resolve)).once('error', () => resolve())
      })),
    )
  }
  answerParent<Call & { id: number }>(
    `http://127.0.0.1:${port}`,
    async () => undefined,
    async () => {
      clearInterval(limit)
      releaseAll()
      server.closeAllConnections()
      server.close()
    },
  )
}
