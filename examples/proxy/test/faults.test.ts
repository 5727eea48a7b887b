import { createHash } from 'node:crypto'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'
import { refusedUrl, startCacheServer, type CacheServer } from '../../../test/support/cache-server.js'
import { createProxy, type Proxy, type ProxyOptions } from '../src/proxy.js'
import { sample } from './support/metrics.js'
import { get } from './support/client.js'

const small = fixtures.path('small')
const big = fixtures.path('5m')
const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex')

/** Waits, bounded, for `check` to hold. */
async function until(check: () => Promise<boolean>, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; !(await check()); ) {
    if (Date.now() > end) throw new Error('condition not reached in time')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

describe('the proxy under load and faults', () => {
  let upstream: CacheServer
  let second: CacheServer
  let spoolRoot: string
  const proxies: Proxy[] = []

  async function start(options: Partial<ProxyOptions> = {}): Promise<Proxy> {
    const proxy = createProxy({ upstreams: [upstream.url], logger: pino({ level: 'silent' }), spoolDir: spoolRoot, ...options })
    proxies.push(proxy)
    await proxy.listen()
    upstream.requests.length = 0
    second.requests.length = 0
    return proxy
  }
  const spooled = async (): Promise<string[]> => {
    return readdir(spoolRoot).catch(() => [])
  }

  beforeAll(async () => {
    upstream = await startCacheServer({ root: fixtures.cacheDir })
    second = await startCacheServer({ root: fixtures.cacheDir })
    spoolRoot = await mkdtemp(join(tmpdir(), 'narrace-spool-test-'))
  })
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.close()))
    upstream.clearFaults()
    second.clearFaults()
  })
  afterAll(async () => {
    await upstream?.close()
    await second?.close()
    await rm(spoolRoot, { recursive: true, force: true })
  })

  it.each([503, 500, 429])('answers 503, never 404, for a NAR whose only upstream answers %i', async (status) => {
    const proxy = await start()
    expect((await get(`${proxy.url}/${small.hashPart}.narinfo`)).status).toBe(200)
    upstream.setFaults({ status }, small.url)
    expect((await get(`${proxy.url}/${small.url}`)).status).toBe(503)
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_nar_requests_total', 'outcome="failed"')).toBe(1)
    expect(sample(metrics, 'narrace_nar_requests_total', 'outcome="not_found"')).toBe(0)
  })

  it('verifies a NAR past the memory budget on disk, then removes the file', async () => {
    const proxy = await start({ memoryBudget: 0, verifyFirstBelow: 64 * 1024 * 1024 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    const answer = await get(`${proxy.url}/${big.url}`)
    expect(answer.error).toBeUndefined()
    expect(answer.headers['content-length']).toBe(String(big.fileSize))
    expect(sha256(answer.body)).toBe(big.fileHashHex)
    await until(async () => (await spooled()).length === 0)
    // A corrupt copy never reaches the client, and leaves nothing on disk.
    upstream.setFaults({ flipByteAt: big.fileSize - 1 }, big.url)
    expect((await get(`${proxy.url}/${big.url}`)).status).toBe(502)
    await until(async () => (await spooled()).length === 0)
  })

  it('reports each upstream as up in narrace_upstream_up, and down once its breaker trips', async () => {
    const refused = await refusedUrl()
    const proxy = await start({ upstreams: [refused, upstream.url] })
    let metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_upstream_up', `upstream="${upstream.url}"`)).toBe(1)
    expect(sample(metrics, 'narrace_upstream_up', `upstream="${refused}"`)).toBe(1)
    for (const c of 'abcd') expect((await get(`${proxy.url}/nar/1${c.repeat(51)}.nar.xz`)).status).toBe(503)
    metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_upstream_up', `upstream="${refused}"`)).toBe(0)
    expect(sample(metrics, 'narrace_upstream_up', `upstream="${upstream.url}"`)).toBe(1)
  })

  it('lets the downloads in flight finish on shutdown, and refuses new connections', async () => {
    upstream.setFaults({ bytesPerSecond: 10_000_000 }, big.url)
    const proxy = await start({ verifyFirstBelow: 0 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    // Shutdown closes connections that have sent no request yet: wait until all ten requests are in.
    let requests = 0
    proxy.server.on('request', (req: { url?: string }) => void (req.url === `/${big.url}` && requests++))
    const downloads = Array.from({ length: 10 }, () => get(`${proxy.url}/${big.url}`))
    for (const end = Date.now() + 5000; requests < 10 && Date.now() < end; )
      await new Promise((resolve) => setTimeout(resolve, 10))
    const stopped = proxy.shutdown(10_000)
    // Every listening socket stops at once, while the downloads go on.
    const refused = await Promise.allSettled(Array.from({ length: 16 }, () => get(`${proxy.url}/nix-cache-info`)))
    expect(refused.map((attempt) => attempt.status)).toEqual(Array(16).fill('rejected'))
    const answers = await Promise.all(downloads)
    for (const answer of answers) {
      expect(answer.error).toBeUndefined()
      expect(sha256(answer.body)).toBe(big.fileHashHex)
    }
    await stopped
    await expect(get(`${proxy.url}/nix-cache-info`)).rejects.toThrow(/ECONNREFUSED/)
  })

  it('aborts what is left when the grace is over', async () => {
    upstream.setFaults({ bytesPerSecond: 100_000 }, big.url)
    const proxy = await start({ verifyFirstBelow: 0 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    const download = get(`${proxy.url}/${big.url}`)
    for (const end = Date.now() + 5000; !upstream.requests.some((r) => r.path === `/${big.url}`) && Date.now() < end; )
      await new Promise((resolve) => setTimeout(resolve, 10))
    await proxy.shutdown(200)
    const answer = await download
    expect(answer.error).toBeDefined()
    expect(answer.body.length).toBeLessThan(big.fileSize)
  })
})
