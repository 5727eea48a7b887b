/**
 * Donation end to end, as users run the built proxy: proxy A keeps and donates what it served to Nix;
 * then the upstream loses its NAR files, and proxy B (no store, not A's NAR route, only A's mappings
 * endpoint and the p2p networks) serves the same closure to another Nix. Once with Kubo over RPC, a
 * network per B so that each must win every NAR; once with A's embedded Helia and both networks in one B.
 */
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { get } from '../examples/proxy/test/support/client.js'
import { startTracker, type Tracker } from '../packages/torrent/test/swarm.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import { startKuboRpc, type KuboRpc } from './support/kubo-rpc.js'
import { nixAvailable, type NixRun } from './support/nix.js'
import { copyPaths, until } from './support/nix-copy.js'
import { built, startProxy, type RunningProxy } from './support/proxy-process.js'

if (!built) console.warn('test/proxy-donate.test.ts: skipped, examples/proxy is not built (run `pnpm build`)')
if (!nixAvailable) console.warn('test/proxy-donate.test.ts: skipped, no `nix` on PATH')

const key = fixtures.publicKey
const root = fixtures.path('closure-root')
const big = fixtures.path('5m')
const closure = [root, ...fixtures.paths.filter((p) => p.name.startsWith('closure-leaf-'))]
/** The closure and one NAR of several IPFS blocks, which only a mapping can find. */
const served = [...closure, big]

type LogLine = { msg: string; nar?: string; outcome?: string; winner?: string; sources: string[]; tried: string[]; cid?: string; btih?: string; ipfs?: { addrs: string[] } }
const log = (proxy: RunningProxy): LogLine[] => proxy.stdout.map((line) => JSON.parse(line) as LogLine)

const copy = (url: string): Promise<NixRun> => copyPaths(url, served, key)

/** Serves `served` to Nix through A and waits until A donated each NAR, with a CID and an infohash. */
async function serveAndDonate(a: RunningProxy): Promise<void> {
  const run = await copy(a.url)
  expect(run.code, run.stderr).toBe(0)
  await until(() => log(a).filter((l) => l.msg === 'donated').length === served.length, 60_000, 'every NAR donated')
  for (const line of log(a).filter((l) => l.msg === 'donated')) {
    expect(line.cid).toMatch(/^bafk|^bafy/)
    expect(line.btih).toMatch(/^[0-9a-f]{40}$/)
  }
}

/** The upstream loses every NAR file; A still answers narinfo from its store. */
async function dropNarFiles(cache: string, a: RunningProxy): Promise<void> {
  for (const name of await readdir(join(cache, 'nar'))) await rm(join(cache, 'nar', name))
  expect((await get(`${a.url}/${root.hashPart}.narinfo`)).status).toBe(200)
}

/** No NAR reached A's NAR route (A logs every NAR it serves), and the upstream served no NAR since `before`. */
function expectNoNarOverHttp(a: RunningProxy, upstream: CacheServer, before: number): void {
  expect(log(a).filter((l) => l.msg === 'nar').length).toBe(served.length)
  expect(upstream.requests.slice(before).filter((r) => r.path.includes('/nar/') && r.status === 200)).toEqual([])
}

