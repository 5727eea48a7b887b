import { readdir } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NarBackendError, NarNotFoundError, NarSizeMismatchError } from '@narrace/core'
import { openIndex, type NarIndex } from '@narrace/index'
import { publishToTorrent, torrentBackend } from '../src/index.js'
import {
  collect,
  newClient,
  seedFiles,
  startTracker,
  tempDir,
  waitFor,
  writeNar,
  type Tracker,
} from './swarm.js'

type Client = ReturnType<typeof newClient>
type Nar = Awaited<ReturnType<typeof writeNar>>

let tracker: Tracker
let seeder: Client
let seedDir: Awaited<ReturnType<typeof tempDir>>
let index: NarIndex
let small: Nar
let large: Nar
const cleanups: (() => Promise<void> | void)[] = []

function signal(): AbortSignal {
  return new AbortController().signal
}

beforeAll(async () => {
  tracker = await startTracker()
  seeder = newClient()
  seedDir = await tempDir('narrace-torrent-seed-')
  index = openIndex(':memory:')
  small = await writeNar(seedDir.path, 300 * 1024)
  large = await writeNar(seedDir.path, 2 * 1024 * 1024)
  for (const nar of [small, large]) {
    await publishToTorrent(nar.path, { index, client: seeder, announce: tracker.announce, hash: nar.hash })
  }
})

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup()
  await seeder?.close()
  await tracker?.close()
  index?.close()
  await seedDir?.remove()
})

/** A backend with its own client and download directory, closed after the file's tests. */
async function backend(options: Partial<Parameters<typeof torrentBackend>[0]> = {}) {
  const dir = await tempDir('narrace-torrent-dl-')
  const b = torrentBackend({ index, announce: tracker.announce, downloadDir: dir.path, ...options })
  cleanups.push(() => b.close(), () => dir.remove())
  return { backend: b, dir: dir.path }
}

