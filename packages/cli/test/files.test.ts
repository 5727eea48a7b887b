import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseNarHash } from '@narrace/core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cacheFile, hashFile, isVerifiedFile, makeDirectory } from '../src/files.js'

describe('files', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narrace-files-'))
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('places narinfo URLs inside the cache and refuses ones that climb out', () => {
    expect(cacheFile('/c', 'nar/x.nar.xz')).toBe('/c/nar/x.nar.xz')
    for (const url of ['../x', 'nar/../../x', '/etc/passwd', 'http://evil/x']) {
      expect(() => cacheFile('/c', url)).toThrow(/inside the cache/)
    }
  })

  it('verifies a file by SHA-256 and size', async () => {
    const path = join(dir, 'f')
    await writeFile(path, 'hello')
    const hash = parseNarHash(`sha256:${createHash('sha256').update('hello').digest('hex')}`)
    expect((await hashFile(path)).hash.equals(hash)).toBe(true)
    expect(await isVerifiedFile(path, hash, 5)).toBe(true)
    expect(await isVerifiedFile(path, hash, 6)).toBe(false)
    expect(await isVerifiedFile(join(dir, 'absent'), hash, 5)).toBe(false)
  })

  it('makes a folder and its parents, and takes one that is there', async () => {
    const deep = join(dir, 'a', 'b', 'c')
    await makeDirectory(deep)
    await makeDirectory(deep)
    expect((await stat(deep)).isDirectory()).toBe(true)
    await writeFile(join(dir, 'plain'), '')
    await expect(makeDirectory(join(dir, 'plain', 'x'))).rejects.toMatchObject({ code: 'ENOTDIR' })
  })

  // Node's recursive mkdir loops forever there: mkdir says ENOENT although the parent exists.
  it.runIf(existsSync('/proc/self'))('fails, rather than hangs, under /proc', async () => {
    await expect(makeDirectory('/proc/narrace-test/nar')).rejects.toMatchObject({ code: 'ENOENT' })
  })
})
