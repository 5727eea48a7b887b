import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { NarHashMismatchError, NarNotFoundError, NarSizeMismatchError, parseNarHash, resolveNar, type NarHash } from '@narrace/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { folderBytes } from './support/folder.js'
import {
  InvalidNarUrlError,
  openStore,
  storeBackend,
  StoreFullError,
  StoreLockedError,
  type NarStore,
} from '../src/index.js'

let dir: string
const open: NarStore[] = []

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narrace-store-'))
})
afterEach(async () => {
  await Promise.all(open.splice(0).map((store) => store.close()))
  await rm(dir, { recursive: true, force: true })
})

async function openTracked(options: Parameters<typeof openStore>[1] = {}): Promise<NarStore> {
  const store = await openStore(dir, options)
  open.push(store)
  return store
}

function nar(size: number): { bytes: Buffer; hash: NarHash } {
  const bytes = randomBytes(size)
  return { bytes, hash: parseNarHash(`sha256:${createHash('sha256').update(bytes).digest('hex')}`) }
}

async function* chunks(bytes: Uint8Array, size = 4096): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size)
}

function narInfoText(hash: NarHash, size: number, hashPart: string, url = `nar/${hash.nix32}.nar.xz`): string {
  return (
    `StorePath: /nix/store/${hashPart}-example\nURL: ${url}\nCompression: xz\nFileHash: ${hash}\nFileSize: ${size}\n` +
    'NarHash: sha256:0yfs5pcq03glmihj53237vm91lr60bvn0bph97xba3x48qf15xw7\nNarSize: 56160\nReferences: \n'
  )
}

describe('layout and verified entry', () => {
  it('makes the layout Nix reads and writes a verified NAR under nar/<FileHash>.nar.xz', async () => {
    const store = await openTracked()
    expect(await readFile(join(dir, 'nix-cache-info'), 'utf8')).toBe('StoreDir: /nix/store\n')
    const { bytes, hash } = nar(10_000)
    const entry = await store.add(hash, chunks(bytes), { size: bytes.length })
    expect(entry.url).toBe(`nar/${hash.nix32}.nar.xz`)
    expect(await readFile(join(dir, entry.url))).toEqual(bytes)
    expect(store.has(hash)).toBe(true)
    expect(await readdir(join(dir, 'nar'))).toEqual([`${hash.nix32}.nar.xz`])
  })

  it('names the file by compression as Nix does', async () => {
    const store = await openTracked()
    const a = nar(10)
    const b = nar(11)
    expect((await store.add(a.hash, chunks(a.bytes), { compression: 'zstd' })).url).toBe(`nar/${a.hash.nix32}.nar.zst`)
    expect((await store.add(b.hash, chunks(b.bytes), { compression: 'none' })).url).toBe(`nar/${b.hash.nix32}.nar`)
  })

  it('keeps nothing of bytes that do not hash to the FileHash', async () => {
    const store = await openTracked()
    const { hash } = nar(5000)
    await expect(store.add(hash, chunks(randomBytes(5000)))).rejects.toBeInstanceOf(NarHashMismatchError)
    expect(await readdir(join(dir, 'nar'))).toEqual([])
    expect(store.has(hash)).toBe(false)
  })

  it('cuts a body longer than its FileSize at once, and a short one at commit', async () => {
    const store = await openTracked()
    const { bytes, hash } = nar(5000)
    await expect(store.add(hash, chunks(bytes), { size: 4000 })).rejects.toBeInstanceOf(NarSizeMismatchError)
    await expect(store.add(hash, chunks(bytes), { size: 6000 })).rejects.toBeInstanceOf(NarSizeMismatchError)
    expect(await readdir(join(dir, 'nar'))).toEqual([])
  })

  it('removes what a killed write left, and forgets files that vanished', async () => {
    let store = await openTracked()
    const { bytes, hash } = nar(3000)
    const kept = await store.add(hash, chunks(bytes))
    const gone = nar(100)
    await store.add(gone.hash, chunks(gone.bytes))
    await store.close()
    await writeFile(join(dir, 'nar', `.${hash.nix32}.nar.xz.0123456789ab.partial`), 'half')
    await writeFile(join(dir, `.${'a'.repeat(32)}.narinfo.0123456789ab.partial`), 'half')
    await rm(join(dir, 'nar', `${gone.hash.nix32}.nar.xz`))
    store = await openTracked()
    expect(await readdir(join(dir, 'nar'))).toEqual([`${hash.nix32}.nar.xz`])
    expect((await readdir(dir)).filter((n) => n.endsWith('.partial'))).toEqual([])
    expect(store.get(hash)?.size).toBe(kept.size)
    expect(store.has(gone.hash)).toBe(false)
  })
})

