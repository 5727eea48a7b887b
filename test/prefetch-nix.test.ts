import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../packages/cli/test/support/run-cli.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer } from './support/cache-server.js'
import { nixAvailable, nixSandbox, type NixSandbox } from './support/nix.js'

if (!nixAvailable) console.warn('prefetch-nix: skipped, no `nix` on PATH (Debian: apt-get install nix-bin)')

/** A subscription fetched with `narrace prefetch --list`, then installed by real Nix with every server gone. */
describe.skipIf(!nixAvailable)('narrace prefetch, then nix copy --from file:// offline', () => {
  let work: string
  let nix: NixSandbox
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'narrace-prefetch-nix-'))
    nix = await nixSandbox()
  })
  afterAll(async () => {
    await nix?.close()
    await rm(work, { recursive: true, force: true })
  })

  it('installs the closure from the prefetched cache into a fresh store', async () => {
    const roots = [fixtures.path('closure-root'), fixtures.path('diamond-top')]
    const list = join(work, 'subscription.txt')
    await writeFile(list, `# nightly\n${roots.map((r) => r.storePath).join('\n')}\n`)
    const cache = join(work, 'cache')

    const server = await startCacheServer({ root: fixtures.cacheDir })
    try {
      const run = await runCli(['prefetch', '--list', list, '--cache', server.url, '-o', cache, '--trusted-public-key', fixtures.publicKey])
      expect(run.stderr).not.toMatch(/narrace:/)
      expect(run.code).toBe(0)
      expect(run.stdout).toMatch(/24 paths: 24 fetched/)
    } finally {
      await server.close()
    }

    const store = nix.store()
    const paths = roots.map((r) => r.storePath)
    const copy = await nix.copyFrom(`file://${cache}`, store, paths, fixtures.publicKey)
    expect(copy.code, copy.stderr).toBe(0)
    const info = await nix.run('nix', ['path-info', '--store', store, '--recursive', ...paths])
    expect(info.code, info.stderr).toBe(0)
    const expected = fixtures.paths.filter((p) => p.name.startsWith('closure-') || p.name.startsWith('diamond-'))
    expect(info.stdout.trim().split('\n').sort()).toEqual(expected.map((p) => p.storePath).sort())
    const verify = await nix.run('nix', ['store', 'verify', '--store', store, '--recursive', ...paths])
    expect(verify.code, verify.stderr).toBe(0)
  })
})
