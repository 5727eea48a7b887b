import { NarBackendError, NarNotFoundError, NarStallError, NarUnavailableError, parseNarHash, resolveNar } from '@narrace/core'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { backendsToClose } from './backends.js'
import { startCacheServer, type CacheServer } from '../../../test/support/cache-server.js'
import { fixtures } from '../../../test/fixtures/index.js'
import { DEFAULT_CONNECTIONS, httpBackend, resolveNarInfo } from '../src/index.js'

const small = fixtures.path('small')
const narinfoPath = `${small.hashPart}.narinfo`

describe('connections and statuses', () => {
  let cache: CacheServer
  const backends = backendsToClose()
  const backend = backends.make

  beforeAll(async () => {
    cache = await startCacheServer({ root: fixtures.cacheDir })
  })
  afterEach(() => {
    cache.clearFaults()
    cache.requests.length = 0
  })
  afterAll(async () => {
    await backends.closeAll()
    await cache.close()
  })

  it('keeps at most `connections` requests open to the upstream at once and queues the rest', async () => {
    expect(DEFAULT_CONNECTIONS).toBe(25)
    const http = backend({ url: cache.url, connections: 2 })
    cache.setFaults({ firstByteDelayMs: 150 })
    cache.resetMaxInFlight()
    const signal = new AbortController().signal
    const sources = await Promise.all(Array.from({ length: 6 }, () => http.fetch(parseNarHash(small.fileHash), { signal })))
    for (const source of sources) for await (const _ of source.body) void _
    expect(cache.requests).toHaveLength(6)
    expect(cache.maxInFlight).toBe(2)
    expect(() => httpBackend({ url: cache.url, connections: 0 })).toThrow(RangeError)
    expect(() => httpBackend({ url: cache.url, connections: 1.5 })).toThrow(RangeError)
  })

  it('still stalls a queued request once it went out on a connection and hears nothing', async () => {
    // A server that never answers, one connection: the second download waits for the first's connection,
    // then gets it and must stall too (the watchdog starts again when the request goes out).
    const silent = createServer(() => {})
    silent.listen(0, '127.0.0.1')
    await once(silent, 'listening')
    try {
      const http = backend({ url: `http://127.0.0.1:${(silent.address() as AddressInfo).port}/`, connections: 1 })
      const cap = AbortSignal.timeout(5_000)
      const hash = parseNarHash(small.fileHash)
      const errors = await Promise.all(
        [0, 1].map(() => resolveNar(hash, { backends: [http], stallTimeoutMs: 300, signal: cap }).catch((e: unknown) => e)),
      )
      for (const error of errors) expect((error as NarUnavailableError).errors?.[0]).toBeInstanceOf(NarStallError)
    } finally {
      silent.closeAllConnections()
      silent.close()
    }
  })

  it('does not count the wait for one of its connections as a stall of the upstream', async () => {
    // One connection, each answer's first byte 250 ms late: the fifth download waits about a second for
    // the connection, well past the stall timeout, and then gets its first byte within it.
    const http = backend({ url: cache.url, connections: 1 })
    cache.setFaults({ firstByteDelayMs: 250 })
    const hash = parseNarHash(small.fileHash)
    const downloads = Array.from({ length: 5 }, async () => {
      const stream = await resolveNar(hash, { backends: [http], stallTimeoutMs: 600, size: small.fileSize })
      let bytes = 0
      for await (const chunk of stream) bytes += chunk.byteLength
      return bytes
    })
    expect(await Promise.all(downloads)).toEqual(Array(5).fill(small.fileSize))
    expect(cache.requests).toHaveLength(5)
  })

  it.each([404, 410, 403])('takes %i as "not here", for a NAR and a narinfo', async (status) => {
    const http = backend({ url: cache.url })
    cache.setFaults({ status })
    await expect(resolveNar(small.fileHash, { backends: [http] })).rejects.toBeInstanceOf(NarNotFoundError)
    await expect(resolveNarInfo(small.hashPart, { caches: [cache.url] })).rejects.toBeInstanceOf(NarNotFoundError)
  })

  it.each([500, 502, 503, 504, 429, 401])('takes %i as unavailable, never "not here", for a NAR and a narinfo', async (status) => {
    const http = backend({ url: cache.url })
    cache.setFaults({ status })
    const nar = await resolveNar(small.fileHash, { backends: [http] }).catch((e: unknown) => e)
    expect(nar).toBeInstanceOf(NarUnavailableError)
    expect((nar as NarUnavailableError).errors[0]).toMatchObject({ name: 'NarBackendError', status })
    const narinfo = await resolveNarInfo(small.hashPart, { caches: [cache.url] }).catch((e: unknown) => e)
    expect(narinfo).toBeInstanceOf(NarUnavailableError)
    expect((narinfo as NarUnavailableError).errors[0]).toBeInstanceOf(NarBackendError)
    // One cache that is down and one that says "not here": still an outage, not a miss.
    const other = await startCacheServer({ root: fixtures.cacheDir, faults: { status: 404 } })
    try {
      const mixed = await resolveNarInfo(small.hashPart, { caches: [other.url, cache.url] }).catch((e: unknown) => e)
      expect(mixed).toBeInstanceOf(NarUnavailableError)
    } finally {
      await other.close()
    }
    // A server error is an answer: it does not count against the upstream's health.
    expect(http.health.isUp()).toBe(true)
    expect(cache.requests.map((r) => r.path)).toContain(`/${narinfoPath}`)
  })
})