describe('one owner', () => {
  it('refuses a second open with a one-line StoreLockedError, and allows it after close', async () => {
    const store = await openTracked()
    const error = await openStore(dir).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoreLockedError)
    expect((error as StoreLockedError).code).toBe('NARRACE_STORE_LOCKED')
    expect((error as Error).message).not.toContain('\n')
    await store.close()
    await openTracked()
  })
})

describe('narinfo', () => {
  it('stores a narinfo only beside its NAR, names the NAR in its URL, and drops it with the NAR', async () => {
    const store = await openTracked()
    const { bytes, hash } = nar(2000)
    const hashPart = '0f1i5h4k8n6fq4yixss06f13vny31wc4'
    const text = narInfoText(hash, bytes.length, hashPart, 'nar/something-else.nar.xz')
    await expect(store.addNarInfo(text)).rejects.toBeInstanceOf(NarNotFoundError)
    await store.add(hash, chunks(bytes), { size: bytes.length })
    await store.addNarInfo(text)
    const stored = await store.narInfo(hashPart)
    expect(stored).toBe(text.replace('URL: nar/something-else.nar.xz', `URL: nar/${hash.nix32}.nar.xz`))
    await store.remove(hash)
    expect(await store.narInfo(hashPart)).toBeUndefined()
    expect((await readdir(dir)).filter((n) => n.endsWith('.narinfo'))).toEqual([])
  })

  it('refuses a narinfo whose URL climbs out, and writes nothing', async () => {
    const store = await openTracked()
    const { bytes, hash } = nar(2000)
    await store.add(hash, chunks(bytes), { size: bytes.length })
    const before = await readFile(join(dir, 'nix-cache-info'), 'utf8')
    for (const url of ['nar/../nix-cache-info', '../x.nar.xz', '/etc/passwd', 'nar/%2e%2e/nix-cache-info', 'file:/etc/passwd']) {
      const error = await store.addNarInfo(narInfoText(hash, bytes.length, '0f1i5h4k8n6fq4yixss06f13vny31wc4', url)).catch((e: unknown) => e)
      expect(error, url).toBeInstanceOf(InvalidNarUrlError)
    }
    expect(await readFile(join(dir, 'nix-cache-info'), 'utf8')).toBe(before)
    expect((await readdir(dir)).filter((n) => n.endsWith('.narinfo'))).toEqual([])
  })
})

