import {
  InvalidNarHashError,
  InvalidNarInfoError,
  NarBackendError,
  NarNotFoundError,
  NarUnavailableError,
  parseNarHash,
} from '@narrace/core'
import { formatNarInfo, generateSigningKey, parseNarInfo, signNarInfo } from '@narrace/narinfo'
import { gzipSync } from 'node:zlib'
import { Agent } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { refusedUrl, startCacheServer, type CacheServer } from '../../../test/support/cache-server.js'
import { fixtures } from '../../../test/fixtures/index.js'
import { fetchCacheInfo, MAX_NARINFO_BYTES, resolveNarInfo } from '../src/index.js'

const small = fixtures.path('small')
const narinfoPath = `${small.hashPart}.narinfo`
const trustedKeys = [fixtures.publicKey]

/** The small narinfo with its NarHash changed: it parses, but the signature no longer covers it. */
function tampered(): string {
  return fixtures.narinfoText('small').replace(/^NarHash: .*$/m, `NarHash: ${fixtures.path('200k').narHash}`)
}

describe('resolveNarInfo', () => {
  let honest: CacheServer
  let liar: CacheServer
  let dispatcher: Agent

  beforeAll(async () => {
    honest = await startCacheServer({ root: fixtures.cacheDir })
    liar = await startCacheServer({ root: fixtures.cacheDir })
    dispatcher = new Agent()
  })
  afterEach(() => {
    for (const s of [honest, liar]) {
      s.clearFaults()
      s.requests.length = 0
    }
  })
  afterAll(async () => {
    await dispatcher.close()
    await Promise.all([honest.close(), liar.close()])
  })

  it('returns the narinfo, the cache it came from and the text exactly as sent', async () => {
    const found = await resolveNarInfo(small.hashPart, { caches: [honest.url], trustedKeys, dispatcher })
    expect(found.cache).toBe(honest.url)
    expect(found.text).toBe(fixtures.narinfoText('small'))
    expect(found.narInfo).toMatchObject({ storePath: small.storePath, fileHash: small.fileHash, fileSize: small.fileSize })
    expect(honest.requests.map((r) => r.path)).toEqual([`/${narinfoPath}`])
  })

  it('accepts a narinfo whose NarHash the cache wrote in hex or SRI, as attic does, and passes its text on unchanged', async () => {
    const hash = parseNarHash(small.narHash)
    for (const written of [`sha256:${hash.hex}`, hash.sri]) {
      const text = fixtures.narinfoText('small').replace(/^NarHash: .*$/m, `NarHash: ${written}`)
      liar.setFaults({ body: text }, narinfoPath)
      const found = await resolveNarInfo(small.hashPart, { caches: [liar.url], trustedKeys, dispatcher })
      expect(found.text).toBe(text)
      expect(found.narInfo.narHash).toBe(written)
    }
  })

  it('a cache that answers with a bad signature loses even when it is first', async () => {
    liar.setFaults({ body: tampered() }, narinfoPath)
    honest.setFaults({ firstByteDelayMs: 100 })
    const found = await resolveNarInfo(small.hashPart, { caches: [liar.url, honest.url], trustedKeys, dispatcher })
    expect(found.cache).toBe(honest.url)
    expect(found.narInfo.narHash).toBe(small.narHash)
    expect(liar.requests.map((r) => r.status)).toEqual([200])
  })

  it('a narinfo signed by an unknown key loses; an unsigned one wins only when no key is trusted', async () => {
    const stranger = generateSigningKey('stranger-1')
    const unsigned = { ...parseNarInfo(fixtures.narinfoText('small')), sigs: [] }
    liar.setFaults({ body: formatNarInfo(signNarInfo(unsigned, stranger.secretKey)) }, narinfoPath)
    honest.setFaults({ firstByteDelayMs: 100 })
    const trusted = await resolveNarInfo(small.hashPart, { caches: [liar.url, honest.url], trustedKeys, dispatcher })
    expect(trusted.cache).toBe(honest.url)
    const untrusted = await resolveNarInfo(small.hashPart, { caches: [liar.url, honest.url], dispatcher })
    expect(untrusted.cache).toBe(liar.url)
  })

  it('garbage, a narinfo of another path, an oversized answer and binary all lose', async () => {
    honest.setFaults({ firstByteDelayMs: 100 })
    const lies: (string | Uint8Array)[] = [
      'this is not a narinfo\n',
      fixtures.narinfoText('200k'),
      `StorePath: ${small.storePath}\n${'X'.repeat(MAX_NARINFO_BYTES)}\n`,
      Uint8Array.from([0xff, 0xfe, 0x00]),
    ]
    for (const body of lies) {
      liar.setFaults({ body }, narinfoPath)
      const found = await resolveNarInfo(small.hashPart, { caches: [liar.url, honest.url], dispatcher })
      expect(found.cache).toBe(honest.url)
    }
  })

  it('a dead cache and a slow one do not hold back a healthy one, and the slow one is aborted', async () => {
    liar.setFaults({ firstByteDelayMs: 5000 })
    const dead = await refusedUrl()
    const found = await resolveNarInfo(small.hashPart, { caches: [dead, liar.url, honest.url], trustedKeys, dispatcher })
    expect(found.cache).toBe(honest.url)
    await expect.poll(() => liar.requests.map((r) => r.completed)).toEqual([false])
  })

  it('decodes a narinfo sent with a Content-Encoding anyway', async () => {
    liar.setFaults(
      { body: gzipSync(fixtures.narinfoText('small')), headers: { 'content-encoding': 'gzip' } },
      narinfoPath,
    )
    const found = await resolveNarInfo(small.hashPart, { caches: [liar.url], trustedKeys, dispatcher })
    expect(found.text).toBe(fixtures.narinfoText('small'))
  })

  it('rejects with NarNotFoundError when every cache says 404, 403 or 410', async () => {
    honest.setFaults({ status: 410 })
    const missing = 'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz'
    const error = await resolveNarInfo(missing, { caches: [liar.url, honest.url], dispatcher }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarNotFoundError)
    expect((error as NarNotFoundError).errors).toHaveLength(2)
  })

  it('otherwise rejects with NarUnavailableError saying why each cache failed', async () => {
    honest.setFaults({ status: 500 })
    liar.setFaults({ body: tampered() }, narinfoPath)
    const dead = await refusedUrl()
    const error = await resolveNarInfo(small.hashPart, { caches: [liar.url, honest.url, dead], trustedKeys, dispatcher })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    expect((error as NarUnavailableError).code).toBe('NARRACE_UNAVAILABLE')
    expect((error as NarUnavailableError).errors).toEqual(((error as Error).cause as AggregateError).errors)
    const errors = ((error as Error).cause as AggregateError).errors
    expect(errors[0]).toBeInstanceOf(InvalidNarInfoError)
    expect(errors[1]).toMatchObject({ code: 'NARRACE_BACKEND', status: 500 })
    expect((errors[2] as Error).message).toMatch(/ECONNREFUSED/)
    expect((error as Error).message).toMatch(/signature/)
  })

  it('rejects with InvalidNarInfoError when the caches that answered all lied', async () => {
    honest.setFaults({ status: 404 })
    // Only a narinfo that lacks a trusted signature, beside "not here", counts as untrusted; garbage does not.
    for (const [body, untrusted] of [[tampered(), true], ['garbage\n', false]] as const) {
      liar.setFaults({ body }, narinfoPath)
      const error = await resolveNarInfo(small.hashPart, { caches: [liar.url, honest.url], trustedKeys, dispatcher })
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidNarInfoError)
      expect((error as InvalidNarInfoError).code).toBe('NARRACE_INVALID_NARINFO')
      expect((error as InvalidNarInfoError).untrusted).toBe(untrusted)
      expect(((error as Error).cause as AggregateError).errors[1]).toBeInstanceOf(NarNotFoundError)
    }
  })

  it('rejects a missing caches list or a cache URL that is not http(s) before asking anyone', async () => {
    const bad = [
      undefined,
      {},
      { caches: 'http://127.0.0.1:1/' },
      { caches: ['ftp://example.org/'] },
      { caches: ['not a url'] },
    ]
    for (const options of bad) {
      const error = await resolveNarInfo(small.hashPart, options as never).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(Error)
      expect((error as Error).message).toMatch(/caches|cache URL/)
    }
    await expect(resolveNarInfo(small.hashPart, { caches: [] })).rejects.toBeInstanceOf(NarNotFoundError)
  })

  it('checks the hash part before asking anyone', async () => {
    for (const bad of ['', 'abc', small.hashPart.toUpperCase(), `${small.hashPart.slice(0, 31)}e`, small.storePath]) {
      await expect(resolveNarInfo(bad, { caches: [honest.url], dispatcher })).rejects.toBeInstanceOf(InvalidNarHashError)
    }
    expect(honest.requests).toHaveLength(0)
  })

  it('honours an abort promptly with the signal reason', async () => {
    honest.setFaults({ firstByteDelayMs: 5000 })
    const controller = new AbortController()
    const pending = resolveNarInfo(small.hashPart, { caches: [honest.url], dispatcher, signal: controller.signal })
    await expect.poll(() => honest.requests.length).toBe(1)
    controller.abort(new Error('user gave up'))
    await expect(pending).rejects.toThrow('user gave up')
    await expect.poll(() => honest.requests.map((r) => r.completed)).toEqual([false])
  })

  it('works under a path prefix and with the shared default dispatcher', async () => {
    const prefixed = await startCacheServer({ root: fixtures.cacheDir, prefix: '/some/cache' })
    try {
      const found = await resolveNarInfo(small.hashPart, { caches: [prefixed.url.replace(/\/$/, '')], trustedKeys })
      expect(found.narInfo.storePath).toBe(small.storePath)
      expect(prefixed.requests.map((r) => r.path)).toEqual([`/some/cache/${narinfoPath}`])
    } finally {
      await prefixed.close()
    }
  })
})

describe('fetchCacheInfo', () => {
  it("reads a cache's nix-cache-info", async () => {
    const server = await startCacheServer({ root: fixtures.cacheDir })
    const dispatcher = new Agent()
    try {
      const info = await fetchCacheInfo(server.url, { dispatcher })
      expect(info.storeDir).toBe('/nix/store')
      server.setFaults({ status: 404 })
      await expect(fetchCacheInfo(server.url, { dispatcher })).rejects.toBeInstanceOf(NarNotFoundError)
      server.setFaults({ body: 'StoreDir /nix/store\n' })
      await expect(fetchCacheInfo(server.url, { dispatcher })).rejects.toBeInstanceOf(InvalidNarInfoError)
    } finally {
      await dispatcher.close()
      await server.close()
    }
  })
})
