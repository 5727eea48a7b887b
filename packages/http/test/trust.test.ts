import { NarBackendError, parseNarHash, resolveNar, type NarStream } from '@narrace/core'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { backendsToClose } from './backends.js'
import { startCacheServer, type CacheServer } from '../../../test/support/cache-server.js'
import { fixtures } from '../../../test/fixtures/index.js'
import { parseNetrc, resolveNarInfo, walkClosure } from '../src/index.js'

const mid = fixtures.path('200k')
const small = fixtures.path('small')
const SECRET = 'internal secret: only the machine itself may read this\n'.repeat(2000)

async function drain(stream: NarStream): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  for await (const chunk of stream) chunks.push(chunk)
  return Buffer.concat(chunks)
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex')

/** What a failed promise rejected with. */
async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise
  } catch (error) {
    return error as Error
  }
  throw new Error('expected a rejection')
}

/** A fake DNS: names in `table` resolve to the address given, anything else fails. */
function fakeLookup(table: Record<string, string>) {
  return (
    hostname: string,
    options: { all?: boolean },
    callback: (error: Error | null, address: string | { address: string; family: number }[], family?: number) => void,
  ): void => {
    const address = table[hostname]
    if (!address) {
      callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), '', 0)
      return
    }
    const family = address.includes(':') ? 6 : 4
    if (options?.all) callback(null, [{ address, family }])
    else callback(null, address, family)
  }
}

