import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'
import { refusedPort, startCacheServer, type CacheServer } from './support/cache-server.js'

const mid = fixtures.path('200k')

async function get(url: string, headers: Record<string, string> = {}) {
  const response = await fetch(url, { headers })
  return { status: response.status, headers: response.headers, body: Buffer.from(await response.arrayBuffer()) }
}

describe('the fault-injecting cache server', () => {
  let server: CacheServer
  let whole: Buffer

  beforeAll(async () => {
    server = await startCacheServer({ root: fixtures.cacheDir, prefix: '/c/' })
    whole = await readFile(fixtures.narPath('200k'))
  })
  afterEach(() => {
    server.clearFaults()
    server.requests.length = 0
  })
  afterAll(async () => {
    await server.close()
  })

  it('serves the cache under its prefix with content types, and nothing outside it', async () => {
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/c/`)
    const info = await get(`${server.url}nix-cache-info`)
    expect(info.status).toBe(200)
    expect(info.body.toString()).toMatch(/^StoreDir: \/nix\/store$/m)
    const narinfo = await get(`${server.url}${mid.hashPart}.narinfo`)
    expect(narinfo.headers.get('content-type')).toBe('text/x-nix-narinfo')
    expect(narinfo.body.toString()).toBe(fixtures.narinfoText('200k'))
    const nar = await get(`${server.url}${mid.url}`)
    expect(createHash('sha256').update(nar.body).digest('hex')).toBe(mid.fileHashHex)
    expect((await get(`http://127.0.0.1:${server.port}/${mid.url}`)).status).toBe(404)
    expect((await get(`${server.url}..%2F..%2Fcache.json`)).status).toBe(404)
    expect(server.requests.map((r) => r.status)).toEqual([200, 200, 200, 404, 404])
  })

  it('answers every Range form with 206, an unsatisfiable one with 416, and ignores it when told', async () => {
    const url = `${server.url}${mid.url}`
    const from = await get(url, { range: 'bytes=1000-' })
    expect(from.status).toBe(206)
    expect(from.headers.get('content-range')).toBe(`bytes 1000-${mid.fileSize - 1}/${mid.fileSize}`)
    expect(from.body.equals(whole.subarray(1000))).toBe(true)
    expect((await get(url, { range: 'bytes=10-19' })).body.equals(whole.subarray(10, 20))).toBe(true)
    expect((await get(url, { range: 'bytes=-5' })).body.equals(whole.subarray(-5))).toBe(true)
    expect((await get(url, { range: `bytes=${mid.fileSize}-` })).status).toBe(416)
    server.setFaults({ noRange: true })
    const ignored = await get(url, { range: 'bytes=1000-' })
    expect(ignored.status).toBe(200)
    expect(ignored.body.equals(whole)).toBe(true)
    expect(server.requests.map((r) => r.range)).toEqual([
      'bytes=1000-',
      'bytes=10-19',
      'bytes=-5',
      `bytes=${mid.fileSize}-`,
      'bytes=1000-',
    ])
  })

  it('applies faults per path, by string or pattern, over the global ones', async () => {
    server.setFaults({ status: 500 })
    server.setFaults({ status: 410 }, `/${mid.hashPart}.narinfo`)
    server.setFaults({ flipByteAt: 3 }, /\.nar\.xz$/)
    expect((await get(`${server.url}nix-cache-info`)).status).toBe(500)
    expect((await get(`${server.url}${mid.hashPart}.narinfo`)).status).toBe(410)
    server.setFaults({})
    const flipped = (await get(`${server.url}${mid.url}`)).body
    expect(flipped[3]).toBe(whole[3]! ^ 0xff)
    const others = (b: Buffer) => Buffer.concat([b.subarray(0, 3), b.subarray(4)])
    expect(others(flipped).equals(others(whole))).toBe(true)
    server.setFaults({ body: 'lies\n', headers: { 'x-lie': '1' } }, `${mid.hashPart}.narinfo`)
    const lie = await get(`${server.url}${mid.hashPart}.narinfo`)
    expect([lie.body.toString(), lie.headers.get('x-lie')]).toEqual(['lies\n', '1'])
  })

  it('cuts a connection after N bytes, and close() ends one that hangs', async () => {
    server.setFaults({ cutAfter: 1000 }, mid.url)
    await expect(get(`${server.url}${mid.url}`)).rejects.toThrow()
    expect(server.requests[0]!.completed).toBe(false)

    const other = await startCacheServer({ root: fixtures.cacheDir, faults: { hangAfter: 1000 } })
    const response = await fetch(`${other.url}${mid.url}`)
    const reader = response.body!.getReader()
    const first = await reader.read()
    expect(first.value!.length).toBeLessThanOrEqual(1000)
    const rest = (async () => {
      for (let read = first; !read.done; read = await reader.read());
    })()
    await other.close()
    await expect(rest).rejects.toThrow()
  })

  it('slows the first byte and the rate', async () => {
    server.setFaults({ firstByteDelayMs: 50, bytesPerSecond: 2_000_000 }, mid.url)
    const started = performance.now()
    const nar = await get(`${server.url}${mid.url}`)
    expect(nar.body.equals(whole)).toBe(true)
    // 200 kB at 2 MB/s plus 50 ms: a floor, never a ceiling.
    expect(performance.now() - started).toBeGreaterThanOrEqual(100)
  })

  it('reserves a port that refuses connections', async () => {
    const port = await refusedPort()
    const error = await new Promise<NodeJS.ErrnoException>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => {
        socket.destroy()
        reject(new Error('connected'))
      })
      socket.once('error', resolve)
    })
    expect(error.code).toBe('ECONNREFUSED')
  })
})
