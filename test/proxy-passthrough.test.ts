/**
 * The files Nix reads besides narinfo and NARs (build logs, listings, realisations, build traces,
 * debuginfo) through the proxy, and the nix-cache-info it makes of its upstreams'.
 */
import { createServer, request, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { brotliCompressSync } from 'node:zlib'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createProxy, type Proxy, type ProxyOptions } from '../examples/proxy/src/index.js'
import { UpstreamStoreDirError } from '../examples/proxy/src/cache-info.js'
import { get } from '../examples/proxy/test/support/client.js'
import { fixtures } from './fixtures/index.js'
import { refusedUrl } from './support/cache-server.js'
import { nixAvailable, nixSandbox } from './support/nix.js'
import { built, runAsync } from './support/proxy-process.js'
import { startShapeServer, type ShapeServer } from './support/shape-server.js'

const small = fixtures.path('small')
const drv = `${'a'.repeat(32)}-small.drv`
const log = 'building small\nall done\n'.repeat(50)
const doi = `realisations/sha256:${'0123456789abcdef'.repeat(4)}!out.doi`
const listing = JSON.stringify({ version: 1, root: { type: 'regular', size: 768, narOffset: 96 } })

const proxies: Proxy[] = []
async function proxyOver(upstreams: string[], options: Partial<ProxyOptions> = {}): Promise<Proxy> {
  const proxy = createProxy({ logger: pino({ level: 'silent' }), upstreams, ...options })
  proxies.push(proxy)
  await proxy.listen()
  return proxy
}
afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()))
})

