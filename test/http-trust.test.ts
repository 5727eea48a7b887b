/**
 * The read-back SSRF of issue 12 through the proxy: a narinfo's URL is not signed, so an upstream (or
 * anyone on its path) can point it at a service only the proxy can reach. The narinfo still verifies;
 * the NAR must come from nowhere but the upstream's own origin and path prefix.
 */
import { parseNarInfo } from '@narrace/narinfo'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createProxy, type Proxy } from '../examples/proxy/src/index.js'
import { get } from '../examples/proxy/test/support/client.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'

/** Larger than the proxy's verify-first bound, so that it would stream it before the hash is known. */
const SECRET = Buffer.alloc(9 << 20, 'internal secret: only this machine may read it\n')

describe('the proxy reads back nothing but its upstreams', () => {
  let cache: CacheServer
  let internal: CacheServer
  const proxies: Proxy[] = []

  beforeAll(async () => {
    cache = await startCacheServer({ root: fixtures.cacheDir, prefix: '/cache/' })
    internal = await startCacheServer({ root: fixtures.cacheDir, faults: { body: SECRET } })
  })
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.close()))
    cache.clearFaults()
    cache.requests.length = 0
    internal.requests.length = 0
  })
  afterAll(async () => {
    await Promise.all([cache.close(), internal.close()])
  })

  /** The fixture narinfo of `name`, still validly signed, with the unsigned URL and FileSize an attacker chose. */
  function poisoned(name: string, url: string): string {
    return fixtures
      .narinfoText(name)
      .replace(/^URL: .*$/m, `URL: ${url}`)
      .replace(/^FileSize: .*$/m, `FileSize: ${SECRET.length}`)
  }

  const attacks: [string, (name: string) => void][] = [
    ['an absolute URL on another host', (name) => cache.setFaults({ body: poisoned(name, `${internal.url}secret`) }, `${fixtures.path(name).hashPart}.narinfo`)],
    [
      'a redirect to another host',
      (name) => {
        const path = fixtures.path(name)
        cache.setFaults({ body: poisoned(name, path.url) }, `${path.hashPart}.narinfo`)
        cache.setFaults({ status: 302, headers: { location: `${internal.url}secret` } }, path.url)
      },
    ],
    ['a relative URL that climbs out of the prefix', (name) => cache.setFaults({ body: poisoned(name, 'nar/../../private') }, `${fixtures.path(name).hashPart}.narinfo`)],
  ]

  it.each(attacks)('by %s: the internal service gets no request, and nothing of it reaches the client', async (_what, attack) => {
    const name = '900k'
    attack(name)
    const proxy = createProxy({
      logger: pino({ level: 'silent' }),
      upstreams: [cache.url],
      trustedPublicKeys: [fixtures.publicKey],
    })
    proxies.push(proxy)
    await proxy.listen()
    const base = proxy.url.replace(/\/?$/, '/')
    const narinfo = await get(`${base}${fixtures.path(name).hashPart}.narinfo`)
    expect(narinfo.status).toBe(200)
    const served = parseNarInfo(narinfo.body.toString())
    const nar = await get(`${base}${served.url}`)
    expect(nar.status).not.toBe(200)
    expect(nar.body.includes('internal secret')).toBe(false)
    expect(internal.requests).toEqual([])
    expect(cache.requests.filter((r) => !r.path.startsWith('/cache/'))).toEqual([])
  })
})