describe('budget, LRU and pins', () => {
  it('evicts the least recently used NAR first, keeps pins, and survives a restart in that order', async () => {
    const size = 100_000
    let store = await openTracked({ maxBytes: 5 * size })
    const files = Array.from({ length: 4 }, () => nar(size))
    for (const file of files) await store.add(file.hash, chunks(file.bytes), { size })
    store.pin(files[0]!.hash)
    // files[1] is read, so files[2] is now the least recently used unpinned one.
    for await (const _ of (await store.read(files[1]!.hash)).body) void _
    await store.close()

    store = await openTracked({ maxBytes: 5 * size })
    expect(store.entries().map((e) => e.fileHash.toString())).toEqual(
      [files[0], files[2], files[3], files[1]].map((f) => f!.hash.toString()),
    )
    const evicted: string[] = []
    store.on('evict', (entry) => evicted.push(entry.fileHash.toString()))
    const more = [nar(size), nar(size)]
    for (const file of more) await store.add(file.hash, chunks(file.bytes), { size })
    expect(evicted).toEqual([files[2]!.hash.toString(), files[3]!.hash.toString()])
    expect(store.has(files[0]!.hash)).toBe(true)
    expect(store.get(files[0]!.hash)?.pinned).toBe(true)
    expect(store.has(files[1]!.hash)).toBe(true)
  })

  it('never lets the folder exceed maxBytes while it fills, concurrent writers included', async () => {
    const maxBytes = 1024 * 1024
    const store = await openTracked({ maxBytes })
    let max = 0
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        max = Math.max(max, await folderBytes(dir))
        await new Promise((r) => setImmediate(r))
      }
    })()
    const files = Array.from({ length: 24 }, (_, i) => nar(60_000 + i * 1000))
    for (let i = 0; i < files.length; i += 4) {
      await Promise.all(
        files.slice(i, i + 4).map(async (file, j) => {
          const entry = await store.add(file.hash, chunks(file.bytes), { size: file.bytes.length })
          await store.addNarInfo(narInfoText(file.hash, file.bytes.length, `${'0f1i5h4k8n6fq4yixss06f13vny31'}${'abc'[j % 3]}${i % 10}${j}`))
          return entry
        }),
      )
    }
    sampling = false
    await sampler
    expect(max).toBeGreaterThan(maxBytes / 2)
    expect(max).toBeLessThanOrEqual(maxBytes)
    expect(await folderBytes(dir)).toBeLessThanOrEqual(maxBytes)
  })

  it('refuses a file that cannot fit even with every unpinned NAR evicted', async () => {
    const store = await openTracked({ maxBytes: 300_000 })
    const pinned = nar(150_000)
    await store.add(pinned.hash, chunks(pinned.bytes), { size: 150_000 })
    store.pin(pinned.hash)
    const big = nar(200_000)
    await expect(store.add(big.hash, chunks(big.bytes), { size: 200_000 })).rejects.toBeInstanceOf(StoreFullError)
    await expect(store.add(big.hash, chunks(big.bytes))).rejects.toBeInstanceOf(StoreFullError)
    expect(store.has(pinned.hash)).toBe(true)
    expect((await readdir(join(dir, 'nar'))).length).toBe(1)
  })

  it('applies a lowered budget when opened again', async () => {
    let store = await openTracked({ maxBytes: 1_000_000 })
    for (let i = 0; i < 5; i++) {
      const file = nar(100_000)
      await store.add(file.hash, chunks(file.bytes))
    }
    await store.close()
    store = await openTracked({ maxBytes: 300_000 })
    expect(await folderBytes(dir)).toBeLessThanOrEqual(300_000)
    expect(store.entries().length).toBeLessThan(5)
  })
})

describe('tee and storeBackend', () => {
  it('passes a body through and commits it once the body ended', async () => {
    const store = await openTracked()
    const { bytes, hash } = nar(50_000)
    const out: Uint8Array[] = []
    for await (const chunk of store.tee(hash, chunks(bytes), { size: bytes.length })) out.push(chunk)
    expect(Buffer.concat(out)).toEqual(bytes)
    expect(store.has(hash)).toBe(true)
  })

  it('keeps nothing when the consumer stops early or the body is wrong', async () => {
    const store = await openTracked()
    const { bytes, hash } = nar(50_000)
    for await (const _ of store.tee(hash, chunks(bytes), { size: bytes.length })) break
    const errors: unknown[] = []
    const out: Uint8Array[] = []
    for await (const chunk of store.tee(hash, chunks(randomBytes(50_000)), { size: 50_000, onError: (e) => errors.push(e) })) out.push(chunk)
    expect(Buffer.concat(out).length).toBe(50_000)
    expect(errors[0]).toBeInstanceOf(NarHashMismatchError)
    expect(store.has(hash)).toBe(false)
    expect(await readdir(join(dir, 'nar'))).toEqual([])
  })

  it('serves through resolveNar, which re-verifies: a damaged file fails', async () => {
    const store = await openTracked()
    const { bytes, hash } = nar(30_000)
    const entry = await store.add(hash, chunks(bytes))
    const backends = [storeBackend(store)]
    const stream = await resolveNar(hash, { backends, size: bytes.length })
    const out: Uint8Array[] = []
    for await (const chunk of stream) out.push(chunk)
    expect(Buffer.concat(out)).toEqual(bytes)
    expect(stream.winner).toBe('store')

    await expect(resolveNar(nar(10).hash, { backends })).rejects.toBeInstanceOf(NarNotFoundError)
    const damaged = Buffer.from(bytes)
    damaged[100] = damaged[100]! ^ 1
    await writeFile(entry.path, damaged)
    await expect(
      (async () => {
        for await (const _ of await resolveNar(hash, { backends, size: bytes.length })) void _
      })(),
    ).rejects.toBeInstanceOf(NarHashMismatchError)
  })
})
