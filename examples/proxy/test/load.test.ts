import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { createServer, request, type Server } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { DatabaseSync } from 'node:sqlite'
import { setTimeout as sleep } from 'node:timers/promises'
import { openIndex } from '@narrace/index'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'
import { refusedUrl, startCacheServer, type CacheServer } from '../../../test/support/cache-server.js'
import { createProxy, type Proxy, type ProxyOptions } from '../src/proxy.js'
import { get } from './support/client.js'

const small = fixtures.path('small')
const big = fixtures.path('5m')
const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex')

/** Opens a response and reads nothing: the socket fills and the client falls behind. */
function stalledClient(url: string): Promise<{ destroy: () => void }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false })
    req.once('error', reject)
    req.once('response', (res) => {
      res.pause()
      resolve({ destroy: () => req.destroy() })
    })
    req.end()
  })
}

/** A server whose every answer is a 200 that never ends, counting the bytes it sent. */
async function endlessServer(): Promise<{ url: string; sent: () => number; close: () => Promise<void> }> {
  let sent = 0
  const sockets = new Set<Socket>()
  const server: Server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    const chunk = Buffer.alloc(64 * 1024, 7)
    const pump = (): void => {
      while (!res.destroyed && res.write(chunk)) sent += chunk.length
      if (!res.destroyed) res.once('drain', pump)
    }
    pump()
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    sent: () => sent,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      server.close()
      await once(server, 'close')
    },
  }
}