describe.skipIf(!built || !nixAvailable)('--donate: what one proxy kept, another serves from IPFS and torrents', () => {
  let work: string
  let upstream: CacheServer
  let tracker: Tracker
  let kubo: KuboRpc
  const proxies: RunningProxy[] = []

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'narrace-donate-'))
    // A copy of the cache whose NAR files the test deletes later.
    await cp(fixtures.cacheDir, join(work, 'cache'), { recursive: true })
    upstream = await startCacheServer({ root: join(work, 'cache') })
    tracker = await startTracker()
    kubo = await startKuboRpc(join(work, 'kubo'))
  }, 120_000)
  afterAll(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.stop()))
    await kubo?.stop()
    await tracker?.close()
    await upstream?.close()
    await rm(work, { recursive: true, force: true })
  })

  it('A donates every NAR it keeps; B serves the closure with IPFS wins, C with torrent wins, no NAR over HTTP', async () => {
    const a = await startProxy([
      '--upstream', upstream.url, '--trusted-public-key', key,
      '--store', join(work, 'store-a'), '--donate',
      '--ipfs-api', kubo.url, '--torrent', '--announce', tracker.announce[0]!,
    ])
    proxies.push(a)
    await serveAndDonate(a)
    await dropNarFiles(join(work, 'cache'), a)
    expect((await get(`${upstream.url}/${root.url}`)).status).toBe(404)
    const mapping = await get(`${a.url}/narrace/v1/mappings/${big.fileHash.slice('sha256:'.length)}`)
    expect(JSON.parse(mapping.body.toString())).toMatchObject({ fileHash: big.fileHash, source: 'local' })

    // B and C: that upstream for narinfo, A's mappings endpoint, one p2p network each; A's NAR route never.
    const before = upstream.requests.length
    const b = await startProxy(['--upstream', upstream.url, '--trusted-public-key', key, '--mappings-from', a.url, '--ipfs-api', kubo.url])
    const c = await startProxy([
      '--upstream', upstream.url, '--trusted-public-key', key, '--mappings-from', a.url,
      '--torrent', '--announce', tracker.announce[0]!,
    ])
    proxies.push(b, c)
    const viaIpfs = await copy(b.url)
    expect(viaIpfs.code, viaIpfs.stderr).toBe(0)
    const viaTorrent = await copy(c.url)
    expect(viaTorrent.code, viaTorrent.stderr).toBe(0)

    for (const [proxy, network] of [[b, 'ipfs'], [c, 'torrent']] as const) {
      const nars = log(proxy).filter((l) => l.msg === 'nar' && l.outcome === 'ok')
      expect(nars.length, network).toBeGreaterThanOrEqual(served.length)
      for (const line of nars) {
        expect(line.winner, `${network}: ${line.nar}`).toBe(network)
        expect(line.sources).toEqual([network])
      }
    }
    expectNoNarOverHttp(a, upstream, before)
  })

  it('eviction withdraws a donation: unpinned, no longer seeded, its mapping marked gone', async () => {
    await cp(fixtures.cacheDir, join(work, 'cache-2'), { recursive: true })
    const fresh = await startCacheServer({ root: join(work, 'cache-2') })
    try {
      const a = await startProxy([
        '--upstream', fresh.url, '--trusted-public-key', key,
        '--store', join(work, 'store-small'), '--store-max-bytes', '400000', '--donate',
        '--ipfs-api', kubo.url, '--torrent', '--announce', tracker.announce[0]!,
      ])
      proxies.push(a)
      const first = fixtures.path('200k')
      for (const path of [first, ...['15', '16', '17', '18', '19'].map((n) => fixtures.path(`closure-leaf-${n}`))]) {
        await get(`${a.url}/${path.hashPart}.narinfo`)
        expect((await get(`${a.url}/${path.url}`)).status).toBe(200)
        await until(() => log(a).some((l) => l.msg === 'donated' && l.nar === path.fileHash.slice(7)), 30_000, `${path.name} donated`)
      }
      await until(() => log(a).some((l) => l.msg === 'donation withdrawn' && l.nar === first.fileHash.slice(7)), 30_000, '200k withdrawn')
      const withdrawn = log(a).find((l) => l.msg === 'donation withdrawn')!
      expect(withdrawn.cid).toMatch(/^baf/)
      expect(withdrawn.btih).toMatch(/^[0-9a-f]{40}$/)
      const mapping = JSON.parse((await get(`${a.url}/narrace/v1/mappings/${first.fileHash.slice(7)}`)).body.toString())
      expect(mapping).toMatchObject({ fileHash: first.fileHash, status: 'gone' })
      expect(mapping.cid).toBeUndefined()
      expect(mapping.btih).toBeUndefined()
      const pins = await fetch(`${kubo.url}/api/v0/pin/ls?arg=${withdrawn.cid}`, { method: 'POST' })
      expect(pins.ok).toBe(false)
    } finally {
      await fresh.close()
    }
  })
})

describe.skipIf(!built || !nixAvailable)('--donate with --ipfs embedded and a tracker: B serves the closure from both networks', () => {
  let work: string
  let upstream: CacheServer
  let tracker: Tracker
  const proxies: RunningProxy[] = []

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'narrace-donate-embedded-'))
    await cp(fixtures.cacheDir, join(work, 'cache'), { recursive: true })
    upstream = await startCacheServer({ root: join(work, 'cache') })
    tracker = await startTracker()
  }, 60_000)
  afterAll(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.stop()))
    await tracker?.close()
    await upstream?.close()
    await rm(work, { recursive: true, force: true })
  })

  it('A keeps and donates with embedded Helia and a torrent; B (no store, not A\'s NAR route) races IPFS and torrent for every NAR and wins each over p2p, none from HTTP', async () => {
    const a = await startProxy([
      '--upstream', upstream.url, '--trusted-public-key', key, '--index', ':memory:',
      '--store', join(work, 'store-a'), '--donate', '--ipfs', 'embedded',
      '--torrent', '--announce', tracker.announce[0]!,
    ])
    proxies.push(a)
    await serveAndDonate(a)
    await dropNarFiles(join(work, 'cache'), a)

    const ipfsAddr = log(a)[0]!.ipfs!.addrs[0]!
    const before = upstream.requests.length
    const b = await startProxy([
      '--upstream', upstream.url, '--trusted-public-key', key, '--index', ':memory:', '--mappings-from', a.url,
      '--ipfs', 'embedded', '--ipfs-bootstrap', ipfsAddr, '--torrent', '--announce', tracker.announce[0]!,
    ])
    proxies.push(b)
    const second = await copy(b.url)
    expect(second.code, second.stderr).toBe(0)

    const nars = log(b).filter((l) => l.msg === 'nar' && l.outcome === 'ok')
    expect(nars.length).toBeGreaterThanOrEqual(served.length)
    // Both networks race for every NAR; which one answers first is the race's to decide, never HTTP.
    for (const line of nars) {
      expect(line.tried, line.nar).toEqual(expect.arrayContaining(['ipfs', 'torrent']))
      expect(['ipfs', 'torrent'], line.nar).toContain(line.winner)
      expect(line.sources.filter((s) => s !== 'ipfs' && s !== 'torrent'), line.nar).toEqual([])
    }
    expectNoNarOverHttp(a, upstream, before)
  })
})
