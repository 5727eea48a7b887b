import {
  NarBackendError,
  NarHashMismatchError,
  NarNotFoundError,
  NarSizeMismatchError,
  NarUnavailableError,
  parseNarHash,
  resolveNar,
  type NarBackend,
  type NarStream,
} from '@narrace/core'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { refusedUrl, startCacheServer, type CacheServer } from '../../../test/support/cache-server.js'
import { fixtures } from '../../../test/fixtures/index.js'
import { httpBackend, MAX_REDIRECTS, type HttpBackend } from '../src/index.js'

const big = fixtures.path('900k')
const mid = fixtures.path('200k')
const hash = (name: string) => parseNarHash(fixtures.path(name).fileHash)

async function drain(stream: NarStream): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  for await (const chunk of stream) chunks.push(chunk)
  return Buffer.concat(chunks)
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex')

describe('httpBackend', () => {
  let a: CacheServer
  let b: CacheServer
  let prefixed: CacheServer
  const backends: HttpBackend[] = []
  const backend = (url: string, name?: string): HttpBackend => {
    const made = httpBackend(name ? { url, name } : { url })
    backends.push(made)
    return made
  }

  beforeAll(async () => {
    a = await startCacheServer({ root: fixtures.cacheDir })
    b = await startCacheServer({ root: fixtures.cacheDir })
    prefixed = await startCacheServer({ root: fixtures.cacheDir, prefix: '/cache/' })
  })
  afterEach(() => {
    for (const s of [a, b, prefixed]) {
      s.clearFaults()
      s.requests.length = 0
    }
  })
  afterAll(async () => {
    await Promise.all(backends.map((x) => x.close()))
    await Promise.all([a, b, prefixed].map((s) => s.close()))
  })

  it('streams a NAR that verifies, over one keep-alive pool, without decoding', async () => {
    const cache = backend(a.url)
    expect(cache.name).toBe(a.url)
    for (let i = 0; i < 2; i++) {
      const stream = await resolveNar(big.fileHash, { backends: [cache], size: big.fileSize })
      const bytes = await drain(stream)
      expect(sha256(bytes)).toBe(big.fileHashHex)
    }
    expect(a.requests.map((r) => [r.path, r.status])).toEqual([
      [`/${big.url}`, 200],
      [`/${big.url}`, 200],
    ])
    expect(a.requests[0]!.headers['accept-encoding']).toBe('identity')
    expect(a.requests[0]!.range).toBeUndefined()
  })

  it('passes the bytes on as stored when the server labels them with a Content-Encoding', async () => {
    const cache = backend(a.url)
    a.setFaults({ headers: { 'content-encoding': 'gzip' } }, mid.url)
    const stream = await resolveNar(mid.fileHash, { backends: [cache], size: mid.fileSize })
    expect(sha256(await drain(stream))).toBe(mid.fileHashHex)
  })

  it('fetches nar/<nix32>.nar.xz without a URL, the narinfo URL relative to a prefixed cache, or absolute on an allowed origin', async () => {
    const cache = httpBackend({ url: prefixed.url.replace(/\/$/, ''), name: 'prefixed', allowedOrigins: [a.url] })
    backends.push(cache)
    const controller = new AbortController()
    const source = await cache.fetch(hash('small'), { signal: controller.signal })
    expect(source).toMatchObject({ offset: 0, size: fixtures.path('small').fileSize })
    const stream = await resolveNar(mid.fileHash, { backends: [cache], url: mid.url })
    expect(sha256(await drain(stream))).toBe(mid.fileHashHex)
    controller.abort()
    expect(prefixed.requests.map((r) => r.path)).toEqual([`/cache/${fixtures.path('small').url}`, `/cache/${mid.url}`])
    const absolute = await resolveNar(mid.fileHash, { backends: [cache], url: `${a.url}${mid.url}` })
    expect(sha256(await drain(absolute))).toBe(mid.fileHashHex)
    expect(a.requests.map((r) => r.path)).toEqual([`/${mid.url}`])
  })

  it('sends Range from an offset: 206 continues there, a server without Range restarts at 0', async () => {
    const cache = backend(a.url)
    const whole = await readFile(fixtures.narPath('200k'))
    const signal = new AbortController().signal
    const partial = await cache.fetch(hash('200k'), { signal, offset: 1000, size: mid.fileSize })
    expect(partial).toMatchObject({ offset: 1000, size: mid.fileSize })
    const rest: Uint8Array[] = []
    for await (const chunk of partial.body) rest.push(chunk)
    expect(Buffer.concat(rest).equals(whole.subarray(1000))).toBe(true)

    a.setFaults({ noRange: true })
    const restarted = await cache.fetch(hash('200k'), { signal, offset: 1000, size: mid.fileSize })
    expect(restarted).toMatchObject({ offset: 0, size: mid.fileSize })
    for await (const _ of restarted.body) break
    expect(a.requests.map((r) => [r.range, r.status])).toEqual([
      ['bytes=1000-', 206],
      ['bytes=1000-', 200],
    ])
  })

  it('asks for a range with end, says it serves ranges on a 206, and not when the server ignores Range', async () => {
    const cache = backend(a.url)
    const whole = await readFile(fixtures.narPath('200k'))
    const signal = new AbortController().signal
    const part = await cache.fetch(hash('200k'), { signal, offset: 1000, end: 5000, size: mid.fileSize })
    expect(part).toMatchObject({ offset: 1000, size: mid.fileSize, ranges: true })
    const bytes: Uint8Array[] = []
    for await (const chunk of part.body) bytes.push(chunk)
    expect(Buffer.concat(bytes).equals(whole.subarray(1000, 5000))).toBe(true)
    const head = await cache.fetch(hash('200k'), { signal, offset: 0, end: 10, size: mid.fileSize })
    expect(head).toMatchObject({ offset: 0, ranges: true })
    for await (const _ of head.body) break

    a.setFaults({ noRange: true })
    const ignored = await cache.fetch(hash('200k'), { signal, offset: 1000, end: 5000, size: mid.fileSize })
    expect(ignored).toMatchObject({ offset: 0, ranges: false })
    for await (const _ of ignored.body) break
    expect(a.requests.map((r) => [r.range, r.status])).toEqual([
      ['bytes=1000-4999', 206],
      ['bytes=0-9', 206],
      ['bytes=1000-4999', 200],
    ])
  })

  it('stripes one NAR over two caches, byte-exact', async () => {
    const backends = [backend(a.url, 'a'), backend(b.url, 'b')]
    const stream = await resolveNar(big.fileHash, {
      backends,
      size: big.fileSize,
      stripeAbove: 0,
      maxBufferBytes: 128 * 1024,
    })
    expect(sha256(await drain(stream))).toBe(big.fileHashHex)
    expect([...stream.sources].sort()).toEqual(['a', 'b'])
    const ranged = [...a.requests, ...b.requests].filter((r) => /^bytes=\d+-\d+$/.test(r.range ?? ''))
    expect(ranged.length).toBeGreaterThan(2)
    expect(ranged.every((r) => r.status === 206)).toBe(true)
  })

  it('maps 403, 404 and 410 to NarNotFoundError and 500 to NarBackendError with the status', async () => {
    const cache = backend(a.url)
    const signal = new AbortController().signal
    for (const status of [403, 404, 410]) {
      a.setFaults({ status })
      await expect(cache.fetch(hash('small'), { signal })).rejects.toBeInstanceOf(NarNotFoundError)
    }
    a.setFaults({ status: 500 })
    const error = await cache.fetch(hash('small'), { signal }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarBackendError)
    expect(error).toMatchObject({ code: 'NARRACE_BACKEND', status: 500, backend: a.url })
    a.clearFaults()
    await expect(
      cache.fetch(parseNarHash('sha256:' + '0'.repeat(52)), { signal }),
    ).rejects.toBeInstanceOf(NarNotFoundError)
  })

  it('fails a refused connection fast with NarBackendError', async () => {
    const cache = backend(await refusedUrl())
    const error = await cache.fetch(hash('small'), { signal: new AbortController().signal }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarBackendError)
    expect((error as Error).message).toMatch(/ECONNREFUSED/)
  })

  it('fails a connect that does not complete within connectTimeoutMs', async () => {
    // A TCP server that accepts and never speaks: the TLS handshake of an https URL never ends.
    const silent = createServer(() => {})
    const sockets = new Set<Socket>()
    silent.on('connection', (socket) => sockets.add(socket))
    silent.listen(0, '127.0.0.1')
    await once(silent, 'listening')
    const { port } = silent.address() as AddressInfo
    const cache = httpBackend({ url: `https://127.0.0.1:${port}/`, connectTimeoutMs: 200 })
    try {
      const error = await cache.fetch(hash('small'), { signal: new AbortController().signal }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(NarBackendError)
      expect((error as Error).message).toMatch(/connect timeout/)
    } finally {
      await cache.close()
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => silent.close(resolve))
    }
  })

  it('refuses a connectTimeoutMs that setTimeout would turn into 1 ms', () => {
    for (const connectTimeoutMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, '100' as never]) {
      expect(() => httpBackend({ url: a.url, connectTimeoutMs })).toThrow(RangeError)
    }
  })

  it('rejects a Content-Length that contradicts the narinfo size before any byte', async () => {
    const cache = backend(a.url)
    const error = await cache
      .fetch(hash('small'), { signal: new AbortController().signal, size: fixtures.path('small').fileSize + 1 })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarSizeMismatchError)
    expect(error).toMatchObject({ expected: fixtures.path('small').fileSize + 1, actual: fixtures.path('small').fileSize })
  })

  it('rejects a URL that is not http(s): the cache URL when it is made, a NAR URL when asked', async () => {
    expect(() => httpBackend({ url: 'ftp://127.0.0.1/' })).toThrow(NarBackendError)
    expect(() => httpBackend({ url: 'not a url' })).toThrow(NarBackendError)
    expect(() => httpBackend(undefined as never)).toThrow(NarBackendError)
    expect(() => httpBackend({} as never)).toThrow(NarBackendError)
    const signal = new AbortController().signal
    await expect(backend(a.url).fetch(hash('small'), { signal, url: 'file:///etc/hostname' })).rejects.toBeInstanceOf(
      NarBackendError,
    )
    expect(a.requests).toHaveLength(0)
  })

  it('follows redirects, also to an allowed origin, without credentials there, and at most MAX_REDIRECTS', async () => {
    const cache = httpBackend({ url: prefixed.url, headers: { authorization: 'Bearer t' }, allowedOrigins: [a.url] })
    backends.push(cache)
    prefixed.setFaults({ status: 302, headers: { location: `/cache/moved/${mid.url}` } }, mid.url)
    prefixed.setFaults({ status: 307, headers: { location: `${a.url}${mid.url}` } }, `moved/${mid.url}`)
    const stream = await resolveNar(mid.fileHash, { backends: [cache], url: mid.url, size: mid.fileSize })
    expect(sha256(await drain(stream))).toBe(mid.fileHashHex)
    expect(prefixed.requests.map((r) => [r.path, r.status, r.headers.authorization])).toEqual([
      [`/cache/${mid.url}`, 302, 'Bearer t'],
      [`/cache/moved/${mid.url}`, 307, 'Bearer t'],
    ])
    expect(a.requests.map((r) => [r.path, r.status, r.headers.authorization])).toEqual([[`/${mid.url}`, 200, undefined]])

    prefixed.requests.length = 0
    prefixed.setFaults({ status: 302, headers: { location: `/cache/hop/0/${mid.url}` } }, mid.url)
    for (let i = 0; i <= MAX_REDIRECTS; i++) {
      prefixed.setFaults({ status: 302, headers: { location: `/cache/hop/${i + 1}/${mid.url}` } }, `hop/${i}/${mid.url}`)
    }
    const chain = await cache.fetch(hash('200k'), { signal: new AbortController().signal }).catch((e: unknown) => e)
    expect(chain).toBeInstanceOf(NarBackendError)
    expect((chain as Error).message).toMatch(/more than 5 redirects/)
    expect(prefixed.requests.length).toBe(1 + MAX_REDIRECTS)

    prefixed.requests.length = 0
    prefixed.setFaults({ status: 302, headers: { location: `/cache/${mid.url}` } }, mid.url)
    const loop = await cache.fetch(hash('200k'), { signal: new AbortController().signal }).catch((e: unknown) => e)
    expect(loop).toBeInstanceOf(NarBackendError)
    expect((loop as Error).message).toMatch(/redirect loop/i)
    expect(prefixed.requests.length).toBe(1)
  })

  it('takes a call without a signal or with a hash string, and refuses a NAR URL that does not parse', async () => {
    const cache = backend(a.url)
    const small = fixtures.path('small')
    const source = await cache.fetch(small.fileHash as never, {} as never)
    expect(source).toMatchObject({ offset: 0, size: small.fileSize })
    const bytes: Uint8Array[] = []
    for await (const chunk of source.body) bytes.push(chunk)
    expect(sha256(Buffer.concat(bytes))).toBe(small.fileHashHex)
    const signal = new AbortController().signal
    await expect(cache.fetch(hash('small'), { signal, url: 'http://[::1' })).rejects.toBeInstanceOf(NarBackendError)
    expect(a.requests.map((r) => r.path)).toEqual([`/${small.url}`])
  })

  it('sends extra headers', async () => {
    const cache = httpBackend({ url: a.url, headers: { authorization: 'Bearer t' } })
    backends.push(cache)
    const source = await cache.fetch(hash('small'), { signal: new AbortController().signal })
    for await (const _ of source.body) break
    expect(a.requests[0]!.headers.authorization).toBe('Bearer t')
  })

  it('ends the request when the consumer leaves the loop or aborts', async () => {
    const cache = backend(a.url)
    a.setFaults({ bytesPerSecond: 100_000 })
    const stream = await resolveNar(big.fileHash, { backends: [cache], size: big.fileSize })
    for await (const _ of stream) break
    const controller = new AbortController()
    const source = await cache.fetch(hash('900k'), { signal: controller.signal })
    const iterator = source.body[Symbol.asyncIterator]()
    await iterator.next()
    controller.abort(new Error('stop'))
    await expect(iterator.next()).rejects.toThrow('stop')
    // At 100 kB/s the server would send for 9 s more: it sees both clients go away instead.
    await expect.poll(() => a.requests.map((r) => r.completed)).toEqual([false, false])
  })
})

