import { createHash } from 'node:crypto'
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { connect } from 'node:net'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { openIndex } from '@narrace/index'
import { pino, type Logger } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'
import { refusedUrl, startCacheServer, type CacheServer } from '../../../test/support/cache-server.js'
import { createProxy, HEADERS_TIMEOUT_MS, type Proxy, type ProxyOptions } from '../src/proxy.js'
import { sample } from './support/metrics.js'
import { get, raw } from './support/client.js'

const small = fixtures.path('small')
const big = fixtures.path('5m')
const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex')

/** Log lines the proxy wrote, parsed. */
function capture(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = []
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    },
  })
  return { logger: pino(sink), lines }
}

/** Waits, bounded, for `check` to hold. */
async function until(check: () => boolean, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; !check(); ) {
    if (Date.now() > end) throw new Error('condition not reached in time')
    await sleep(10)
  }
}

describe('the substituter proxy', () => {
  let upstream: CacheServer
  let second: CacheServer
  const proxies: Proxy[] = []

  async function start(options: Partial<ProxyOptions> = {}): Promise<Proxy & { lines: Record<string, unknown>[] }> {
    const { logger, lines } = capture()
    const proxy = createProxy({ upstreams: [upstream.url], logger, ...options })
    proxies.push(proxy)
    await proxy.listen()
    // The proxy reads each upstream's nix-cache-info at start; the tests count what comes after.
    upstream.requests.length = 0
    second.requests.length = 0
    return Object.assign(proxy, { lines })
  }

  beforeAll(async () => {
    upstream = await startCacheServer({ root: fixtures.cacheDir })
    second = await startCacheServer({ root: fixtures.cacheDir })
  })
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.close()))
    upstream.clearFaults()
    second.clearFaults()
    upstream.requests.length = 0
    second.requests.length = 0
  })
  afterAll(async () => {
    await upstream?.close()
    await second?.close()
  })

  it('answers nix-cache-info, healthz and metrics on a port of its own choosing', async () => {
    const proxy = await start({ priority: 12 })
    expect(proxy.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    const info = await get(`${proxy.url}/nix-cache-info`)
    expect(info.status).toBe(200)
    // The upstream's nix-cache-info does not say WantMassQuery: 1, so the proxy does not either.
    expect(info.body.toString()).toBe('StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 12\n')
    expect((await get(`${proxy.url}/healthz`)).status).toBe(200)
    const metrics = await get(`${proxy.url}/metrics`)
    expect(metrics.status).toBe(200)
    expect(metrics.body.toString()).toContain('# TYPE narrace_backend_wins_total counter')
    expect((await get(`${proxy.url}/nix-cache-info`)).body.toString()).toContain('Priority: 12')
    expect(upstream.requests).toHaveLength(0)
  })

  it('closes a connection that sends nothing, or half a head, once HEADERS_TIMEOUT_MS is over, not up to 30 s later', async () => {
    const proxy = await start()
    const { port } = new URL(proxy.url)
    const closedAfter = (first: string): Promise<number> =>
      new Promise((resolve) => {
        const t0 = performance.now()
        const socket = connect(Number(port), '127.0.0.1', () => socket.write(first))
        socket.on('error', () => {})
        socket.resume()
        socket.once('close', () => resolve(performance.now() - t0))
      })
    const [silent, half] = await Promise.all([closedAfter(''), closedAfter('GET /nix-cache-info HTTP/1.1\r\nHo')])
    for (const ms of [silent, half]) {
      expect(ms).toBeGreaterThan(HEADERS_TIMEOUT_MS - 500)
      // Node checks once a second: the timeout and one check, with room for a busy machine.
      expect(ms).toBeLessThan(HEADERS_TIMEOUT_MS + 5000)
    }
  }, 30_000)

  it('serves the narinfo text unchanged, for GET and HEAD, checked against the trusted key', async () => {
    const proxy = await start({ trustedPublicKeys: [fixtures.publicKey] })
    const answer = await get(`${proxy.url}/${small.hashPart}.narinfo`)
    expect(answer.status).toBe(200)
    expect(answer.headers['content-type']).toBe('text/x-nix-narinfo')
    expect(answer.body.toString()).toBe(fixtures.narinfoText('small'))
    const head = await get(`${proxy.url}/${small.hashPart}.narinfo`, { method: 'HEAD' })
    expect(head.status).toBe(200)
    expect(head.body).toHaveLength(0)
    expect((await get(`${proxy.url}/${'0'.repeat(32)}.narinfo`)).status).toBe(404)
  })

  it('answers a narinfo it found from memory, and asks again for one it did not', async () => {
    const proxy = await start()
    for (let i = 0; i < 3; i++) expect((await get(`${proxy.url}/${small.hashPart}.narinfo`)).status).toBe(200)
    for (let i = 0; i < 2; i++) expect((await get(`${proxy.url}/${'0'.repeat(32)}.narinfo`)).status).toBe(404)
    expect(upstream.requests.map((r) => r.path)).toEqual([
      `/${small.hashPart}.narinfo`,
      `/${'0'.repeat(32)}.narinfo`,
      `/${'0'.repeat(32)}.narinfo`,
    ])
    const uncached = await start({ narInfoTtlMs: 0 })
    upstream.requests.length = 0
    for (let i = 0; i < 2; i++) await get(`${uncached.url}/${small.hashPart}.narinfo`)
    expect(upstream.requests).toHaveLength(2)
  })

  it('refuses a narinfo that no trusted key signed', async () => {
    const proxy = await start({ trustedPublicKeys: ['other-1:YZ/zkSVchtgpVRzyLLqyMFCKorcByGwjUXf5v27jw9s='] })
    expect((await get(`${proxy.url}/${small.hashPart}.narinfo`)).status).toBe(404)
  })

  it('answers 503, never 404, when the caches answer a narinfo with garbage or another path: a broken cache is no miss', async () => {
    const proxy = await start({ narInfoTtlMs: 0 })
    const other = fixtures.path('200k')
    for (const body of ['<html>Service Unavailable</html>\n', 'StorePath: nonsense\n', `StorePath: ${other.storePath}\nURL: ${other.url}\n`]) {
      upstream.setFaults({ body }, /\.narinfo$/)
      const answer = await get(`${proxy.url}/${small.hashPart}.narinfo`)
      expect(answer.status).toBe(503)
    }
  })

  it('answers 504 when no upstream finishes a narinfo within narInfoTimeoutMs', async () => {
    const proxy = await start({ narInfoTimeoutMs: 100 })
    upstream.setFaults({ firstByteDelayMs: 5_000 })
    const answer = await get(`${proxy.url}/${small.hashPart}.narinfo`)
    expect(answer.status).toBe(504)
  })

  it('answers 503 for a narinfo when no upstream can be reached: an outage, never "not here"', async () => {
    const proxy = await start({ upstreams: [await refusedUrl()] })
    expect((await get(`${proxy.url}/${small.hashPart}.narinfo`)).status).toBe(503)
  })

  it('streams a NAR with its Content-Length after the narinfo, and logs one line for it', async () => {
    const index = openIndex()
    const proxy = await start({ index })
    expect((await get(`${proxy.url}/${big.hashPart}.narinfo`)).status).toBe(200)
    expect(index.get(big.fileHash)).toMatchObject({ size: big.fileSize, storePath: big.storePath })
    expect(index.upstreamUrls(big.fileHash)).toEqual(new Map([[upstream.url, big.url]]))
    const answer = await get(`${proxy.url}/${big.url}`)
    expect(answer.error).toBeUndefined()
    expect(answer.status).toBe(200)
    expect(answer.headers['content-length']).toBe(String(big.fileSize))
    expect(sha256(answer.body)).toBe(big.fileHashHex)
    const line = proxy.lines.find((l) => l.msg === 'nar')
    expect(line).toMatchObject({ outcome: 'ok', winner: upstream.url, size: big.fileSize, tried: [upstream.url] })
    expect(typeof line?.ms).toBe('number')
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_backend_wins_total', `backend="${upstream.url}"`)).toBe(1)
    expect(sample(metrics, 'narrace_backend_bytes_total', `backend="${upstream.url}"`)).toBe(big.fileSize)
    expect(sample(metrics, 'narrace_backend_first_byte_seconds_count', `backend="${upstream.url}"`)).toBe(1)
    index.close()
  })

  it('fetches a NAR named by its FileHash without a narinfo first', async () => {
    const proxy = await start()
    const answer = await get(`${proxy.url}/${small.url}`)
    expect(answer.status).toBe(200)
    expect(sha256(answer.body)).toBe(small.fileHashHex)
    expect((await get(`${proxy.url}/nar/${'0'.repeat(52)}.nar.xz`)).status).toBe(404)
    const head = await get(`${proxy.url}/${small.url}`, { method: 'HEAD' })
    expect(head.status).toBe(200)
    expect(head.headers['content-length']).toBe(String(small.fileSize))
    expect(head.body).toHaveLength(0)
  })

  it('answers HEAD for a NAR from the narinfo and one byte of one upstream, without a race', async () => {
    // At this rate the whole file would take seconds; HEAD must not wait for it even below verifyFirstBelow.
    upstream.setFaults({ bytesPerSecond: 1_000_000 }, big.url)
    const proxy = await start({ verifyFirstBelow: 64 * 1024 * 1024 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    const head = await get(`${proxy.url}/${big.url}`, { method: 'HEAD' })
    expect(head.status).toBe(200)
    expect(head.headers['content-length']).toBe(String(big.fileSize))
    expect(head.body).toHaveLength(0)
    expect(upstream.requests.filter((r) => r.path === `/${big.url}`).map((r) => r.range)).toEqual(['bytes=0-0'])
    await until(() => proxy.lines.some((l) => l.msg === 'nar'))
    expect(proxy.lines.find((l) => l.msg === 'nar')).toMatchObject({ method: 'HEAD', outcome: 'ok' })
  })


  it('costs nothing for a refused first upstream', async () => {
    const proxy = await start({ upstreams: [await refusedUrl(), second.url] })
    expect((await get(`${proxy.url}/${small.hashPart}.narinfo`)).status).toBe(200)
    const answer = await get(`${proxy.url}/${small.url}`)
    expect(answer.status).toBe(200)
    expect(sha256(answer.body)).toBe(small.fileHashHex)
  })

  it('falls over invisibly when a small NAR is corrupt at one upstream, and counts the mismatch', async () => {
    upstream.setFaults({ flipByteAt: 10 }, small.url)
    // The corrupt copy answers first; the good one only after it.
    second.setFaults({ firstByteDelayMs: 100 }, small.url)
    const proxy = await start({ upstreams: [upstream.url, second.url] })
    await get(`${proxy.url}/${small.hashPart}.narinfo`)
    const answer = await get(`${proxy.url}/${small.url}`)
    expect(answer.status).toBe(200)
    expect(answer.error).toBeUndefined()
    expect(sha256(answer.body)).toBe(small.fileHashHex)
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_hash_mismatches_total', `backend="${upstream.url}"`)).toBe(1)
  })

  it('answers 502 when every copy of a small NAR is corrupt', async () => {
    upstream.setFaults({ flipByteAt: 10 }, small.url)
    const proxy = await start()
    await get(`${proxy.url}/${small.hashPart}.narinfo`)
    const answer = await get(`${proxy.url}/${small.url}`)
    expect(answer.status).toBe(502)
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_hash_mismatches_total')).toBe(1)
    expect(sample(metrics, 'narrace_nar_requests_total', 'outcome="hash_mismatch"')).toBe(1)
  })

  it('cuts the connection when a large NAR fails verification, so the client never gets the whole file', async () => {
    upstream.setFaults({ flipByteAt: big.fileSize - 1 }, big.url)
    const proxy = await start({ verifyFirstBelow: 1024 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    const answer = await get(`${proxy.url}/${big.url}`)
    expect(answer.status).toBe(200)
    expect(answer.error).toBeDefined()
    expect(answer.body.length).toBeLessThan(big.fileSize)
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_hash_mismatches_total', `backend="${upstream.url}"`)).toBe(1)
    expect(proxy.lines.find((l) => l.msg === 'nar')).toMatchObject({ outcome: 'hash_mismatch' })
  })

  it('cuts the connection when the only source dies halfway', async () => {
    upstream.setFaults({ cutAfter: 1_000_000 }, big.url)
    const proxy = await start({ verifyFirstBelow: 0 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    const answer = await get(`${proxy.url}/${big.url}`)
    expect(answer.error).toBeDefined()
    expect(answer.body.length).toBeLessThan(big.fileSize)
  })

  it('aborts the race when the client goes away', async () => {
    upstream.setFaults({ bytesPerSecond: 200_000 }, big.url)
    const proxy = await start({ verifyFirstBelow: 0 })
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    const controller = new AbortController()
    const pending = get(`${proxy.url}/${big.url}`, { signal: controller.signal }).catch((error: unknown) => error)
    await until(() => upstream.requests.some((r) => r.path === `/${big.url}`))
    await sleep(50)
    controller.abort()
    await pending
    await until(() => upstream.requests.find((r) => r.path === `/${big.url}`)?.completed === false)
    await until(() => proxy.lines.some((l) => l.msg === 'nar'))
    expect(proxy.lines.find((l) => l.msg === 'nar')).toMatchObject({ outcome: 'aborted' })
  })

  it('leaves no socket or server open after close()', async () => {
    const sockets = (): number =>
      process.getActiveResourcesInfo().filter((kind) => kind === 'TCPSocketWrap' || kind === 'TCPServerWrap').length
    const before = sockets()
    const proxy = await start()
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    await get(`${proxy.url}/${big.url}`)
    proxies.splice(proxies.indexOf(proxy), 1)
    await proxy.close()
    await until(() => sockets() <= before)
    expect(sockets()).toBeLessThanOrEqual(before)
  })

  it('refuses bad requests at once, without asking any upstream', async () => {
    const proxy = await start()
    const port = Number(new URL(proxy.url).port)
    const targets = [
      '/nar/../x',
      '/nar/%2e%2e/x',
      '/%2e%2e/%2e%2e/etc/passwd',
      '/nar/..%2f..%2fetc%2fpasswd',
      `/nar/${small.url.slice(4, -7)}%2enar.xz`,
      `/${small.hashPart.slice(2)}.narinfo`,
      `/${'e'.repeat(32)}.narinfo`,
      `/nar/${'e'.repeat(52)}.nar.xz`,
      `/nar/${'z'.repeat(52)}.nar.xz`,
      `/${'a'.repeat(5000)}`,
    ]
    for (const target of targets) {
      const status = await raw(port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
      expect(status, target).toMatch(/^HTTP\/1\.1 40[04] /)
    }
    const huge = await raw(port, `GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`)
    expect(huge).toMatch(/^HTTP\/1\.1 400 /)
    const longUrl = await raw(port, `GET /${'a'.repeat(40_000)}.narinfo HTTP/1.1\r\nHost: x\r\n\r\n`)
    expect(longUrl).toMatch(/^HTTP\/1\.1 400 /)
    expect((await get(`${proxy.url}/nix-cache-info`, { method: 'POST' })).status).toBe(405)
    expect((await get(`${proxy.url}/${small.url}`, { method: 'DELETE' })).status).toBe(405)
    expect((await get(`${proxy.url}/robots.txt`)).status).toBe(404)
    expect(upstream.requests).toHaveLength(0)
  })

  it('answers a NAR named by a hash part 404 when no upstream has its narinfo, 503 when none can be asked', async () => {
    const proxy = await start()
    expect((await get(`${proxy.url}/nar/${'0'.repeat(32)}.nar.xz`)).status).toBe(404)
    const down = await start({ upstreams: [await refusedUrl()] })
    expect((await get(`${down.url}/nar/${small.hashPart}.nar.xz`)).status).toBe(503)
  })

  it('shares one narinfo lookup among every request that asks at once', async () => {
    const proxy = await start()
    upstream.setFaults({ firstByteDelayMs: 200 })
    const answers = await Promise.all(Array.from({ length: 20 }, () => get(`${proxy.url}/${small.hashPart}.narinfo`)))
    expect(answers.every((a) => a.status === 200)).toBe(true)
    expect(upstream.requests.filter((r) => r.path.endsWith('.narinfo'))).toHaveLength(1)
  })

  it('still serves a NAR URL that an earlier version passed through, when the index knows it', async () => {
    // Written as older versions wrote it: the URL in the mapping itself, no per-upstream name.
    const index = openIndex()
    index.put({ fileHash: small.fileHash, size: small.fileSize, url: `nar/${small.hashPart}.nar.xz` })
    const proxy = await start({ index })
    const answer = await get(`${proxy.url}/nar/${small.hashPart}.nar.xz`)
    expect(answer.status).toBe(200)
    expect(sha256(answer.body)).toBe(small.fileHashHex)
    // Asked of the upstream under the standard name: the client's name for it goes nowhere.
    expect(upstream.requests.map((r) => r.path)).toEqual([`/${small.url}`])
  })

  it('serves a NAR whose narinfo URL does not name the FileHash, under its FileHash, fetched under the upstream\'s name', async () => {
    // Some caches name files otherwise; the signature does not cover URL, so the narinfo still verifies.
    const dir = await mkdtemp(join(tmpdir(), 'narrace-proxy-'))
    const url = `nar/${small.hashPart}.nar.xz`
    await mkdir(join(dir, 'nar'))
    await copyFile(fixtures.narPath('small'), join(dir, url))
    await writeFile(join(dir, `${small.hashPart}.narinfo`), fixtures.narinfoText('small').replace(small.url, url))
    const renamed = await startCacheServer({ root: dir })
    try {
      const proxy = await start({ upstreams: [renamed.url], trustedPublicKeys: [fixtures.publicKey] })
      const narinfo = await get(`${proxy.url}/${small.hashPart}.narinfo`)
      expect(narinfo.status).toBe(200)
      expect(narinfo.body.toString()).toBe(fixtures.narinfoText('small'))
      for (const path of [small.url, url]) {
        const answer = await get(`${proxy.url}/${path}`)
        expect(answer.status).toBe(200)
        expect(sha256(answer.body)).toBe(small.fileHashHex)
      }
      expect(renamed.requests.filter((r) => r.path.startsWith('/nar/')).map((r) => r.path)).toEqual([`/${url}`, `/${url}`])
    } finally {
      await renamed.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
