/**
 * The proxy's `--store` as a user runs it (the built `examples/proxy/dist/main.js`): real Nix served from a
 * warm store with no upstream, eviction within the budget, a SIGKILL in the middle of a write, one owner.
 */
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseNarHash } from '@narrace/core'
import { openStore } from '@narrace/store'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { folderBytes } from '../packages/store/test/support/folder.js'
import { get } from '../examples/proxy/test/support/client.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import { nixAvailable, nixSandbox, type NixRun } from './support/nix.js'
import { built as proxyBuilt, run, startProxy as startProxyProcess, type RunningProxy as ProxyProcess } from './support/proxy-process.js'

if (!proxyBuilt) console.warn('test/proxy-store.test.ts: skipped, examples/proxy is not built (run `pnpm build`)')
if (!nixAvailable) console.warn('test/proxy-store.test.ts: the real-Nix case is skipped, no `nix` on PATH')

const key = fixtures.publicKey
const root = fixtures.path('closure-root')
const closure = [root, ...fixtures.paths.filter((p) => p.name.startsWith('closure-leaf-'))]

/** Waits, bounded, for `check` to hold. */
async function until(check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !(await check()); ) {
    if (Date.now() > end) throw new Error('condition not reached in time')
    await sleep(20)
  }
}

/** Checks a store folder as Nix would read it: every NAR hashes to its name, every narinfo names a NAR that is there. */
async function expectSound(dir: string): Promise<{ nars: string[]; narinfos: string[] }> {
  const nars = await readdir(join(dir, 'nar'))
  for (const name of nars) {
    expect(name, 'no partial file under nar/').toMatch(/^[0-9a-z]{52}\.nar\.xz$/)
    const digest = createHash('sha256').update(await readFile(join(dir, 'nar', name))).digest('hex')
    expect(parseNarHash(digest).nix32, `${name} verifies`).toBe(name.slice(0, 52))
  }
  const names = await readdir(dir)
  expect(names.filter((n) => n.includes('.partial') || n.endsWith('.tmp'))).toEqual([])
  const narinfos = names.filter((n) => n.endsWith('.narinfo'))
  for (const name of narinfos) {
    const url = /^URL: (.*)$/m.exec(await readFile(join(dir, name), 'utf8'))![1]!
    expect(nars, `${name} names a NAR that is there`).toContain(url.slice('nar/'.length))
  }
  return { nars, narinfos }
}

/** The proxy's `nar` log lines, parsed. */
function narLines(proxy: ProxyProcess): Array<{ nar: string; outcome: string; winner?: string; sources: string[] }> {
  return proxy.stdout.map((line) => JSON.parse(line) as { msg: string }).filter((line) => line.msg === 'nar') as never
}

function ok(run: NixRun): void {
  expect(run.code, `nix failed:\n${run.stderr}`).toBe(0)
}

