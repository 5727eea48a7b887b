/** SIGTERM to the built proxy command with downloads in flight: they finish within the grace, exit 0. */
import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { get } from '../examples/proxy/test/support/client.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import { built, startProxy } from './support/proxy-process.js'

const big = fixtures.path('5m')

describe.skipIf(!built)('the proxy command on SIGTERM', () => {
  let upstream: CacheServer
  beforeAll(async () => {
    upstream = await startCacheServer({ root: fixtures.cacheDir })
  })
  afterAll(async () => {
    await upstream?.close()
  })

  it('lets 50 downloads in flight finish within --shutdown-grace, refuses new ones, and exits 0', async () => {
    // About 1.5 s per download at this rate: all 50 are still running when the signal comes.
    upstream.setFaults({ bytesPerSecond: 4_000_000 }, big.url)
    const proxy = await startProxy(['--upstream', upstream.url, '--index', ':memory:', '--shutdown-grace', '20', '--verify-first-below', '0', '--max-connections', '50'])
    try {
      expect((await get(`${proxy.url}/${big.hashPart}.narinfo`)).status).toBe(200)
      const downloads = Array.from({ length: 50 }, () => get(`${proxy.url}/${big.url}`))
      for (const end = Date.now() + 10_000; upstream.requests.filter((r) => r.path === `/${big.url}`).length < 50; ) {
        if (Date.now() > end) throw new Error('the downloads did not start')
        await sleep(20)
      }
      const stopped = proxy.stop('SIGTERM')
      await sleep(100)
      await expect(get(`${proxy.url}/nix-cache-info`)).rejects.toThrow(/ECONNREFUSED/)
      const answers = await Promise.all(downloads)
      for (const answer of answers) {
        expect(answer.error).toBeUndefined()
        expect(createHash('sha256').update(answer.body).digest('hex')).toBe(big.fileHashHex)
      }
      expect(await stopped).toBe(0)
    } finally {
      await proxy.stop('SIGKILL')
    }
  }, 60_000)
})
