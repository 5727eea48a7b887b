import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { createServer as createHttpServer } from 'node:http'
import { createServer, type AddressInfo } from 'node:net'
import { pino } from 'pino'
import { refusedUrl } from '../../../test/support/cache-server.js'
import { afterEach, describe, expect, it } from 'vitest'
import { listenOn } from '../src/listeners.js'
import { createProxy, type Proxy } from '../src/proxy.js'
import { get } from './support/client.js'

/** Sockets listening on `port` on this machine, from the kernel's table (Linux). */
async function listeningOn(port: number): Promise<number> {
  const text = await readFile('/proc/net/tcp', 'utf8')
  return text
    .split('\n')
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields.length > 3 && fields[3] === '0A' && parseInt(fields[1]!.split(':')[1]!, 16) === port).length
}

const portOf = (url: string): number => Number(new URL(url).port)

describe.runIf(process.platform === 'linux')('listening sockets', () => {
  const proxies: Proxy[] = []
  const quiet = pino({ level: 'silent' })
  // The upstream is never asked: these tests read only the proxy's own answers.
  const start = async (port: number, listenSockets?: number): Promise<Proxy> => {
    const proxy = createProxy({ upstreams: [await refusedUrl()], logger: quiet, listen: { host: '127.0.0.1', port }, listenSockets, cacheInfoRetryMs: 60_000 })
    proxies.push(proxy)
    await proxy.listen()
    return proxy
  }
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((proxy) => proxy.close()))
  })

  it('binds several sockets to one port, each serving the same server, and closes them all', async () => {
    const server = createHttpServer((_req, res) => res.end('ok'))
    const extras = await listenOn(server, '127.0.0.1', 0, 4)
    const { port } = server.address() as AddressInfo
    expect(await listeningOn(port)).toBe(4)
    const answers = await Promise.all(Array.from({ length: 64 }, () => get(`http://127.0.0.1:${port}/`)))
    expect(answers.map((answer) => answer.body.toString())).toEqual(Array(64).fill('ok'))
    server.close()
    await extras.close()
    expect(await listeningOn(port)).toBe(0)
  })

  it('the proxy listens on eight by default, and none is left after close', async () => {
    const proxy = await start(0)
    const port = portOf(proxy.url)
    expect(await listeningOn(port)).toBe(8)
    const answers = await Promise.all(Array.from({ length: 32 }, () => get(`${proxy.url}/nix-cache-info`)))
    expect(answers.every((answer) => answer.status === 200)).toBe(true)
    await proxy.close()
    expect(await listeningOn(port)).toBe(0)
    await expect(get(`${proxy.url}/nix-cache-info`)).rejects.toThrow(/ECONNREFUSED/)
  })

  it('never shares a port: a second proxy on a proxy\'s port fails as a plain listen would', async () => {
    const first = await start(0)
    const port = portOf(first.url)
    await expect(start(port)).rejects.toThrow(/EADDRINUSE/)
    expect(await listeningOn(port)).toBe(8)
  })

  it('fails with EADDRINUSE on a port another server holds, and binds nothing there', async () => {
    const holder = createServer()
    holder.listen(0, '127.0.0.1')
    await once(holder, 'listening')
    const { port } = holder.address() as AddressInfo
    try {
      await expect(start(port)).rejects.toThrow(/EADDRINUSE/)
      expect(await listeningOn(port)).toBe(1)
    } finally {
      holder.close()
    }
  })

  it('one socket when asked for one', async () => {
    const proxy = await start(0, 1)
    expect(await listeningOn(portOf(proxy.url))).toBe(1)
  })
})