describe.skipIf(!proxyBuilt)('the proxy with --store', () => {
  let upstream: CacheServer
  let work: string
  let dir: string
  const running: ProxyProcess[] = []

  async function proxy(args: string[]): Promise<ProxyProcess> {
    const started = await startProxyProcess(['--upstream', upstream.url, '--trusted-public-key', key, ...args])
    running.push(started)
    return started
  }

  beforeAll(async () => {
    upstream = await startCacheServer({ root: fixtures.cacheDir })
    work = await mkdtemp(join(tmpdir(), 'narrace-proxy-store-'))
  })
  beforeEach(async ({ task }) => {
    dir = join(work, task.id)
    upstream.clearFaults()
    upstream.requests.length = 0
    await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
  })
  afterAll(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
    await upstream?.close()
    await rm(work, { recursive: true, force: true })
  })

  it.skipIf(!nixAvailable)('real Nix: a warm store serves the closure again with 0 upstream requests, and with every upstream stopped', async () => {
    const own = await startCacheServer({ root: fixtures.cacheDir })
    const started = await startProxyProcess(['--upstream', own.url, '--trusted-public-key', key, '--store', dir])
    running.push(started)
    // A fresh Nix (its own narinfo cache) for each copy, so that each one asks the proxy.
    const copy = async (): Promise<NixRun> => {
      const nix = await nixSandbox()
      try {
        const store = nix.store()
        const run = await nix.copyFrom(started.url, store, [root.storePath], key)
        if (run.code === 0) for (const path of closure) expect(await nix.has(store, path.storePath)).toBe(true)
        return run
      } finally {
        await nix.close()
      }
    }
    ok(await copy())
    // Each narinfo goes in right after its NAR.
    await until(async () => (await readdir(dir)).filter((n) => n.endsWith('.narinfo')).length === closure.length)
    const firstPass = own.requests.length
    expect(firstPass).toBeGreaterThanOrEqual(closure.length)

    own.requests.length = 0
    ok(await copy())
    expect(own.requests).toEqual([])

    await own.close()
    ok(await copy())
    expect(narLines(started).filter((l) => l.outcome === 'ok' && l.winner === 'store')).toHaveLength(2 * closure.length)

    // The folder is a binary cache as Nix reads it, too.
    await expectSound(dir)
    const nix = await nixSandbox()
    try {
      ok(await nix.copyFrom(`file://${dir}`, nix.store(), [root.storePath], key))
    } finally {
      await nix.close()
    }
  })

  it('stays within --store-max-bytes while it fills: least recently used first, pins kept, a NAR too large served but not kept', async () => {
    const maxBytes = 430_000
    const pinned = fixtures.path('closure-leaf-19')
    const before = await openStore(dir, { maxBytes })
    before.pin(pinned.fileHash)
    await before.close()
    const started = await proxy(['--store', dir, '--store-max-bytes', String(maxBytes)])

    let most = 0
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        most = Math.max(most, await folderBytes(dir))
        await sleep(1)
      }
    })()
    const fetch = async (name: string): Promise<void> => {
      const path = fixtures.path(name)
      expect((await get(`${started.url}/${path.hashPart}.narinfo`)).status).toBe(200)
      const nar = await get(`${started.url}/${path.url}`)
      expect(nar.status).toBe(200)
      expect(nar.body.length).toBe(path.fileSize)
      await until(async () => (await readdir(dir)).includes(`${path.hashPart}.narinfo`) || path.fileSize > maxBytes)
    }
    try {
      for (const name of ['closure-leaf-19', 'closure-leaf-01', 'closure-leaf-02', 'closure-leaf-03', 'closure-leaf-04']) await fetch(name)
      // leaf-01 is used again: now leaf-02 is the least recently used.
      expect((await get(`${started.url}/${fixtures.path('closure-leaf-01').url}`)).status).toBe(200)
      await fetch('200k')
      await fetch('900k')
    } finally {
      sampling = false
      await sampler
    }
    expect(most).toBeGreaterThan(maxBytes / 2)
    expect(most).toBeLessThanOrEqual(maxBytes)
    expect(await started.stop()).toBe(0)

    const store = await openStore(dir, { maxBytes })
    const kept = (name: string): boolean => store.has(fixtures.path(name).fileHash)
    try {
      expect(kept('closure-leaf-19')).toBe(true)
      expect(kept('200k')).toBe(true)
      expect(kept('900k')).toBe(false)
      // Evicted in LRU order: whatever went is a prefix of leaf-02, leaf-03, leaf-04, leaf-01.
      const order = ['closure-leaf-02', 'closure-leaf-03', 'closure-leaf-04', 'closure-leaf-01'].map(kept)
      expect(order[0]).toBe(false)
      expect(order.indexOf(true) === -1 || order.slice(order.indexOf(true)).every(Boolean)).toBe(true)
      expect(kept('closure-leaf-01')).toBe(true)
    } finally {
      await store.close()
    }
    await expectSound(dir)
  })

  it('after SIGKILL in the middle of a write, a restart leaves no partial file and every file verifies', async () => {
    const big = fixtures.path('5m')
    // The NAR streams through (not verified first), slowly, so the kill lands while it is being written.
    const first = await proxy(['--store', dir, '--verify-first-below', '0'])
    for (const name of ['small', 'closure-leaf-05']) {
      const path = fixtures.path(name)
      await get(`${first.url}/${path.hashPart}.narinfo`)
      expect((await get(`${first.url}/${path.url}`)).status).toBe(200)
    }
    upstream.setFaults({ bytesPerSecond: 1_000_000 }, big.url)
    expect((await get(`${first.url}/${big.hashPart}.narinfo`)).status).toBe(200)
    const download = get(`${first.url}/${big.url}`).catch(() => undefined)
    let partial = ''
    await until(async () => {
      for (const name of await readdir(join(dir, 'nar'))) {
        if (name.endsWith('.partial') && (await stat(join(dir, 'nar', name))).size > 100_000) partial = name
      }
      return partial !== ''
    })
    expect(await first.stop('SIGKILL')).toBe(null)
    await download
    expect((await readdir(join(dir, 'nar'))).includes(partial)).toBe(true)

    upstream.clearFaults()
    const second = await proxy(['--store', dir])
    const { nars } = await expectSound(dir)
    expect(nars).toHaveLength(2)
    const again = await get(`${second.url}/${big.url}`)
    expect(again.status).toBe(200)
    expect(again.body.equals(await readFile(fixtures.narPath(big.name)))).toBe(true)
    await until(async () => (await readdir(join(dir, 'nar'))).length === 3)
    await expectSound(dir)
  })

  it('has one owner: a second proxy on the same --store stops with one line', async () => {
    await proxy(['--store', dir])
    const second = run(['--listen', '127.0.0.1:0', '--upstream', upstream.url, '--store', dir])
    expect(second.status).toBe(1)
    expect(second.stderr).toMatch(/^narrace-proxy: --store: store \S+ is in use by another process\n$/)
    expect(second.stdout).toBe('')
  })

  it('serves its mappings: one line per FileHash, and every change since a time', async () => {
    const started = await proxy(['--store', dir])
    const path = fixtures.path('closure-leaf-02')
    await get(`${started.url}/${path.hashPart}.narinfo`)
    const one = await get(`${started.url}/narrace/v1/mappings/${path.fileHash.slice('sha256:'.length)}`)
    expect(one.status).toBe(200)
    expect(JSON.parse(one.body.toString())).toMatchObject({ fileHash: path.fileHash, storePath: path.storePath })
    expect((await get(`${started.url}/narrace/v1/mappings/${fixtures.path('small').fileHash.slice(7)}`)).status).toBe(404)
    const since = await get(`${started.url}/narrace/v1/mappings?since=${encodeURIComponent('2000-01-01T00:00:00Z')}`)
    expect(since.status).toBe(200)
    expect(since.body.toString().trim().split('\n').map((l) => JSON.parse(l).fileHash)).toEqual([path.fileHash])
    expect((await get(`${started.url}/narrace/v1/mappings?since=${new Date(Date.now() + 60_000).toISOString()}`)).body.length).toBe(0)
  })
})
