import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli, startCli } from '../packages/cli/test/support/run-cli.js'
import { fixtures } from './fixtures/index.js'

/** `narrace index import` and `export`: exchanging mapping files, with bad lines counted and never applied. */
describe('narrace index', () => {
  let dir: string
  let index: string
  const small = fixtures.path('small')
  const big = fixtures.path('5m')
  const cid = 'bafkreidumwfdaazlbmkeod2qy5wvmqj2dwbzqbsrxfacqzuk4ljxfmyrbm'
  const btih = 'c9e15763f722f23e98a29decdfae341b98d53056'

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narrace-cli-index-'))
    index = join(dir, 'nested', 'index.sqlite')
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('imports good lines, counts and skips bad ones, then updates on a second import', async () => {
    const file = join(dir, 'mappings.ndjson')
    await writeFile(
      file,
      [
        JSON.stringify({ fileHash: small.fileHash, size: small.fileSize, cid }),
        JSON.stringify({ fileHash: big.fileHash, size: big.fileSize, btih }),
        JSON.stringify({ fileHash: big.fileHash, btih: 'not-hex' }),
        '{not json',
        '',
      ].join('\n'),
    )
    const first = await runCli(['index', 'import', file, '--index', index])
    expect(first.code).toBe(0)
    expect(first.stdout).toBe('added 2, updated 0, rejected 2\n')
    const reported = first.stderr.trim().split('\n')
    expect(reported).toHaveLength(2)
    expect(reported[0]).toMatch(/^line 3 rejected: .*btih/)
    expect(reported[1]).toMatch(/^line 4 rejected: /)

    const second = await runCli(['index', 'import', file, '--index', index])
    expect(second.stdout).toBe('added 0, updated 2, rejected 2\n')
  })

  it('exports every mapping as NDJSON on stdout', async () => {
    const run = await runCli(['index', 'export', '--index', index])
    expect(run.code).toBe(0)
    const lines = run.stdout.trim().split('\n').map((l) => JSON.parse(l))
    expect(lines).toHaveLength(2)
    expect(lines.find((l) => l.fileHash === small.fileHash)).toMatchObject({ cid, size: small.fileSize })
    expect(lines.find((l) => l.fileHash === big.fileHash)).toMatchObject({ btih, size: big.fileSize })
  })

  it('round-trips: an export imported into a fresh index gives the same export', async () => {
    const exported = await runCli(['index', 'export', '--index', index])
    const file = join(dir, 'exported.ndjson')
    await writeFile(file, exported.stdout)
    const copy = join(dir, 'copy.sqlite')
    expect((await runCli(['index', 'import', file, '--index', copy])).stdout).toBe('added 2, updated 0, rejected 0\n')
    expect((await runCli(['index', 'export', '--index', copy])).stdout).toBe(exported.stdout)
  })

  it('exports to a FILE when one is given', async () => {
    const file = join(dir, 'to-file.ndjson')
    const run = await runCli(['index', 'export', file, '--index', index])
    expect(run.code).toBe(0)
    expect(run.stdout).toBe('')
    expect(await readFile(file, 'utf8')).toBe((await runCli(['index', 'export', '--index', index])).stdout)
  })

  it('reads stdin for -', async () => {
    const copy = join(dir, 'from-stdin.sqlite')
    const line = JSON.stringify({ fileHash: small.fileHash, size: small.fileSize, cid })
    const child = startCli(['index', 'import', '-', '--index', copy], {}, 'pipe')
    child.stdin!.end(`${line}\n`)
    const run = await child.done
    expect(run.code).toBe(0)
    expect(run.stdout).toBe('added 1, updated 0, rejected 0\n')
  })

  it('uses $NARRACE_INDEX when no --index is given', async () => {
    const run = await runCli(['index', 'export'], { env: { NARRACE_INDEX: index } })
    expect(run.stdout.trim().split('\n')).toHaveLength(2)
  })

  it.each([
    [['index']],
    [['index', 'import']],
    [['index', 'export', 'one', 'two']],
    [['index', 'frobnicate']],
  ])('exits 2 for %j', async (args) => {
    const run = await runCli([...args, '--index', index])
    expect(run.code).toBe(2)
  })

  it('exits 1 with one line for a file that is not there, or an index that is not there, and makes no index', async () => {
    const fresh = join(dir, 'never.sqlite')
    for (const args of [
      ['index', 'import', join(dir, 'absent.ndjson'), '--index', fresh],
      ['index', 'export', '--index', join(dir, 'absent.sqlite')],
      ['index', 'export', join(dir, 'absent', 'out.ndjson'), '--index', index],
      ['index', 'import', join(dir, 'mappings.ndjson'), '--index', join(dir, 'mappings.ndjson')],
    ]) {
      const run = await runCli(args)
      expect(run.code).toBe(1)
      expect(run.stderr).toMatch(/^narrace: [^\n]+\n$/)
    }
    expect(existsSync(fresh)).toBe(false)
    expect(existsSync(join(dir, 'absent'))).toBe(false)
  })
})
