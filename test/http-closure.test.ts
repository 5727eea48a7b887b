import { resolveNarToFile } from '@narrace/core'
import { httpBackend, walkClosure, type HttpBackend } from '@narrace/http'
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import { nixAvailable, nixSandbox, type NixSandbox } from './support/nix.js'

if (!nixAvailable) console.warn('test/http-closure.test.ts: skipped, no `nix` on PATH (install Debian\'s nix-bin to run it)')
const top = fixtures.path('diamond-top')

describe('a closure walked and raced over faulty HTTP caches', () => {
  let flaky: CacheServer
  let steady: CacheServer
  let backends: HttpBackend[]
  let work: string
  let nix: NixSandbox | undefined

  beforeAll(async () => {
    flaky = await startCacheServer({ root: fixtures.cacheDir })
    steady = await startCacheServer({ root: fixtures.cacheDir, prefix: '/mirror/' })
    backends = [httpBackend({ url: flaky.url, name: 'flaky' }), httpBackend({ url: steady.url, name: 'steady' })]
    work = await mkdtemp(join(tmpdir(), 'narrace-http-closure-'))
  })
  afterAll(async () => {
    await Promise.all(backends.map((b) => b.close()))
    await Promise.all([flaky.close(), steady.close()])
    await nix?.close()
    await rm(work, { recursive: true, force: true })
  })

  it.skipIf(!nixAvailable)('makes a file:// cache that real Nix copies from, with every server gone', async () => {
    // Every NAR on the flaky cache breaks after 100 bytes: each one resumes on the steady mirror.
    flaky.setFaults({ cutAfter: 100 }, /^nar\//)
    const dir = join(work, 'cache')
    await mkdir(join(dir, 'nar'), { recursive: true })
    await writeFile(join(dir, 'nix-cache-info'), 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 50\n')
    const fetched: string[] = []
    for await (const entry of walkClosure([top.storePath], {
      caches: [flaky.url, steady.url],
      trustedKeys: [fixtures.publicKey],
    })) {
      const { narInfo } = entry
      await resolveNarToFile(narInfo.fileHash!, join(dir, narInfo.url), {
        backends,
        size: narInfo.fileSize!,
        url: narInfo.url,
        hedge: { steady: 60_000 },
      })
      await writeFile(join(dir, `${narInfo.storePath.slice('/nix/store/'.length, 43)}.narinfo`), entry.text)
      fetched.push(entry.storePath)
    }
    expect(fetched).toHaveLength(4)
    const resumed = steady.requests.filter((r) => r.path.startsWith('/mirror/nar/'))
    expect(resumed).toHaveLength(4)
    expect(resumed.every((r) => r.range !== undefined && r.status === 206)).toBe(true)
    expect((await readdir(join(dir, 'nar'))).filter((f) => f.endsWith('.partial'))).toEqual([])

    await Promise.all([flaky.close(), steady.close()])
    nix = await nixSandbox()
    const store = nix.store()
    const copy = await nix.copyFrom(`file://${dir}`, store, [top.storePath], fixtures.publicKey)
    expect(copy.code, copy.stderr).toBe(0)
    const info = await nix.run('nix', ['path-info', '--store', store, '--recursive', top.storePath])
    expect(info.code, info.stderr).toBe(0)
    expect(info.stdout.trim().split('\n').sort()).toEqual(
      ['diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom'].map((n) => fixtures.path(n).storePath).sort(),
    )
  })
})