describe('resolveNar over faulty caches', () => {
  let a: CacheServer
  let b: CacheServer
  const made: HttpBackend[] = []
  let first: HttpBackend
  let second: HttpBackend
  /** `first` wins the first race: `second` starts only on fail-over (core waits out a hedge even when the rest failed). */
  const hedge = () => ({ [second.name]: 60_000 })

  beforeAll(async () => {
    a = await startCacheServer({ root: fixtures.cacheDir })
    b = await startCacheServer({ root: fixtures.cacheDir })
    first = httpBackend({ url: a.url, name: 'a' })
    second = httpBackend({ url: b.url, name: 'b' })
    made.push(first, second)
  })
  afterEach(() => {
    for (const s of [a, b]) {
      s.clearFaults()
      s.requests.length = 0
    }
  })
  afterAll(async () => {
    await Promise.all(made.map((x) => x.close()))
    await Promise.all([a, b].map((s) => s.close()))
  })

  it('a slow first byte loses the race to a fast cache, and still delivers alone', async () => {
    a.setFaults({ firstByteDelayMs: 5000 })
    const raced = await resolveNar(mid.fileHash, { backends: [first, second], size: mid.fileSize })
    expect(sha256(await drain(raced))).toBe(mid.fileHashHex)
    expect(raced.winner).toBe('b')
    a.setFaults({ firstByteDelayMs: 300 })
    const alone = await resolveNar(mid.fileHash, { backends: [first], size: mid.fileSize })
    expect(sha256(await drain(alone))).toBe(mid.fileHashHex)
  })

  it('a slow rate is not a stall: every byte arrives and verifies', async () => {
    a.setFaults({ bytesPerSecond: 1_000_000 })
    const stream = await resolveNar(mid.fileHash, { backends: [first], size: mid.fileSize, stallTimeoutMs: 2000 })
    expect(sha256(await drain(stream))).toBe(mid.fileHashHex)
    expect(stream.sources).toEqual(['a'])
  })

  it('a connection cut halfway fails over with a Range resume at the bytes already read', async () => {
    a.setFaults({ cutAfter: Math.floor(big.fileSize / 2) })
    const stream = await resolveNar(big.fileHash, { backends: [first, second], size: big.fileSize, hedge: hedge() })
    expect(sha256(await drain(stream))).toBe(big.fileHashHex)
    expect(stream.sources).toEqual(['a', 'b'])
    expect(b.requests).toHaveLength(1)
    const resumed = /^bytes=(\d+)-$/.exec(b.requests[0]!.range ?? '')
    expect(resumed).not.toBeNull()
    const at = Number(resumed![1])
    expect(at).toBeGreaterThan(0)
    expect(at).toBeLessThanOrEqual(Math.floor(big.fileSize / 2))
    expect(b.requests[0]!.status).toBe(206)
  })

  it('a stream that stops and hangs fails over after stallTimeoutMs', async () => {
    a.setFaults({ hangAfter: 100_000 })
    const stream = await resolveNar(big.fileHash, {
      backends: [first, second],
      size: big.fileSize,
      hedge: hedge(),
      stallTimeoutMs: 1000,
    })
    expect(sha256(await drain(stream))).toBe(big.fileHashHex)
    expect(stream.sources).toEqual(['a', 'b'])
    expect(b.requests[0]!.range).toMatch(/^bytes=\d+-$/)
  })

  it('a fail-over to a cache without Range restarts it at 0, then Range works again', async () => {
    a.setFaults({ cutAfter: 300_000 })
    b.setFaults({ noRange: true })
    const restarted = await resolveNar(big.fileHash, { backends: [first, second], size: big.fileSize, hedge: hedge() })
    expect(sha256(await drain(restarted))).toBe(big.fileHashHex)
    expect(b.requests.map((r) => r.status)).toEqual([200])

    b.setFaults({})
    const resumed = await resolveNar(big.fileHash, { backends: [first, second], size: big.fileSize, hedge: hedge() })
    expect(sha256(await drain(resumed))).toBe(big.fileHashHex)
    expect(b.requests.map((r) => r.status)).toEqual([200, 206])
  })

  it('wrong bytes end in NarHashMismatchError', async () => {
    a.setFaults({ flipByteAt: 12_345 })
    const stream = await resolveNar(big.fileHash, { backends: [first], size: big.fileSize })
    await expect(drain(stream)).rejects.toBeInstanceOf(NarHashMismatchError)
  })

  it('a race of two caches where the first is dead goes to the second', async () => {
    const dead = httpBackend({ url: await refusedUrl(), name: 'dead' })
    made.push(dead)
    const events: string[] = []
    const stream = await resolveNar(big.fileHash, {
      backends: [dead, second],
      size: big.fileSize,
      onEvent: (e) => events.push(`${e.type}:${e.backend}`),
    })
    expect(sha256(await drain(stream))).toBe(big.fileHashHex)
    expect(stream.winner).toBe('b')
    expect(events).toContain('fail:dead')
    expect(b.requests.map((r) => [r.range, r.status])).toEqual([[undefined, 200]])
  })

  it('a 500 and a refused port both lose to a healthy cache; alone they give NarUnavailableError listing why', async () => {
    a.setFaults({ status: 500 })
    const dead = httpBackend({ url: await refusedUrl(), name: 'dead' })
    made.push(dead)
    const stream = await resolveNar(mid.fileHash, { backends: [dead, first, second], size: mid.fileSize })
    expect(sha256(await drain(stream))).toBe(mid.fileHashHex)
    expect(stream.winner).toBe('b')

    const error = await resolveNar(mid.fileHash, { backends: [dead, first] as NarBackend[], size: mid.fileSize }).catch(
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(NarUnavailableError)
    const errors = (error as NarUnavailableError).errors
    expect(errors).toHaveLength(2)
    expect(errors[0]).toBeInstanceOf(NarBackendError)
    expect(errors[1]).toMatchObject({ code: 'NARRACE_BACKEND', status: 500 })
  })
})
