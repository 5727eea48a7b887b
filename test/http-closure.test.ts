import { resolveNarToFile } from '@narrace/core'
import { httpBackend, walkClosure, type HttpBackend } from '@narrace/http'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'

const run = promisify(execFile)
const hasNix = await run('nix', ['--version']).then(
  () => true,
  () => false,
)
const top = fixtures.path('diamond-top')

/** A throwaway Nix environment: its own config and cache dirs, trusting only the fixture key, no substituters. */
function nixEnv(work: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NIX_CONFIG: [
      'experimental-features = nix-command',
      'sandbox = false',
      'build-users-group =',
      'substituters =',
      `trusted-public-keys = ${fixtures.publicKey}`,
    ].join('\n'),
    XDG_CACHE_HOME: join(work, 'xdg-cache'),
    XDG_CONFIG_HOME: join(work, 'xdg-config'),
    XDG_DATA_HOME: join(work, 'xdg-data'),
  }
  delete env.NIX_REMOTE
  return env
}

describe('a closure walked and raced over faulty HTTP caches', () => {
  let flaky: CacheServer
  let steady: CacheServer
  let backends: HttpBackend[]
  let work: string

  beforeAll(async () => {
    flaky = await startCacheServer({ root: fixtures.cacheDir })
    steady = await startCacheServer({ root: fixtures.cacheDir, prefix: '/mirror/' })
    backends = [httpBackend({ url: flaky.url, name: 'flaky' }), httpBackend({ url: steady.url, name: 'steady' })]
    work = await mkdtemp(join(tmpdir(), 'narrace-http-closure-'))
  })
  afterAll(async () => {
    await Promise.all(backends.map((b) => b.close()))
    await Promise.all([flaky.close(), steady.close()])
    await run('chmod', ['-R', 'u+w', work]).catch(() => {})
    await rm(work, { recursive: true, force: true })
  })

  it.skipIf(!hasNix)('makes a file:// cache that real Nix copies from, with every server gone', async () => {
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
    const store = join(work, 'store')
    await run('nix', ['copy', '--from', `file://${dir}`, '--to', store, top.storePath], { env: nixEnv(work) })
    const { stdout } = await run('nix', ['path-info', '--store', store, '--recursive', top.storePath], {
      env: nixEnv(work),
    })
    expect(stdout.trim().split('\n').sort()).toEqual(
      ['diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom'].map((n) => fixtures.path(n).storePath).sort(),
    )
  })
})
