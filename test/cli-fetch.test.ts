import { createHash } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { runCli, startCli } from '../packages/cli/test/support/run-cli.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'

/** `narrace fetch` as a user runs it: the built binary, its output and its exit codes. */
describe('narrace fetch', () => {
  let server: CacheServer
  let dir: string
  const nar = fixtures.path('200k')

  beforeAll(async () => {
    server = await startCacheServer({ root: fixtures.cacheDir })
    dir = await mkdtemp(join(tmpdir(), 'narrace-cli-fetch-'))
  })
  afterEach(() => server.clearFaults())
  afterAll(async () => {
    await server?.close()
    await rm(dir, { recursive: true, force: true })
  })

  const sha256 = async (path: string): Promise<string> =>
    createHash('sha256').update(await readFile(path)).digest('hex')

  it('fetches a NAR URL, which names its cache, and reports the winner, size, time and throughput (exit 0)', async () => {
    const out = join(dir, 'by-url.nar.xz')
    const run = await runCli(['fetch', `${server.url}${nar.url}`, '-o', out])
    expect(run.stderr).not.toMatch(/narrace:/)
    expect(run.code).toBe(0)
    expect(await sha256(out)).toBe(nar.fileHashHex)
    expect(run.stdout).toMatch(new RegExp(`winner ${server.url.replace(/\/$/, '')}.*\\(${nar.fileSize} bytes\\) in .*/s`))
  })

  it('fetches a hash from the --http caches, skipping a dead one', async () => {
    const dead = await startCacheServer({ root: fixtures.cacheDir, faults: { status: 500 } })
    try {
      const out = join(dir, 'by-hash.nar.xz')
      const run = await runCli(['fetch', nar.fileHash, '-o', out, '--http', dead.url, '--http', server.url])
      expect(run.code).toBe(0)
      expect(await sha256(out)).toBe(nar.fileHashHex)
    } finally {
      await dead.close()
    }
  })

  it('exits 1 and leaves nothing at FILE when no source has the NAR', async () => {
    const out = join(dir, 'missing.nar.xz')
    const run = await runCli(['fetch', `sha256:${'0'.repeat(52)}`, '-o', out, '--http', server.url])
    expect(run.code).toBe(1)
    expect(run.stderr).toMatch(/not found/)
    expect(await readdir(dir)).not.toContain('missing.nar.xz')
    expect((await readdir(dir)).filter((n) => n.endsWith('.partial'))).toEqual([])
  })

  it('exits 1 and leaves nothing at FILE when the bytes fail verification', async () => {
    server.setFaults({ flipByteAt: 1000 })
    const out = join(dir, 'corrupt.nar.xz')
    const run = await runCli(['fetch', `${server.url}${nar.url}`, '-o', out])
    expect(run.code).toBe(1)
    expect(run.stderr).toMatch(/verification failed|HASH_MISMATCH/)
    expect(await readdir(dir)).not.toContain('corrupt.nar.xz')
    expect((await readdir(dir)).filter((n) => n.endsWith('.partial'))).toEqual([])
  })

  it('stops on Ctrl-C mid-download with exit 130 and leaves nothing behind', async () => {
    server.setFaults({ bytesPerSecond: 100_000 })
    const out = join(dir, 'interrupted.nar.xz')
    const child = startCli(['fetch', `${server.url}${fixtures.path('900k').url}`, '-o', out])
    let stderr = ''
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no winner line in time: ${stderr}`)), 20_000)
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString()
        if (stderr.includes(' won after ')) {
          clearTimeout(timer)
          resolve()
        }
      })
    })
    child.kill('SIGINT')
    const run = await child.done
    expect(run.code).toBe(130)
    expect(await readdir(dir)).not.toContain('interrupted.nar.xz')
    expect((await readdir(dir)).filter((n) => n.endsWith('.partial'))).toEqual([])
  })

  it.each([
    [['fetch', fixtures.path('small').fileHash]],
    [['fetch', 'not-a-hash', '-o', 'x']],
    [['fetch', fixtures.path('small').fileHash, '-o', 'x', '--no-such-flag']],
    [['fetch', fixtures.path('small').fileHash, '-o', 'x']],
    [['fetch', fixtures.path('small').fileHash, '-o', 'x', '--torrent']],
    [['no-such-command']],
  ])('exits 2 with a one-line error for %j', async (args) => {
    const run = await runCli(args)
    expect(run.code).toBe(2)
    expect(run.stderr.trim().split('\n')).toHaveLength(1)
    expect(run.stderr).toMatch(/^narrace: /)
  })

  it('lists every command with --help', async () => {
    const run = await runCli(['--help'])
    expect(run.code).toBe(0)
    for (const command of ['fetch', 'prefetch', 'publish', 'index import', 'index export']) {
      expect(run.stdout).toContain(command)
    }
  })
})
