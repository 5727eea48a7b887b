import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
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
    [['fetch', fixtures.path('small').fileHash, '-o', 'x', '--http', 'ftp://cache']],
    [['fetch', fixtures.path('small').fileHash, '-o', 'x', '--torrent', '--index', 'i', '--announce', 'wss://tracker']],
    [['fetch', fixtures.path('small').fileHash, '-o', 'x', '--torrent', '--index', 'i', '--announce', 'not a url']],
    [['fetch', `http://127.0.0.1:1/nar/${'0'.repeat(51)}.nar.xz`, '-o', 'x']],
    [['no-such-command']],
  ])('exits 2 with a one-line error for %j', async (args) => {
    // No default index either, whatever the machine has.
    const run = await runCli(args, { env: { NARRACE_INDEX: join(dir, 'no-index.sqlite') } })
    expect(run.code).toBe(2)
    expect(run.stderr.trim().split('\n')).toHaveLength(1)
    expect(run.stderr).toMatch(/^narrace: /)
  })

  it('writes plain lines, without terminal escapes, when stderr is not a TTY', async () => {
    const out = join(dir, 'plain.nar.xz')
    const run = await runCli(['fetch', `${server.url}${nar.url}`, '-o', out])
    expect(run.code).toBe(0)
    expect(run.stderr).toMatch(/ won after /)
    expect(run.stderr + run.stdout).not.toMatch(/[\r\x1b]/)
  })

  it('refuses a directory as FILE before fetching anything (exit 2)', async () => {
    server.requests.length = 0
    const run = await runCli(['fetch', `${server.url}${nar.url}`, '-o', dir])
    expect(run.code).toBe(2)
    expect(run.stderr).toMatch(/^narrace: .*is a directory[^\n]*\n$/)
    expect(server.requests).toEqual([])
  })

  it.each([
    ['a folder that is not there', (d: string) => join(d, 'absent', 'x.nar.xz')],
    ['a folder that is a file', (d: string) => join(d, 'a-file', 'x.nar.xz')],
  ])('exits 1 with one line when FILE is in %s, and fetches nothing', async (_, output) => {
    await writeFile(join(dir, 'a-file'), '')
    server.requests.length = 0
    const run = await runCli(['fetch', `${server.url}${nar.url}`, '-o', output(dir)])
    expect(run.code).toBe(1)
    expect(run.stderr).toMatch(/^narrace: can't write [^\n]+\n$/)
    expect(server.requests).toEqual([])
  })

  it('runs as the package bin, an executable found through its shebang', async () => {
    const cli = fileURLToPath(new URL('../packages/cli/', import.meta.url))
    const pkg = JSON.parse(await readFile(join(cli, 'package.json'), 'utf8')) as { bin: Record<string, string> }
    const bin = join(cli, pkg.bin.narrace!)
    const out = join(dir, 'by-bin.nar.xz')
    // The shebang asks for `node` on PATH: this one, so that the test does not depend on the system's.
    const child = spawn(bin, ['fetch', `${server.url}${nar.url}`, '-o', out], {
      env: { ...process.env, PATH: `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ''}` },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.resume()
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject)
      child.once('close', (exitCode) => resolve(exitCode))
    })
    expect(code).toBe(0)
    expect(stdout).toMatch(/^winner /m)
    expect(await sha256(out)).toBe(nar.fileHashHex)
  })

  it.each([['fetch'], ['prefetch'], ['publish'], ['index']])('prints the usage for `narrace %s --help`', async (command) => {
    const run = await runCli([command, '--help'])
    expect(run.code).toBe(0)
    expect(run.stdout).toMatch(/^usage: narrace/)
  })

  it('lists every command with --help', async () => {
    const run = await runCli(['--help'])
    expect(run.code).toBe(0)
    for (const command of ['fetch', 'prefetch', 'publish', 'index import', 'index export']) {
      expect(run.stdout).toContain(command)
    }
  })
})
