import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openStore } from '@narrace/store'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { prefetchCommand } from '../packages/cli/src/index.js'
import { runCli } from '../packages/cli/test/support/run-cli.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'

const quiet = { stdout: { write: () => true }, stderr: { write: () => true } }
const root = fixtures.path('closure-root')
const closure = [root, ...fixtures.paths.filter((p) => p.name.startsWith('closure-leaf-'))]
const diamond = ['diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom'].map((n) => fixtures.path(n))

describe('narrace pin: whole closures held out of eviction', () => {
  let server: CacheServer
  let work: string

  beforeAll(async () => {
    server = await startCacheServer({ root: fixtures.cacheDir })
    work = await mkdtemp(join(tmpdir(), 'narrace-pin-'))
  })
  afterAll(async () => {
    await server?.close()
    await rm(work, { recursive: true, force: true })
  })

  it('pins the closure from the store narinfo; a smaller budget then evicts everything else', async () => {
    const dir = join(work, 'store')
    await prefetchCommand(
      { paths: [root.storePath, diamond[0]!.storePath], caches: [server.url], output: dir, trustedKeys: [fixtures.publicKey] },
      quiet,
    )
    const run = await runCli(['pin', root.storePath, '--store', dir])
    expect(run.stderr).toBe('')
    expect(run.code).toBe(0)
    expect(run.stdout).toMatch(/^pinned 20 paths \([\d.]+ KiB in the store\), 0 missing$/m)

    const closureBytes = closure.reduce((n, p) => n + p.fileSize, 0)
    const store = await openStore(dir, { maxBytes: closureBytes + 100 * 1024 })
    try {
      for (const path of closure) expect(store.get(path.fileHash)?.pinned, path.name).toBe(true)
      for (const path of diamond) expect(store.has(path.fileHash), path.name).toBe(false)
      expect(await store.narInfo(root.hashPart)).toBe(fixtures.narinfoText(root.name))
      expect(await store.narInfo(diamond[0]!.hashPart)).toBeUndefined()

      // One process owns a store: a second one gets one line and exit 1.
      const busy = await runCli(['pin', root.storePath, '--store', dir])
      expect(busy.code).toBe(1)
      expect(busy.stderr).toMatch(/^narrace: NARRACE_STORE_LOCKED: store \S+ is in use by another process\n$/)
    } finally {
      await store.close()
    }

    const unpin = await runCli(['pin', '--unpin', root.storePath, '--store', dir])
    expect(unpin.code).toBe(0)
    const after = await openStore(dir, { maxBytes: Number.MAX_SAFE_INTEGER })
    expect(after.pins()).toEqual([])
    await after.close()
  })

  it('pins from --cache before the NARs arrive, takes --list, and reports paths it cannot find', async () => {
    const dir = join(work, 'early')
    const list = join(work, 'pins.txt')
    await writeFile(list, `# keep\n${diamond[0]!.storePath}\n${'0'.repeat(32)}\n`)
    const run = await runCli(['pin', '--list', list, '--store', dir, '--cache', server.url, '--trusted-public-key', fixtures.publicKey])
    expect(run.code).toBe(1)
    expect(run.stdout).toMatch(/^pinned 4 paths \(0 B in the store, 4 NARs not there yet\), 1 missing$/m)
    expect(run.stdout).toContain(`missing ${'0'.repeat(32)}`)
    const store = await openStore(dir)
    expect(store.pins().sort()).toEqual(diamond.map((p) => p.fileHash).sort())
    await store.close()
  })
})
