/**
 * Discovery by FileHash end to end, as users run the built proxy: proxy A keeps and donates what it
 * served to Nix, with an embedded IPFS node; then the upstream loses its NAR files, and proxy B, which
 * knows nothing but that upstream's narinfo and a DHT bootstrap peer (not A), serves the same closure
 * to another Nix from IPFS, every mapping found in the DHT.
 */
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createIpfsNode, ipfsNodeInfo, type EmbeddedIpfsNode } from '../packages/ipfs/src/index.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import { nixAvailable, type NixRun } from './support/nix.js'
import { copyPaths, until } from './support/nix-copy.js'
import { built, startProxy, type RunningProxy } from './support/proxy-process.js'

if (!built) console.warn('test/proxy-dht.test.ts: skipped, examples/proxy is not built (run `pnpm build`)')
if (!nixAvailable) console.warn('test/proxy-dht.test.ts: skipped, no `nix` on PATH')

const key = fixtures.publicKey
const root = fixtures.path('closure-root')
const big = fixtures.path('5m')
const closure = [root, ...fixtures.paths.filter((p) => p.name.startsWith('closure-leaf-'))]
const served = [...closure, big]

type LogLine = { msg: string; nar?: string; outcome?: string; winner?: string; ipfs?: { peerId: string; addrs: string[] } }
const log = (proxy: RunningProxy): LogLine[] => proxy.stdout.map((line) => JSON.parse(line) as LogLine)

const copy = (url: string): Promise<NixRun> => copyPaths(url, served, key)

describe.skipIf(!built || !nixAvailable)('--ipfs embedded: a proxy finds NARs by FileHash in a DHT of its own', () => {
  let work: string
  let upstream: CacheServer
  const proxies: RunningProxy[] = []
  const dht: EmbeddedIpfsNode[] = []

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'narrace-dht-'))
    await cp(fixtures.cacheDir, join(work, 'cache'), { recursive: true })
    upstream = await startCacheServer({ root: join(work, 'cache') })
  }, 60_000)
  afterAll(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.stop()))
    await Promise.all(dht.splice(0).map((node) => node.stop()))
    await upstream?.close()
    await rm(work, { recursive: true, force: true })
  })

  it('B, with only the narinfo upstream and a bootstrap peer, serves the closure A donated, every NAR from IPFS; C gets it from A as a --peer', async () => {
    const a = await startProxy([
      '--upstream', upstream.url, '--trusted-public-key', key, '--index', ':memory:',
      '--store', join(work, 'store-a'), '--donate', '--ipfs', 'embedded',
    ])
    proxies.push(a)
    const first = log(a)[0]!
    expect(first.msg).toMatch(/listening/)
    expect(first.ipfs?.addrs[0]).toMatch(new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${first.ipfs?.peerId}$`))
    // Four more DHT servers join through A; B will join through the last of them.
    for (let i = 0; i < 4; i++) dht.push(await createIpfsNode({ bootstrap: [first.ipfs!.addrs[0]!] }))

    const served1 = await copy(a.url)
    expect(served1.code, served1.stderr).toBe(0)
    await until(() => log(a).filter((l) => l.msg === 'donated').length === served.length, 60_000, 'every NAR donated')

    for (const name of await readdir(join(work, 'cache', 'nar'))) await rm(join(work, 'cache', 'nar', name))
    const b = await startProxy([
      '--upstream', upstream.url, '--trusted-public-key', key, '--index', ':memory:',
      '--ipfs', 'embedded', '--ipfs-bootstrap', ipfsNodeInfo(dht.at(-1)!).addrs[0]!,
    ])
    proxies.push(b)
    const served2 = await copy(b.url)
    expect(served2.code, served2.stderr).toBe(0)
    const nars = log(b).filter((l) => l.msg === 'nar' && l.outcome === 'ok')
    expect(nars.length).toBeGreaterThanOrEqual(served.length)
    for (const line of nars) expect(line.winner, line.nar).toBe('ipfs')

    // C names A as a --peer and has no IPFS: A's store, raced as a NAR source, serves every NAR.
    const c = await startProxy(['--upstream', upstream.url, '--trusted-public-key', key, '--index', ':memory:', '--peer', a.url])
    proxies.push(c)
    const served3 = await copy(c.url)
    expect(served3.code, served3.stderr).toBe(0)
    const fromPeer = log(c).filter((l) => l.msg === 'nar' && l.outcome === 'ok')
    expect(fromPeer.length).toBeGreaterThanOrEqual(served.length)
    for (const line of fromPeer) expect(line.winner, line.nar).toBe(`peer:${a.url}`)
  })
})
