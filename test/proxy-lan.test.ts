/**
 * `--lan` end to end: two proxies, each in a network namespace of its own joined by one veth pair (no
 * route anywhere else), find each other over mDNS and serve each other's stores to a real Nix. mDNS never
 * runs on this machine's own interfaces: without the rights to make namespaces, the test is skipped.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createReadStream } from 'node:fs'
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openStore } from '../packages/store/src/index.js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'
import { nixAvailable } from './support/nix.js'
import { copyPaths, until } from './support/nix-copy.js'
import { built, startProxy, type RunningProxy } from './support/proxy-process.js'

/** Namespaces of this run only; the veth addresses exist inside them and nowhere else. */
const ns = { a: `narrace-lan-${process.pid}-a`, b: `narrace-lan-${process.pid}-b` }
const address = { a: '10.231.0.1', b: '10.231.0.2' }

/** Why namespaces can't be made here, or undefined when they can. */
function namespacesUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces are Linux only'
  if (process.getuid?.() !== 0) return 'making network namespaces needs root'
  const probe = `narrace-probe-${process.pid}`
  const made = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' })
  if (made.error) return `no \`ip\` command (${made.error.message})`
  if (made.status !== 0) return `\`ip netns add\` failed: ${made.stderr.trim()}`
  spawnSync('ip', ['netns', 'del', probe])
  return undefined
}
const unavailable = namespacesUnavailable()
if (unavailable) console.warn(`test/proxy-lan.test.ts: skipped, ${unavailable}`)
if (!built) console.warn('test/proxy-lan.test.ts: skipped, examples/proxy is not built (run `pnpm build`)')
if (!nixAvailable) console.warn('test/proxy-lan.test.ts: skipped, no `nix` on PATH')

function ip(...args: string[]): void {
  const result = spawnSync('ip', args, { encoding: 'utf8' })
  if (result.status !== 0) throw new Error(`ip ${args.join(' ')}: ${result.stderr.trim()}`)
}

const serverMain = fileURLToPath(new URL('./support/static-cache-server.mjs', import.meta.url))

/** A cache folder served inside a namespace, on that namespace's own loopback. */
async function serveIn(namespace: string, root: string): Promise<{ url: string; lines: () => Array<{ path: string; status: number }>; child: ChildProcess }> {
  const child = spawn('ip', ['netns', 'exec', namespace, process.execPath, serverMain, root], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout!.on('data', (data: Buffer) => (out += data.toString()))
  await until(() => out.includes('"url"'), 10_000, `the cache server in ${namespace}`)
  const lines = (): Array<{ path: string; status: number }> =>
    out.split('\n').filter((line) => line.startsWith('{"path"')).map((line) => JSON.parse(line) as { path: string; status: number })
  return { url: (JSON.parse(out.split('\n')[0]!) as { url: string }).url, lines, child }
}

type LogLine = { msg: string; nar?: string; outcome?: string; winner?: string; peer?: string; reason?: string }
const log = (proxy: RunningProxy): LogLine[] => proxy.stdout.map((line) => JSON.parse(line) as LogLine)

const key = fixtures.publicKey
const leaves = fixtures.paths.filter((p) => p.name.startsWith('closure-leaf-'))
/** What A keeps, and what B keeps: each Nix gets the other's through its own proxy. */
const keptByA = [fixtures.path('5m'), ...leaves.slice(0, 8)]
const keptByB = [fixtures.path('closure-root'), ...leaves.slice(8)]

describe.skipIf(unavailable !== undefined || !built || !nixAvailable)('--lan: proxies in separate namespaces find each other over mDNS', () => {
  let work: string
  const servers: ChildProcess[] = []
  const proxies: RunningProxy[] = []

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'narrace-lan-'))
    ip('netns', 'add', ns.a)
    ip('netns', 'add', ns.b)
    // The pair is made inside A with its other end in B: it never exists in this machine's namespace.
    ip('-n', ns.a, 'link', 'add', 'lan0', 'type', 'veth', 'peer', 'name', 'lan0', 'netns', ns.b)
    for (const side of ['a', 'b'] as const) {
      ip('-n', ns[side], 'addr', 'add', `${address[side]}/24`, 'dev', 'lan0')
      ip('-n', ns[side], 'link', 'set', 'lo', 'up')
      ip('-n', ns[side], 'link', 'set', 'lan0', 'up')
    }
    // The upstream has every narinfo and no NAR file: the bytes can only come from the other store.
    await cp(fixtures.cacheDir, join(work, 'cache'), { recursive: true })
    for (const name of await readdir(join(work, 'cache', 'nar'))) await rm(join(work, 'cache', 'nar', name))
    for (const [side, kept] of [['a', keptByA], ['b', keptByB]] as const) {
      const store = await openStore(join(work, `store-${side}`))
      for (const path of kept) await store.add(path.fileHash, createReadStream(fixtures.narPath(path.name)), { size: path.fileSize })
      await store.close()
    }
  }, 60_000)

  afterAll(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.stop()))
    for (const server of servers.splice(0)) {
      if (server.exitCode === null) {
        server.kill('SIGTERM')
        await once(server, 'exit')
      }
    }
    spawnSync('ip', ['netns', 'del', ns.a])
    spawnSync('ip', ['netns', 'del', ns.b])
    await rm(work, { recursive: true, force: true })
  })

  it("each serves the other's store to Nix in its namespace; a proxy that stops is dropped", async () => {
    const start = async (side: 'a' | 'b'): Promise<{ proxy: RunningProxy; upstream: Awaited<ReturnType<typeof serveIn>> }> => {
      const upstream = await serveIn(ns[side], join(work, 'cache'))
      servers.push(upstream.child)
      const proxy = await startProxy(
        ['--upstream', upstream.url, '--trusted-public-key', key, '--index', ':memory:', '--store', join(work, `store-${side}`), '--lan'],
        undefined,
        { wrap: ['ip', 'netns', 'exec', ns[side]], listen: `${address[side]}:0` },
      )
      proxies.push(proxy)
      return { proxy, upstream }
    }
    const a = await start('a')
    const b = await start('b')
    await until(() => log(a.proxy).some((l) => l.msg === 'lan peer up' && l.peer === b.proxy.url), 20_000, 'A finds B')
    await until(() => log(b.proxy).some((l) => l.msg === 'lan peer up' && l.peer === a.proxy.url), 20_000, 'B finds A')

    for (const [side, theirs, other] of [['a', keptByB, b], ['b', keptByA, a]] as const) {
      const mine = side === 'a' ? a : b
      const run = await copyPaths(mine.proxy.url, theirs, key, ['ip', 'netns', 'exec', ns[side]])
      expect(run.code, run.stderr).toBe(0)
      const nars = log(mine.proxy).filter((l) => l.msg === 'nar' && l.outcome === 'ok')
      for (const path of theirs) {
        const line = nars.find((l) => l.nar === path.fileHash.slice('sha256:'.length))
        expect(line?.winner, path.name).toBe(`peer:${other.proxy.url}`)
      }
      // Its own upstream served no NAR byte: it has none.
      expect(mine.upstream.lines().filter((l) => l.path.includes('/nar/') && l.status === 200)).toEqual([])
    }

    // B stops, saying goodbye: A drops it.
    await b.proxy.stop()
    await until(() => log(a.proxy).some((l) => l.msg === 'lan peer down' && l.peer === b.proxy.url), 20_000, 'A drops B')
  })
})