describe('the proxy under load and attack', () => {
  let upstream: CacheServer
  let second: CacheServer
  let spoolDir: string
  const proxies: Proxy[] = []

  async function start(options: Partial<ProxyOptions> = {}): Promise<Proxy> {
    const proxy = createProxy({ upstreams: [upstream.url], logger: pino({ level: 'silent' }), spoolDir, ...options })
    proxies.push(proxy)
    await proxy.listen()
    upstream.requests.length = 0
    second.requests.length = 0
    return proxy
  }

  beforeAll(async () => {
    upstream = await startCacheServer({ root: fixtures.cacheDir })
    second = await startCacheServer({ root: fixtures.cacheDir })
    spoolDir = await mkdtemp(join(tmpdir(), 'narrace-spool-test-'))
  })
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.close()))
    upstream.clearFaults()
    second.clearFaults()
  })
  afterAll(async () => {
    await upstream?.close()
    await second?.close()
    await rm(spoolDir, { recursive: true, force: true })
  })

  it('shares one upstream download among concurrent clients of one file', async () => {
    upstream.setFaults({ bytesPerSecond: 20_000_000 }, big.url)
    const proxy = await start()
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    upstream.requests.length = 0
    const answers = await Promise.all(Array.from({ length: 20 }, () => get(`${proxy.url}/${big.url}`)))
    for (const answer of answers) {
      expect(answer.status).toBe(200)
      expect(answer.error).toBeUndefined()
      expect(sha256(answer.body)).toBe(big.fileHashHex)
    }
    expect(upstream.requests.filter((r) => r.path === `/${big.url}`)).toHaveLength(1)
  })

  it('lets a client that stops reading slow nobody, and frees the spool once everyone is gone', async () => {
    const proxy = await start({ verifyFirstBelow: 0 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    const stalled = await stalledClient(`${proxy.url}/${big.url}`)
    const answer = await get(`${proxy.url}/${big.url}`)
    expect(answer.error).toBeUndefined()
    expect(sha256(answer.body)).toBe(big.fileHashHex)
    expect(upstream.requests.filter((r) => r.path === `/${big.url}`)).toHaveLength(1)
    stalled.destroy()
    for (let i = 0; i < 200 && (await readdir(spoolDir)).length > 0; i++) await sleep(10)
    expect(await readdir(spoolDir)).toEqual([])
  })

  it('verifies small files in a spool file when the memory budget is spent, and removes it after', async () => {
    const proxy = await start({ memoryBudget: 1 })
    await get(`${proxy.url}/${small.hashPart}.narinfo`)
    const answer = await get(`${proxy.url}/${small.url}`)
    expect(answer.status).toBe(200)
    expect(sha256(answer.body)).toBe(small.fileHashHex)
    for (let i = 0; i < 200 && (await readdir(spoolDir)).length > 0; i++) await sleep(10)
    expect(await readdir(spoolDir)).toEqual([])
  })

  it('fails over from a source that trickles under minBytesPerSecond', async () => {
    // A byte every 100 ms never trips a stall timer counted in silence; it is far below 1 KiB/s.
    upstream.setFaults({ bytesPerSecond: 10 }, big.url)
    second.setFaults({ firstByteDelayMs: 300 }, big.url)
    const proxy = await start({ upstreams: [upstream.url, second.url], stallTimeoutMs: 1000, verifyFirstBelow: 0 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    const started = performance.now()
    const answer = await get(`${proxy.url}/${big.url}`)
    expect(answer.error).toBeUndefined()
    expect(sha256(answer.body)).toBe(big.fileHashHex)
    expect(performance.now() - started).toBeLessThan(20_000)
  })

  it('cuts an endless body asked for by FileHash at maxNarBytes', async () => {
    const endless = await endlessServer()
    try {
      const proxy = await start({ upstreams: [endless.url], maxNarBytes: 1024 * 1024, verifyFirstBelow: 0 })
      const hash = createHash('sha256').update('never ends').digest()
      const { parseNarHash } = await import('@narrace/core')
      const answer = await get(`${proxy.url}/nar/${parseNarHash(hash.toString('hex')).nix32}.nar.xz`)
      expect(answer.status === 503 || answer.error !== undefined).toBe(true)
      expect(answer.body.length).toBeLessThanOrEqual(1024 * 1024)
      await sleep(200)
      const sent = endless.sent()
      await sleep(300)
      // The proxy stopped reading: the server can't have written much past what sockets buffer.
      expect(endless.sent() - sent).toBeLessThan(8 * 1024 * 1024)
    } finally {
      await endless.close()
    }
  })

  it('answers 503 for a NAR when the only upstream refuses connections', async () => {
    const proxy = await start({ upstreams: [await refusedUrl()] })
    const answer = await get(`${proxy.url}/${small.url}`)
    expect(answer.status).toBe(503)
  })

  it('answers 404 for a NAR only when every source said "not here"', async () => {
    const proxy = await start({ upstreams: [upstream.url, second.url] })
    const answer = await get(`${proxy.url}/nar/${'1'.repeat(52)}.nar.xz`)
    expect(answer.status).toBe(404)
  })

  it('counts a size mismatch before the first byte as a hash mismatch, with a 502', async () => {
    const proxy = await start()
    await get(`${proxy.url}/${small.hashPart}.narinfo`)
    upstream.setFaults({ body: 'short' }, small.url)
    const answer = await get(`${proxy.url}/${small.url}`)
    expect(answer.status).toBe(502)
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(metrics).toMatch(/narrace_hash_mismatches_total\{backend="[^"]+"\} 1/)
    expect(metrics).toMatch(/narrace_nar_requests_total\{outcome="hash_mismatch"\} 1/)
  })

  it('answers a narinfo at once while another process holds the index file locked', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'narrace-locked-'))
    const file = join(dir, 'index.sqlite')
    openIndex(file).close()
    const index = openIndex(file, { deferWrites: true })
    const proxy = await start({ index, narInfoTtlMs: 0 })
    const time = async (hashPart: string): Promise<number> => {
      const started = performance.now()
      expect((await get(`${proxy.url}/${hashPart}.narinfo`)).status).toBe(200)
      return performance.now() - started
    }
    const paths = fixtures.paths.slice(0, 10)
    const free: number[] = []
    for (const path of paths.slice(0, 5)) free.push(await time(path.hashPart))
    const lock = new DatabaseSync(file)
    lock.exec('BEGIN EXCLUSIVE')
    const locked: number[] = []
    try {
      for (const path of paths.slice(5)) locked.push(await time(path.hashPart))
    } finally {
      lock.exec('COMMIT')
      lock.close()
    }
    const median = (values: number[]): number => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!
    expect(median(locked) - median(free)).toBeLessThan(50)
    await index.flush({ signal: AbortSignal.timeout(10_000) })
    expect(index.get(paths[9]!.fileHash)).toMatchObject({ storePath: paths[9]!.storePath })
    index.close()
    await rm(dir, { recursive: true, force: true })
  })
})