describe('passthrough routes', () => {
  let empty: ShapeServer
  let full: ShapeServer
  beforeAll(async () => {
    // It holds nothing: every answer must come from the full one.
    empty = await startShapeServer({ shape: 'nix-xz', only: [] })
    const narinfo = fixtures.narinfoText('small')
    full = await startShapeServer({
      shape: 'nix-xz',
      only: ['small'],
      prefix: '/cache/',
      extra: {
        // Deriver is not signed either: the narinfo keeps its signature, and `nix log` finds the drv by it.
        [`${small.hashPart}.narinfo`]: {
          body: Buffer.from(narinfo.replace(/^(References: .*)$/m, `$1\nDeriver: ${drv}`)),
          type: 'text/x-nix-narinfo',
        },
        [`log/${drv}`]: { body: brotliCompressSync(log), type: 'text/plain; charset=utf-8', headers: { 'content-encoding': 'br' } },
        [`${small.hashPart}.ls`]: { body: Buffer.from(listing), type: 'application/json' },
        [doi]: { body: Buffer.from('{"id":"x"}'), type: 'application/json' },
        'build-trace-v2/abc/out.json': { body: Buffer.from('{"trace":1}'), type: 'application/json' },
        'debuginfo/0123abcd': { body: Buffer.from('{"archive":"../nar/x.nar.xz","member":"lib/debug/x"}'), type: 'application/json' },
        'debuginfo/00aa': { body: Buffer.alloc(4096, 1), type: 'application/octet-stream', chunked: true },
        'debuginfo/00bb': { body: Buffer.alloc(4096, 1), type: 'application/octet-stream' },
        'debuginfo/00cc': { status: 302, body: Buffer.alloc(0), type: 'text/plain', headers: { location: `${empty.url}debuginfo/00cc` } },
      },
    })
  })
  afterAll(async () => {
    await Promise.all([empty?.close(), full?.close()])
  })

  it('races every upstream: the one 200 wins, with its Content-Type and Content-Encoding, byte for byte', async () => {
    const proxy = await proxyOver([empty.url, full.url])
    for (const target of [`log/${drv}`, `${small.hashPart}.ls`, doi, 'build-trace-v2/abc/out.json', 'debuginfo/0123abcd']) {
      const answer = await get(`${proxy.url}/${target}`)
      const file = full.file(target)!
      expect(answer.status, target).toBe(200)
      expect(answer.headers['content-type']).toBe(file.type)
      expect(answer.headers['content-encoding']).toBe(file.headers?.['content-encoding'])
      expect(answer.body.equals(Buffer.from(file.body))).toBe(true)
      const head = await get(`${proxy.url}/${target}`, { method: 'HEAD' })
      expect(head.status).toBe(200)
      expect(head.body).toHaveLength(0)
      expect(empty.requests.some((r) => r.target === target)).toBe(true)
    }
  })

  it('answers 404 when no upstream has it, 503 when one could not be asked, and refuses bad paths unasked', async () => {
    const proxy = await proxyOver([empty.url, full.url])
    expect((await get(`${proxy.url}/log/${'b'.repeat(32)}-other.drv`)).status).toBe(404)
    const down = await proxyOver([await refusedUrl(), empty.url])
    expect((await get(`${down.url}/log/${drv}`)).status).toBe(503)
    const before = full.requests.length
    // Dot segments are refused too (see the routing tests), but an HTTP client takes them out before sending.
    for (const target of ['/log/x', `/log/${small.hashPart}`, `/${'e'.repeat(32)}.ls`, '/realisations/x.doi', '/debuginfo/XY', '/build-trace-v2/.x']) {
      expect((await get(`${proxy.url}${target}`)).status, target).toBe(400)
    }
    expect(full.requests.length).toBe(before)
  })

  it('cuts at --max-passthrough-bytes: a longer announced file is refused, a longer chunked one breaks off', async () => {
    const proxy = await proxyOver([full.url], { maxPassthroughBytes: 1024 })
    expect((await get(`${proxy.url}/debuginfo/00bb`)).status).toBe(503)
    // Cut before or after the status line went out: either way the client never gets a complete answer.
    const chunked = await get(`${proxy.url}/debuginfo/00aa`).catch((error: Error) => ({ error, body: Buffer.alloc(0) }))
    expect(chunked.error).toBeDefined()
    expect(chunked.body.length).toBeLessThanOrEqual(1024)
    expect((await get(`${proxy.url}/debuginfo/0123abcd`)).status).toBe(200)
  })

  it('cuts a body that trickles or goes silent, by the stall timeout and minimum rate, and counts it as cut', async () => {
    const drips = new Set<ServerResponse>()
    const big = Buffer.alloc(24 * 1024 * 1024, 7)
    const trickler = createServer((req, res) => {
      drips.add(res)
      res.once('close', () => drips.delete(res))
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      // A byte every 100 ms: it never goes silent for the stall timeout, but 10 B/s is far under 1 KiB/s.
      if (req.url!.endsWith('/debuginfo/00aa')) {
        const timer = setInterval(() => res.write('x'), 100)
        res.once('close', () => clearInterval(timer))
      } else if (req.url!.endsWith('/debuginfo/00cc')) res.end(big)
      else res.write('first bytes, then nothing')
    })
    await new Promise<void>((resolve) => trickler.listen(0, '127.0.0.1', resolve))
    try {
      const url = `http://127.0.0.1:${(trickler.address() as AddressInfo).port}/`
      const proxy = await proxyOver([url], { stallTimeoutMs: 600 })
      for (const target of ['debuginfo/00aa', 'debuginfo/00bb']) {
        const t0 = performance.now()
        const answer = await get(`${proxy.url}/${target}`).catch((error: Error) => ({ error }))
        expect(answer.error, target).toBeDefined()
        // One window, and a little more for the cut to reach the client; never the 30 s of a body timeout.
        expect(performance.now() - t0, target).toBeLessThan(3000)
      }
      // A client that stops reading for longer than the stall timeout is not the upstream's fault.
      const slowReader = await new Promise<{ bytes: number; complete: boolean }>((resolve, reject) => {
        const req = request(`${proxy.url}/debuginfo/00cc`, { agent: false }, (res) => {
          let bytes = 0
          res.once('data', () => {
            res.pause()
            setTimeout(() => res.resume(), 1500)
          })
          res.on('data', (chunk: Buffer) => (bytes += chunk.length))
          res.once('close', () => resolve({ bytes, complete: res.complete }))
        })
        req.once('error', reject).end()
      })
      expect(slowReader).toEqual({ bytes: big.length, complete: true })
      // Clients that hang up, one while the upstream is silent and one while the proxy waits on it, cut nothing.
      for (const target of ['debuginfo/00bb', 'debuginfo/00cc']) {
        await new Promise<void>((resolve, reject) => {
          const req = request(`${proxy.url}/${target}`, { agent: false }, (res) => {
            res.once('data', () => req.destroy())
            res.once('close', () => resolve())
          })
          req.once('error', () => {}).once('close', () => resolve())
          req.once('response', () => {}).end()
          setTimeout(() => reject(new Error('no answer')), 5000)
        })
      }
      await expect.poll(async () => (await get(`${proxy.url}/metrics`)).body.toString()).toMatch(/outcome="aborted"\} 2/)
      await expect.poll(() => drips.size).toBe(0)
      const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
      expect(metrics).toMatch(/narrace_passthrough_requests_total\{kind="debuginfo",outcome="cut"\} 2/)
    } finally {
      trickler.closeAllConnections()
      await new Promise((resolve) => trickler.close(resolve))
    }
  })

  it('cuts a client that takes nothing for --client-timeout, and frees the upstream connection it held', async () => {
    const open = new Set<ServerResponse>()
    const upstream = createServer((_req, res) => {
      open.add(res)
      res.once('close', () => open.delete(res))
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(48 * 1024 * 1024) })
      res.end(Buffer.alloc(48 * 1024 * 1024, 5))
    })
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve))
    const proxy = await proxyOver([`http://127.0.0.1:${(upstream.address() as AddressInfo).port}/`], { clientTimeoutMs: 500 })
    const client = connect(Number(new URL(proxy.url).port), '127.0.0.1')
    try {
      // It asks, then reads nothing: without a bound it would hold the upstream's connection for good.
      client.pause()
      client.write('GET /debuginfo/00dd HTTP/1.1\r\nHost: x\r\n\r\n')
      await expect.poll(() => open.size).toBe(1)
      await expect.poll(() => open.size, { timeout: 8000 }).toBe(0)
      const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
      expect(metrics).toMatch(/narrace_passthrough_requests_total\{kind="debuginfo",outcome="aborted"\} 1/)
    } finally {
      client.destroy()
      upstream.closeAllConnections()
      await new Promise((resolve) => upstream.close(resolve))
    }
  })

  it('follows no redirect: a file kept elsewhere is not fetched on the upstream\'s word', async () => {
    const proxy = await proxyOver([full.url])
    empty.requests.length = 0
    expect((await get(`${proxy.url}/debuginfo/00cc`)).status).toBe(503)
    expect(empty.requests).toEqual([])
  })

  it.skipIf(!nixAvailable)('nix log reads a build log through the proxy (Nix 2.8 decodes its Content-Encoding)', async () => {
    const nix = await nixSandbox()
    try {
      const proxy = await proxyOver([empty.url, full.url], { trustedPublicKeys: [fixtures.publicKey] })
      const result = await nix.run('nix', ['log', '--store', proxy.url, '--option', 'trusted-public-keys', fixtures.publicKey, small.storePath])
      expect(result.code, result.stderr).toBe(0)
      expect(result.stdout).toBe(log)
    } finally {
      await nix.close()
    }
  })
})

