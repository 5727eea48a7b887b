import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { openIndex } from '@narrace/index'
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

  it('answers 503 for a NAR when its only upstream refuses connections, 404 only when it said "not here"', async () => {
    const index = openIndex()
    const proxy = await start({ index, upstreams: [await refusedUrl()] })
    expect((await get(`${proxy.url}/${small.url}`)).status).toBe(503)
    await proxy.close()
    const other = await start({ index })
    expect((await get(`${other.url}/nar/${'0'.repeat(52)}.nar.xz`)).status).toBe(404)
    index.close()
  })

  it('counts a FileSize mismatch found before the first byte as a hash mismatch, in status, outcome and metric', async () => {
    const proxy = await start()
    await get(`${proxy.url}/${small.hashPart}.narinfo`)
    upstream.setFaults({ body: 'too short' }, small.url)
    expect((await get(`${proxy.url}/${small.url}`)).status).toBe(502)
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_nar_requests_total', 'outcome="hash_mismatch"')).toBe(1)
    expect(sample(metrics, 'narrace_hash_mismatches_total', `backend="${upstream.url}"`)).toBe(1)
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

  it('fails over from an upstream that trickles one byte every 5 s', async () => {
    upstream.setFaults({ bytesPerSecond: 0.2 }, small.url)
    const proxy = await start({ upstreams: [upstream.url, second.url], stallTimeoutMs: 500 })
    await get(`${proxy.url}/${small.hashPart}.narinfo`)
    const started = Date.now()
    const answer = await get(`${proxy.url}/${small.url}`)
    expect(answer.status).toBe(200)
    expect(sha256(answer.body)).toBe(small.fileHashHex)
    expect(Date.now() - started).toBeLessThan(5000)
    // Alone, the trickle is an outage (503) within the stall bound, not a client left waiting.
    const alone = await start({ stallTimeoutMs: 500 })
    await get(`${alone.url}/${small.hashPart}.narinfo`)
    expect((await get(`${alone.url}/${small.url}`)).status).toBe(503)
  })

  it('cuts an endless body at maxNarBytes when nothing bounds the file', async () => {
    let sent = 0
    const endless: Server = createServer((req, res) => {
      if (!req.url?.startsWith('/nar/')) {
        res.writeHead(404).end()
        return
      }
      res.writeHead(200, { 'content-type': 'application/x-nix-nar' })
      const chunk = Buffer.alloc(64 * 1024, 1)
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk)) sent += chunk.length
        if (!res.destroyed) res.once('drain', pump)
      }
      pump()
    })
    endless.listen(0, '127.0.0.1')
    await once(endless, 'listening')
    try {
      const proxy = await start({ upstreams: [`http://127.0.0.1:${(endless.address() as AddressInfo).port}/`], maxNarBytes: 2 * 1024 * 1024, verifyFirstBelow: 0 })
      const answer = await get(`${proxy.url}/nar/${'1'.repeat(52)}.nar.xz`)
      expect(answer.error ?? answer.status !== 200).toBeTruthy()
      expect(answer.body.length).toBeLessThanOrEqual(2 * 1024 * 1024)
      expect(sent).toBeLessThan(64 * 1024 * 1024)
    } finally {
      endless.closeAllConnections()
      endless.close()
    }
  })

  it('answers a narinfo at once while another process holds the index file locked', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'narrace-locked-index-'))
    const file = join(dir, 'index.sqlite')
    const index = openIndex(file, { deferWrites: true })
    const locker = new DatabaseSync(file)
    try {
      const proxy = await start({ index })
      locker.exec('BEGIN EXCLUSIVE')
      const started = performance.now()
      const answer = await get(`${proxy.url}/${small.hashPart}.narinfo`)
      const ms = performance.now() - started
      expect(answer.status).toBe(200)
      // The write waits for the lock; the answer does not (a blocking write froze the loop for 5 s).
      expect(ms).toBeLessThan(500)
      expect(index.get(small.fileHash)).toMatchObject({ size: small.fileSize })
      locker.exec('COMMIT')
      await index.flush()
    } finally {
      if (locker.isTransaction) locker.exec('ROLLBACK')
      locker.close()
      index.close()
      await rm(dir, { recursive: true, force: true })
    }
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