/** A private binary cache: every request needs `authorization: <expected>`, or it gets 401. */
async function startPrivateCache(expected: string): Promise<{ url: string; seen: (string | undefined)[]; close(): Promise<void> }> {
  const seen: (string | undefined)[] = []
  const server: Server = createServer((req: IncomingMessage, res) => {
    seen.push(req.headers.authorization)
    if (req.headers.authorization !== expected) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="cache"', 'content-length': 0 })
      res.end()
      return
    }
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, '')
    readFile(join(fixtures.cacheDir, path)).then(
      (bytes) => {
        res.writeHead(200, { 'content-length': bytes.length })
        res.end(bytes)
      },
      () => {
        res.writeHead(404, { 'content-length': 0 })
        res.end()
      },
    )
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

describe('the trust boundary of an HTTP cache', () => {
  let cache: CacheServer
  let internal: CacheServer
  let cdn: CacheServer
  const backends = backendsToClose()
  const backend = backends.make

  beforeAll(async () => {
    cache = await startCacheServer({ root: fixtures.cacheDir, prefix: '/cache/' })
    // Stands for a service on the proxy's own host or network, that nobody outside should read.
    internal = await startCacheServer({ root: fixtures.cacheDir, faults: { body: SECRET } })
    cdn = await startCacheServer({ root: fixtures.cacheDir })
  })
  afterEach(() => {
    for (const s of [cache, internal, cdn]) {
      s.clearFaults()
      s.requests.length = 0
    }
    internal.setFaults({ body: SECRET })
  })
  afterAll(async () => {
    await backends.closeAll()
    await Promise.all([cache, internal, cdn].map((s) => s.close()))
  })

  describe('origins', () => {
    it('refuses an absolute narinfo URL on another origin: the other host gets no request', async () => {
      const http = backend({ url: cache.url })
      const url = `${internal.url}secret`
      const error = await rejection(http.fetch(parseNarHash(mid.fileHash), { signal: new AbortController().signal, url }))
      expect(error).toBeInstanceOf(NarBackendError)
      expect(error.message).toMatch(/another origin/)
      expect(error.message).toMatch(/allowedOrigins/)
      // Through resolveNar, with a FileSize that would pass the secret through unverified until the end.
      const stream = resolveNar(mid.fileHash, { backends: [http], url, size: SECRET.length, verifyFirstBelow: 0 })
      const failed = await rejection(stream.then(drain))
      expect(failed.message).not.toContain('internal secret')
      expect(internal.requests).toEqual([])
    })

    it('refuses a redirect to another origin: the other host gets no request and nothing of it comes back', async () => {
      const http = backend({ url: cache.url })
      cache.setFaults({ status: 302, headers: { location: `${internal.url}secret` } }, mid.url)
      const stream = resolveNar(mid.fileHash, { backends: [http], url: mid.url, size: SECRET.length, verifyFirstBelow: 0 })
      const error = await rejection(stream.then(drain))
      expect(JSON.stringify(error, Object.getOwnPropertyNames(error))).not.toContain('internal secret')
      expect(internal.requests).toEqual([])
      const direct = await rejection(http.fetch(parseNarHash(mid.fileHash), { signal: new AbortController().signal, url: mid.url }))
      expect(direct).toBeInstanceOf(NarBackendError)
      expect(direct.message).toMatch(/redirect/)
      expect(direct.message).toMatch(/another origin/)
      expect(internal.requests).toEqual([])
    })

    it.each([
      'nar/../../private',
      'nar/%2e%2e/%2E%2E/private',
      'nar/.%2e/..%2E/private',
      'nar\\..\\..\\private',
      'nar/..%2f..%2fprivate',
      'nar/..%5c..%5cprivate',
      '/private',
      '../private',
      '//127.0.0.1:INTERNAL/private',
      'http://127.0.0.1:INTERNAL/private',
    ])('refuses %s, which climbs out of the cache path prefix', async (template) => {
      const url = template.replace('INTERNAL', String(internal.port))
      const http = backend({ url: cache.url })
      const error = await rejection(http.fetch(parseNarHash(mid.fileHash), { signal: new AbortController().signal, url }))
      expect(error).toBeInstanceOf(NarBackendError)
      expect(error.message).toMatch(/refused/)
      expect(cache.requests).toEqual([])
      expect(internal.requests).toEqual([])
    })

    it('refuses a redirect that climbs out of the prefix on the same host', async () => {
      const http = backend({ url: cache.url })
      cache.setFaults({ status: 302, headers: { location: '/private' } }, mid.url)
      const error = await rejection(http.fetch(parseNarHash(mid.fileHash), { signal: new AbortController().signal, url: mid.url }))
      expect(error).toBeInstanceOf(NarBackendError)
      expect(error.message).toMatch(/path prefix/)
      expect(cache.requests.map((r) => r.path)).toEqual([`/cache/${mid.url}`])
    })

    it('keeps the query string of the narinfo URL, as harmonia and snix write it, and sends nothing else', async () => {
      const http = backend({ url: cache.url })
      const stream = await resolveNar(mid.fileHash, { backends: [http], url: `${mid.url}?hash=${mid.hashPart}` })
      expect(sha256(await drain(stream))).toBe(mid.fileHashHex)
      expect(cache.requests.map((r) => r.path)).toEqual([`/cache/${mid.url}?hash=${mid.hashPart}`])
    })

    it('fetches from an origin in allowedOrigins, directly and by redirect, without the cache credentials', async () => {
      const http = backend({ url: cache.url, headers: { authorization: 'Bearer cache-token', 'x-api-key': 'k' }, allowedOrigins: [cdn.url] })
      const direct = await resolveNar(mid.fileHash, { backends: [http], url: `${cdn.url}${mid.url}` })
      expect(sha256(await drain(direct))).toBe(mid.fileHashHex)
      cache.setFaults({ status: 302, headers: { location: `${cdn.url}${mid.url}` } }, mid.url)
      const moved = await resolveNar(mid.fileHash, { backends: [http], url: mid.url })
      expect(sha256(await drain(moved))).toBe(mid.fileHashHex)
      expect(cache.requests.map((r) => [r.path, r.headers.authorization, r.headers['x-api-key']])).toEqual([
        [`/cache/${mid.url}`, 'Bearer cache-token', 'k'],
      ])
      expect(cdn.requests.map((r) => [r.path, r.headers.authorization, r.headers['x-api-key']])).toEqual([
        [`/${mid.url}`, undefined, undefined],
        [`/${mid.url}`, undefined, undefined],
      ])
    })

    it('never goes from https to http, even to an allowed origin', async () => {
      const http = backend({ url: 'https://127.0.0.1:1/cache/', allowedOrigins: [cdn.url] })
      const error = await rejection(
        http.fetch(parseNarHash(mid.fileHash), { signal: new AbortController().signal, url: `${cdn.url}${mid.url}` }),
      )
      expect(error).toBeInstanceOf(NarBackendError)
      expect(error.message).toMatch(/https/)
      expect(cdn.requests).toEqual([])
    })

    it('reaches no loopback or private address from a cache on a public one, whatever a name resolves to', async () => {
      const lookup = fakeLookup({ 'cache.test': '203.0.113.10', 'cdn.test': '127.0.0.1', 'mapped.test': '::ffff:127.0.0.1' })
      for (const origin of [`http://cdn.test:${cdn.port}`, `http://mapped.test:${cdn.port}`, `http://127.0.0.1:${cdn.port}`, `http://[::ffff:7f00:1]:${cdn.port}`]) {
        const http = backend({ url: 'http://cache.test/cache/', allowedOrigins: [origin], lookup })
        const error = await rejection(
          http.fetch(parseNarHash(mid.fileHash), { signal: new AbortController().signal, url: `${origin}/${mid.url}` }),
        )
        expect(error).toBeInstanceOf(NarBackendError)
        expect(error.message).toMatch(/loopback or private/)
      }
      expect(cdn.requests).toEqual([])
    })

    it("fails within the connect timeout when the cache's own host never resolves, with one lookup for all", async () => {
      let lookups = 0
      const silent = (): void => void lookups++
      // A fraction of a millisecond too, which AbortSignal.timeout alone refuses.
      const http = backend({ url: 'http://cache.test/cache/', allowedOrigins: [cdn.url], lookup: silent, connectTimeoutMs: 199.5 })
      const started = performance.now()
      const errors = await Promise.all(
        [0, 1, 2].map(() =>
          rejection(http.fetch(parseNarHash(mid.fileHash), { signal: new AbortController().signal, url: `${cdn.url}${mid.url}` })),
        ),
      )
      expect(performance.now() - started).toBeLessThan(5_000)
      for (const error of errors) {
        expect(error).toBeInstanceOf(NarBackendError)
        expect(error.message).toMatch(/looking up cache\.test took more than 199\.5 ms/)
      }
      // The three connects shared the one lookup still hanging.
      expect(lookups).toBe(1)
      // The next connect, after the timeout gave up on it, asks again: a resolver may drop a question.
      await rejection(http.fetch(parseNarHash(mid.fileHash), { signal: new AbortController().signal, url: `${cdn.url}${mid.url}` }))
      expect(lookups).toBe(2)
      expect(cdn.requests).toEqual([])
    })
  })

  describe('credentials', () => {
    it('sends headers only to the cache origin, never on the first hop elsewhere', async () => {
      const http = backend({ url: cache.url, headers: { authorization: 'Bearer t' }, allowedOrigins: [internal.url] })
      internal.clearFaults()
      const stream = await resolveNar(mid.fileHash, { backends: [http], url: `${internal.url}${mid.url}` })
      expect(sha256(await drain(stream))).toBe(mid.fileHashHex)
      expect(internal.requests.map((r) => r.headers.authorization)).toEqual([undefined])
    })

    it('a private cache works for narinfo and NARs with a header, with netrc, and refuses without', async () => {
      const token = 'Bearer private-token'
      const basic = `Basic ${Buffer.from('nix:s3cret pass').toString('base64')}`
      for (const [expected, config] of [
        [token, (url: string) => ({ url, headers: { Authorization: token } })],
        [basic, (url: string) => ({ url, netrc: parseNetrc('machine 127.0.0.1 login nix password "s3cret pass"\n') })],
      ] as const) {
        const server = await startPrivateCache(expected)
        try {
          const upstream = config(server.url)
          const found = await resolveNarInfo(small.hashPart, { caches: [upstream], trustedKeys: [fixtures.publicKey] })
          expect(found.cache).toBe(server.url)
          const http = backend(upstream)
          const stream = await resolveNar(small.fileHash, { backends: [http], url: found.narInfo.url, size: found.narInfo.fileSize })
          expect(sha256(await drain(stream))).toBe(small.fileHashHex)
          const walk = walkClosure([small.storePath], { caches: [upstream], trustedKeys: [fixtures.publicKey] })
          const seen: string[] = []
          for await (const entry of walk) seen.push(entry.storePath)
          expect(seen).toContain(small.storePath)
          expect(walk.missing).toEqual([])
          const refused = await rejection(resolveNarInfo(small.hashPart, { caches: [server.url] }))
          expect(refused.name).not.toBe('NarNotFoundError')
          expect(server.seen.at(-1)).toBeUndefined()
        } finally {
          await server.close()
        }
      }
    })
  })
})