describe('nix-cache-info of the upstreams', () => {
  const servers: ShapeServer[] = []
  const cacheInfo = (text: string) => ({ body: Buffer.from(text), type: 'text/x-nix-cache-info' })
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()))
  })
  async function upstream(text: string | undefined): Promise<ShapeServer> {
    const server = await startShapeServer(text === undefined ? {} : { extra: { 'nix-cache-info': cacheInfo(text) } })
    servers.push(server)
    return server
  }

  it('says WantMassQuery: 1 only when every upstream says so, and asks each once', async () => {
    const a = await upstream('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n')
    const b = await upstream('StoreDir: /nix/store\nWantMassQuery: 1\n')
    const c = await upstream('StoreDir: /nix/store\n')
    const both = await proxyOver([a.url, b.url], { priority: 25 })
    for (let i = 0; i < 3; i++) {
      expect((await get(`${both.url}/nix-cache-info`)).body.toString()).toBe('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 25\n')
    }
    expect(a.requests.filter((r) => r.target === 'nix-cache-info')).toHaveLength(1)
    const mixed = await proxyOver([a.url, c.url])
    expect((await get(`${mixed.url}/nix-cache-info`)).body.toString()).toContain('WantMassQuery: 0\n')
  })

  it('asks again, later, an upstream whose nix-cache-info failed at start', async () => {
    const late = await upstream(undefined)
    const proxy = await proxyOver([late.url], { cacheInfoRetryMs: 0 })
    expect((await get(`${proxy.url}/nix-cache-info`)).body.toString()).toContain('WantMassQuery: 0\n')
    late.setFile('nix-cache-info', cacheInfo('StoreDir: /nix/store\nWantMassQuery: 1\n'))
    const deadline = Date.now() + 5000
    let text = ''
    while (Date.now() < deadline && !text.includes('WantMassQuery: 1')) {
      text = (await get(`${proxy.url}/nix-cache-info`)).body.toString()
    }
    expect(text).toContain('WantMassQuery: 1\n')
    expect(late.requests.filter((r) => r.target === 'nix-cache-info').length).toBeGreaterThanOrEqual(2)
  })

  it('refuses to start over an upstream with another StoreDir', async () => {
    const other = await upstream('StoreDir: /opt/store\nWantMassQuery: 1\n')
    const proxy = createProxy({ logger: pino({ level: 'silent' }), upstreams: [other.url] })
    proxies.push(proxy)
    await expect(proxy.listen()).rejects.toBeInstanceOf(UpstreamStoreDirError)
    expect(proxy.server.listening).toBe(false)
  })

  it.skipIf(!built)('the proxy command stops with one line and exit code 2 for it', async () => {
    const other = await upstream('StoreDir: /opt/store\n')
    const { status, stdout, stderr } = await runAsync(['--upstream', other.url, '--listen', '127.0.0.1:0'])
    expect(status).toBe(2)
    expect(stdout).toBe('')
    expect(stderr.trim().split('\n')).toHaveLength(1)
    expect(stderr).toContain('StoreDir /opt/store')
  })
})