describe('torrentBackend', () => {
  it('rejects a hash with no mapping with NarNotFoundError, without a network wait', async () => {
    const { backend: b } = await backend()
    const unknown = (await writeNar(seedDir.path, 10)).hash
    const started = performance.now()
    await expect(b.fetch(unknown, { signal: signal() })).rejects.toBeInstanceOf(NarNotFoundError)
    expect(performance.now() - started).toBeLessThan(50)
  })

  it('streams the file from the requested offset and reports that offset', async () => {
    const { backend: b } = await backend()
    const source = await b.fetch(large.hash, { signal: signal(), offset: 1000, size: large.bytes.length })
    expect(source.offset).toBe(1000)
    expect(source.size).toBe(large.bytes.length)
    expect((await collect(source.body)).equals(large.bytes.subarray(1000))).toBe(true)
  })

  it('streams only the requested range, end exclusive, and says it serves ranges', async () => {
    const { backend: b } = await backend()
    const source = await b.fetch(large.hash, { signal: signal(), offset: 70_000, end: 1_200_001, size: large.bytes.length })
    expect(source).toMatchObject({ offset: 70_000, size: large.bytes.length, ranges: true })
    expect((await collect(source.body)).equals(large.bytes.subarray(70_000, 1_200_001))).toBe(true)
  })

  it('rejects a torrent whose length disagrees with the FileSize', async () => {
    const { backend: b } = await backend()
    const fetching = b.fetch(small.hash, { signal: signal(), size: small.bytes.length + 1 })
    await expect(fetching).rejects.toBeInstanceOf(NarSizeMismatchError)
    await expect(fetching).rejects.toThrow(/FileSize/)
  })

  it('rejects a torrent whose length disagrees with the mapped size', async () => {
    const wrong = openIndex(':memory:')
    cleanups.push(() => wrong.close())
    wrong.put({ ...index.get(small.hash)!, size: small.bytes.length - 1 })
    const { backend: b } = await backend({ index: wrong })
    const fetching = b.fetch(small.hash, { signal: signal() })
    await expect(fetching).rejects.toBeInstanceOf(NarSizeMismatchError)
    await expect(fetching).rejects.toThrow(/mapped size/)
  })

  it('gives up with NarNotFoundError when no peer sends the metadata', async () => {
    const { hash } = await writeNar(seedDir.path, 10)
    index.put({ fileHash: hash.toString(), btih: randomBytes(20).toString('hex') })
    const { backend: b, dir } = await backend({ metadataTimeoutMs: 200 })
    const fetching = b.fetch(hash, { signal: signal() })
    await expect(fetching).rejects.toBeInstanceOf(NarNotFoundError)
    await expect(fetching).rejects.toThrow(/no peer sent the metadata of torrent [0-9a-f]{40} .* within 200 ms/)
    expect(await readdir(dir)).toEqual([])
  })

  it('stops waiting for metadata on abort, and removes the torrent', async () => {
    const { hash } = await writeNar(seedDir.path, 10)
    index.put({ fileHash: hash.toString(), btih: randomBytes(20).toString('hex') })
    const client = newClient()
    cleanups.push(() => client.close())
    const { backend: b } = await backend({ client })
    const controller = new AbortController()
    const fetching = b.fetch(hash, { signal: controller.signal })
    fetching.catch(() => {})
    expect(await waitFor(() => client.torrents.length === 1)).toBe(true)
    const reason = new Error('lost the race')
    controller.abort(reason)
    await expect(fetching).rejects.toBe(reason)
    expect(client.torrents).toHaveLength(0)
  })

  it('rejects a torrent of several files', async () => {
    const dir = await tempDir('narrace-torrent-multi-')
    cleanups.push(() => dir.remove())
    const a = await writeNar(dir.path, 1000)
    const b = await writeNar(dir.path, 2000)
    const torrent = await seedFiles(seeder, [a.path, b.path], dir.path, tracker.announce)
    index.put({ fileHash: a.hash.toString(), btih: torrent.infoHash })
    const { backend: backend1 } = await backend()
    await expect(backend1.fetch(a.hash, { signal: signal() })).rejects.toThrow(/holds 2 files/)
  })

  it('removes the torrent and its file when the fetch is aborted mid-stream', async () => {
    const client = newClient()
    cleanups.push(() => client.close())
    const { backend: b, dir } = await backend({ client })
    const controller = new AbortController()
    const source = await b.fetch(large.hash, { signal: controller.signal })
    const iterator = source.body[Symbol.asyncIterator]()
    expect((await iterator.next()).done).toBe(false)
    expect(client.torrents).toHaveLength(1)
    const reason = new Error('lost the race')
    controller.abort(reason)
    await expect(iterator.next()).rejects.toBe(reason)
    expect(client.torrents).toHaveLength(0)
    expect(await readdir(dir)).toEqual([])
  })

  it('removes the torrent and its file when the iterator is returned', async () => {
    const client = newClient()
    cleanups.push(() => client.close())
    const { backend: b, dir } = await backend({ client })
    const source = await b.fetch(small.hash, { signal: signal() })
    for await (const chunk of source.body) {
      expect(chunk.length).toBeGreaterThan(0)
      break
    }
    expect(client.torrents).toHaveLength(0)
    expect(await readdir(dir)).toEqual([])
  })

  it('has removed the torrent and its file by the time the stream ends', async () => {
    const client = newClient()
    cleanups.push(() => client.close())
    const { backend: b, dir } = await backend({ client })
    const source = await b.fetch(large.hash, { signal: signal() })
    expect((await collect(source.body)).equals(large.bytes)).toBe(true)
    expect(client.torrents).toHaveLength(0)
    expect(await readdir(dir)).toEqual([])
  })

  it('with seedAfterDownload keeps a complete download and seeds it to the next peer', async () => {
    const lone = await tempDir('narrace-torrent-lone-')
    const loneSeeder = newClient()
    cleanups.push(() => loneSeeder.close(), () => lone.remove())
    const nar = await writeNar(lone.path, 500 * 1024)
    const { infoHash } = await publishToTorrent(nar.path, { index, client: loneSeeder, announce: tracker.announce })

    const donor = await backend({ seedAfterDownload: true })
    const first = await donor.backend.fetch(nar.hash, { signal: signal() })
    expect((await collect(first.body)).equals(nar.bytes)).toBe(true)
    expect(await readdir(donor.dir)).toEqual([`${nar.hash.nix32}.nar.xz`])

    // The first seeder leaves; only the donor has the file now.
    await loneSeeder.close()
    const { backend: next } = await backend()
    const second = await next.fetch(nar.hash, { signal: signal() })
    expect((await collect(second.body)).equals(nar.bytes)).toBe(true)
    expect(infoHash).toMatch(/^[0-9a-f]{40}$/)
  })

  it('streams from a torrent the client already seeds, and leaves it and its file alone', async () => {
    const { backend: b } = await backend({ client: seeder })
    const before = seeder.torrents.length
    const source = await b.fetch(small.hash, { signal: signal() })
    expect((await collect(source.body)).equals(small.bytes)).toBe(true)
    expect(seeder.torrents).toHaveLength(before)
    expect(await readdir(seedDir.path)).toContain(`${small.hash.nix32}.nar.xz`)
  })

  it('close() destroys the client it created, and not one it was given', async () => {
    const given = newClient()
    cleanups.push(() => given.close())
    const { backend: withGiven } = await backend({ client: given })
    await collect((await withGiven.fetch(small.hash, { signal: signal() })).body)
    await withGiven.close()
    expect(given.destroyed).toBe(false)

    const own = torrentBackend({ index, announce: tracker.announce })
    await collect((await own.fetch(small.hash, { signal: signal() })).body)
    await own.close()
    await expect(own.fetch(small.hash, { signal: signal() })).rejects.toBeInstanceOf(NarBackendError)
  })

  it('fails a pending read when close() is called', async () => {
    const { backend: b } = await backend()
    const source = await b.fetch(large.hash, { signal: signal() })
    const iterator = source.body[Symbol.asyncIterator]()
    await iterator.next()
    await b.close()
    await expect(drain(iterator)).rejects.toThrow(/is closed/)
  })
})

async function drain(iterator: AsyncIterator<Uint8Array>): Promise<void> {
  for (let step = await iterator.next(); !step.done; step = await iterator.next());
}
