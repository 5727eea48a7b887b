import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { UsageError } from '../src/args.js'
import { readRoots } from '../src/roots.js'

const A = '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt'
const B = '779zy9mzxyvm1i80ynjmc0ivd01df386'

describe('readRoots', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narrace-roots-'))
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('takes store paths and hash parts from the command line and a list file, once each', async () => {
    const list = join(dir, 'list')
    await writeFile(list, `# my subscription\n${A}\n\n  ${B}  # a hash part\n${A}\n`)
    expect(await readRoots([B], list)).toEqual([B, A])
  })

  it('refuses anything else with a UsageError', async () => {
    await expect(readRoots(['/usr/bin/env'])).rejects.toThrow(UsageError)
    await expect(readRoots([], join(dir, 'absent'))).rejects.toThrow(/can't read --list/)
  })
})
