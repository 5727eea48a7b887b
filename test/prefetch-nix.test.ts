import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../packages/cli/test/support/run-cli.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer } from './support/cache-server.js'

const exec = promisify(execFile)

async function hasNix(): Promise<boolean> {
  try {
    await exec('nix', ['--version'])
    return true
  } catch {
    return false
  }
}

const nixFound = await hasNix()
if (!nixFound) console.warn('prefetch-nix: skipped, no `nix` on PATH (Debian: apt-get install nix-bin)')

/** A subscription fetched with `narrace prefetch --list`, then installed by real Nix with every server gone. */
describe.skipIf(!nixFound)('narrace prefetch, then nix copy --from file:// offline', () => {
  let work: string
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'narrace-prefetch-nix-'))
  })
  afterAll(async () => {
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

    const store = join(work, 'store')
    const env = {
      ...process.env,
      HOME: work,
      XDG_CACHE_HOME: join(work, 'xdg-cache'),
      NIX_CONFIG: [
        'experimental-features = nix-command',
        'sandbox = false',
        'build-users-group =',
        'substituters =',
        `trusted-public-keys = ${fixtures.publicKey}`,
      ].join('\n'),
    }
    const paths = roots.map((r) => r.storePath)
    await exec('nix', ['copy', '--from', `file://${cache}`, '--store', store, ...paths], { env, timeout: 60_000 })
    const { stdout } = await exec('nix', ['path-info', '--store', store, '--recursive', ...paths], { env, timeout: 60_000 })
    const expected = fixtures.paths.filter((p) => p.name.startsWith('closure-') || p.name.startsWith('diamond-'))
    expect(stdout.trim().split('\n').sort()).toEqual(expected.map((p) => p.storePath).sort())
    await exec('nix', ['store', 'verify', '--store', store, '--recursive', ...paths], { env, timeout: 60_000 })
  })
})
