import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { setTimeout as delay } from 'node:timers/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  NarHashMismatchError,
  NarNotFoundError,
  NarSizeMismatchError,
  NarStallError,
  resolveNarToFile,
  type NarBackend,
} from '../src/index.js'
import { chunked, sample, scripted, split } from './backends.js'

const { data, hash } = sample(100 * 1024)
let dir: string

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narrace-file-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('resolveNarToFile', () => {
  it('writes the verified file and reports the winner', async () => {
    const path = join(dir, `${hash.nix32}.nar.xz`)
    const result = await resolveNarToFile(hash, path, { backends: [scripted('a', data)] })
    expect(result).toEqual({ winner: 'a', size: data.length, path })
    expect((await readFile(path)).equals(data)).toBe(true)
    expect(await readdir(dir)).toEqual([`${hash.nix32}.nar.xz`])
  })

  it('writes the whole file across a fail-over', async () => {
    const path = join(dir, 'out.nar.xz')
    const backends = [scripted('dies', data, { failAt: 50_000 }), scripted('backup', data, { latencyMs: 30 })]
    await resolveNarToFile(hash, path, { backends, size: data.length })
    expect((await readFile(path)).equals(data)).toBe(true)
  })

  it('leaves no file behind after corruption', async () => {
    const path = join(dir, 'out.nar.xz')
    const error = await resolveNarToFile(hash, path, { backends: [scripted('bad', data, { corruptAt: 99_000 })] }).catch(
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(NarHashMismatchError)
    expect(await readdir(dir)).toEqual([])
  })

  it('leaves no file behind when no backend has it', async () => {
    const path = join(dir, 'out.nar.xz')
    await expect(
      resolveNarToFile(hash, path, { backends: [scripted('none', data, { missing: true })] }),
    ).rejects.toBeInstanceOf(NarNotFoundError)
    expect(await readdir(dir)).toEqual([])
  })

  it('leaves no file behind after an abort, and rejects with its reason', async () => {
    const path = join(dir, 'out.nar.xz')
    const controller = new AbortController()
    const slow = scripted('slow', data, { chunkDelayMs: 5 })
    const reason = new Error('interrupted')
    setTimeout(() => controller.abort(reason), 60)
    await expect(resolveNarToFile(hash, path, { backends: [slow], signal: controller.signal })).rejects.toBe(reason)
    expect(await readdir(dir)).toEqual([])
  })

  it('keeps an existing file when the new download fails', async () => {
    const path = join(dir, 'out.nar.xz')
    await resolveNarToFile(hash, path, { backends: [scripted('a', data)] })
    await expect(
      resolveNarToFile(hash, path, { backends: [scripted('bad', data, { corruptAt: 5 })] }),
    ).rejects.toBeInstanceOf(NarHashMismatchError)
    expect((await readFile(path)).equals(data)).toBe(true)
    expect(await readdir(dir)).toEqual(['out.nar.xz'])
  })

  it('streams into a temporary file beside the target, and renames it only at the end', async () => {
    const path = join(dir, 'out.nar.xz')
    const seen: string[][] = []
    const watched: NarBackend = {
      name: 'watched',
      async fetch(h, o) {
        const source = await chunked('inner', split(data, 10_000)).fetch(h, o)
        const inner = source.body[Symbol.asyncIterator]()
        source.body = {
          [Symbol.asyncIterator]: () => ({
            async next() {
              seen.push(await readdir(dir))
              return inner.next()
            },
          }),
        }
        return source
      },
    }
    await resolveNarToFile(hash, path, { backends: [watched] })
    const during = seen.at(-1)!
    expect(during).toHaveLength(1)
    expect(during[0]).not.toBe('out.nar.xz')
    expect(during[0]).toContain('out.nar.xz')
    expect(await readdir(dir)).toEqual(['out.nar.xz'])
  })

  it('leaves no file behind after an abort during the race', async () => {
    const path = join(dir, 'out.nar.xz')
    const controller = new AbortController()
    const slow = scripted('slow', data, { latencyMs: 1000 })
    const pending = resolveNarToFile(hash, path, { backends: [slow], signal: controller.signal })
    await delay(20)
    controller.abort()
    await expect(pending).rejects.toBe(controller.signal.reason)
    expect(await readdir(dir)).toEqual([])
  })

  it('leaves no file behind after a stall or a short end with no other source', async () => {
    const path = join(dir, 'out.nar.xz')
    const stalls = scripted('stalls', data, { stallAt: 50_000 })
    await expect(resolveNarToFile(hash, path, { backends: [stalls], stallTimeoutMs: 50 })).rejects.toMatchObject({
      name: 'NarUnavailableError',
      errors: expect.arrayContaining([expect.any(NarStallError)]),
    })
    const short = scripted('short', data, { truncateAt: 50_000 })
    await expect(resolveNarToFile(hash, path, { backends: [short], size: data.length })).rejects.toBeInstanceOf(
      NarSizeMismatchError,
    )
    expect(await readdir(dir)).toEqual([])
  })
})
