/**
 * @narrace/torrent in a real loopback swarm: an HTTP tracker on 127.0.0.1, webtorrent clients seeding the
 * NARs of the Nix-made fixture cache, and the fixture cache served over HTTP as the healthy other backend.
 */
import { readdirSync } from 'node:fs'
import { readdir, readFile, rm } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  NarHashMismatchError,
  NarNotFoundError,
  resolveNar,
  type NarEvent,
  type NarStream,
} from '@narrace/core'
import { httpBackend, type HttpBackend } from '@narrace/http'
import { openIndex, type NarIndex } from '@narrace/index'
import { publishToTorrent, torrentBackend, type TorrentBackend } from '@narrace/torrent'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import {
  activeResources,
  collect,
  newClient,
  startTracker,
  tempDir,
  throttleUpload,
  waitFor,
  writeNar,
  type Tracker,
} from '../packages/torrent/test/swarm.js'

type Client = ReturnType<typeof newClient>
type Dir = Awaited<ReturnType<typeof tempDir>>

const FIXTURES = ['200k', '900k', '5m'] as const

let tracker: Tracker
let seeders: Client[]
let index: NarIndex
let cache: CacheServer
let http: HttpBackend
const closers: (() => Promise<void> | void)[] = []

const bytes = new Map<string, Buffer>()
const narBytes = (name: string): Buffer => bytes.get(name)!

beforeAll(async () => {
  tracker = await startTracker()
  index = openIndex(':memory:')
  seeders = [newClient(), newClient()]
  for (const name of FIXTURES) {
    bytes.set(name, await readFile(fixtures.narPath(name)))
    for (const client of seeders) {
      await publishToTorrent(fixtures.narPath(name), { index, client, announce: tracker.announce })
    }
  }
  cache = await startCacheServer({ root: fixtures.cacheDir })
  http = httpBackend({ url: cache.url, name: 'http' })
})

afterAll(async () => {
  for (const close of closers.reverse()) await close()
  await http?.close()
  await cache?.close()
  for (const client of seeders ?? []) await client.close()
  await tracker?.close()
  index?.close()
})

async function downloads(): Promise<Dir> {
  const dir = await tempDir('narrace-swarm-dl-')
  closers.push(() => dir.remove())
  return dir
}

async function backend(options: Partial<Parameters<typeof torrentBackend>[0]> = {}): Promise<TorrentBackend> {
  const dir = await downloads()
  const b = torrentBackend({ index, announce: tracker.announce, downloadDir: dir.path, ...options })
  closers.push(() => b.close())
  return b
}

async function read(stream: NarStream): Promise<Buffer> {
  return collect(stream)
}

describe('torrent backend in a loopback swarm', () => {
  it('resolveNar with only torrentBackend returns the verified bytes, and leaves nothing in downloadDir', async () => {
    const nar = fixtures.path('5m')
    const dir = await downloads()
    const torrent = await backend({ downloadDir: dir.path })
    const stream = await resolveNar(nar.fileHash, { backends: [torrent], size: nar.fileSize })
    expect((await read(stream)).equals(narBytes('5m'))).toBe(true)
    expect(stream.winner).toBe('torrent')
    expect(await readdir(dir.path)).toEqual([])
  })

  describe('a mapping that points at the torrent of a different file', () => {
    let wrong: NarIndex
    beforeAll(() => {
      wrong = openIndex(':memory:')
      closers.push(() => wrong.close())
      const other = index.get(fixtures.path('900k').fileHash)!
      // No size: the torrent's length then passes, and only the SHA-256 can tell.
      wrong.put({ fileHash: fixtures.path('200k').fileHash, btih: other.btih, magnet: other.magnet })
    })

    it('ends in NarHashMismatchError', async () => {
      const torrent = await backend({ index: wrong })
      const stream = await resolveNar(fixtures.path('200k').fileHash, { backends: [torrent] })
      await expect(read(stream)).rejects.toBeInstanceOf(NarHashMismatchError)
    })

    it('raced with a healthy HTTP backend, fails over and the result verifies', async () => {
      const torrent = await backend({ index: wrong })
      const events: NarEvent[] = []
      const stream = await resolveNar(fixtures.path('200k').fileHash, {
        backends: [torrent, http],
        // The torrent must win the first race for the lie to be served; the retry is not hedged.
        hedge: { http: 10_000 },
        verifyFirstBelow: 1 << 20,
        onEvent: (event) => events.push(event),
      })
      expect((await read(stream)).equals(narBytes('200k'))).toBe(true)
      expect(stream.winner).toBe('http')
      const failed = events.find((e) => e.type === 'fail' && e.backend === 'torrent')
      expect(failed?.error).toBeInstanceOf(NarHashMismatchError)
    })
  })

  it('a seeder that goes away mid-download: the stream fails over to HTTP from bytesRead', async () => {
    // A swarm of its own, so that the fixture seeders above cannot finish the download.
    const lonely = await startTracker()
    const seeder = newClient()
    const alone = openIndex(':memory:')
    closers.push(() => alone.close(), () => lonely.close(), () => seeder.close())
    const nar = fixtures.path('5m')
    await publishToTorrent(fixtures.narPath('5m'), { index: alone, client: seeder, announce: lonely.announce })
    throttleUpload(seeder, 512 * 1024)

    const torrent = await backend({ index: alone, announce: lonely.announce })
    const events: NarEvent[] = []
    const stream = await resolveNar(nar.fileHash, {
      backends: [torrent, http],
      size: nar.fileSize,
      hedge: { http: 10_000 },
      stallTimeoutMs: 1000,
      onEvent: (event) => events.push(event),
    })
    const chunks: Uint8Array[] = []
    let cut = 0
    for await (const chunk of stream) {
      chunks.push(chunk)
      if (cut === 0 && stream.bytesRead >= 256 * 1024) {
        cut = stream.bytesRead
        await seeder.close()
      }
    }
    expect(cut).toBeGreaterThan(0)
    expect(cut).toBeLessThan(nar.fileSize)
    expect(Buffer.concat(chunks).equals(narBytes('5m'))).toBe(true)
    expect(stream.sources).toEqual(['torrent', 'http'])
    const failover = events.find((e) => e.type === 'failover')
    expect(failover?.backend).toBe('http')
    expect(failover!.bytes).toBeGreaterThanOrEqual(cut)
    const resumed = cache.requests.find((r) => r.range !== undefined)
    expect(resumed?.range).toBe(`bytes=${failover!.bytes}-`)
  })

  it('an abort mid-download leaves no open sockets, timers or files', async () => {
    const lonely = await startTracker()
    const seeder = newClient()
    const alone = openIndex(':memory:')
    closers.push(() => alone.close(), () => lonely.close(), () => seeder.close())
    for (const name of ['200k', '5m']) {
      await publishToTorrent(fixtures.narPath(name), { index: alone, client: seeder, announce: lonely.announce })
    }
    const dir = await downloads()
    const torrent = torrentBackend({ index: alone, announce: lonely.announce, downloadDir: dir.path })
    closers.push(() => torrent.close())

    // A first fetch starts the backend's client, so that its listening socket is part of the baseline.
    await read(await resolveNar(fixtures.path('200k').fileHash, { backends: [torrent] }))
    const baseline = await steadyResources()
    const fds = readdirSync('/proc/self/fd').length

    throttleUpload(seeder, 256 * 1024)
    const controller = new AbortController()
    const stream = await resolveNar(fixtures.path('5m').fileHash, { backends: [torrent], signal: controller.signal })
    const iterator = stream[Symbol.asyncIterator]()
    expect((await iterator.next()).done).toBe(false)
    controller.abort(new Error('the client went away'))
    await expect(drain(iterator)).rejects.toThrow('the client went away')

    const atMostBaseline = (): boolean =>
      Object.entries(activeResources()).every(([kind, n]) => n <= (baseline[kind] ?? 0))
    expect(await waitFor(atMostBaseline, 5000), JSON.stringify({ baseline, now: activeResources() })).toBe(true)
    expect(await waitFor(() => readdirSync('/proc/self/fd').length <= fds, 5000)).toBe(true)
    expect(await readdir(dir.path)).toEqual([])
  })

  it('no mapping gives NarNotFoundError in under 50 ms', async () => {
    const torrent = await backend()
    const { hash } = await writeNar((await downloads()).path, 100)
    const started = performance.now()
    await expect(resolveNar(hash, { backends: [torrent] })).rejects.toBeInstanceOf(NarNotFoundError)
    expect(performance.now() - started).toBeLessThan(50)
  })

  it('a torrent whose metadata never arrives times out, with a clear error', async () => {
    const { hash } = await writeNar((await downloads()).path, 100)
    const nobody = openIndex(':memory:')
    closers.push(() => nobody.close())
    nobody.put({ fileHash: hash.toString(), btih: 'ab'.repeat(20), size: 100 })
    const torrent = await backend({ index: nobody, metadataTimeoutMs: 300 })
    const resolving = resolveNar(hash, { backends: [torrent] })
    await expect(resolving).rejects.toBeInstanceOf(NarNotFoundError)
    await expect(resolving).rejects.toThrow(
      `torrent: no peer sent the metadata of torrent ${'ab'.repeat(20)} (${hash}) within 300 ms`,
    )
  })

  it('two hundred publish-then-fetch cycles in one process leak no file descriptors', async () => {
    const files = await downloads()
    const seeder = seeders[0]!
    const torrent = await backend()
    const cycle = async (): Promise<void> => {
      const nar = await writeNar(files.path, 16 * 1024)
      const { infoHash } = await publishToTorrent(nar.path, { index, client: seeder, announce: tracker.announce, hash: nar.hash })
      const stream = await resolveNar(nar.hash, { backends: [torrent], size: nar.bytes.length })
      expect((await read(stream)).equals(nar.bytes)).toBe(true)
      const seeded = seeder.torrents.find((t) => t.infoHash === infoHash)!
      await new Promise<void>((resolve) => void seeder.remove(seeded, { destroyStore: false }, () => resolve()))
      await rm(nar.path)
    }
    await cycle()
    const fdsBefore = readdirSync('/proc/self/fd').length
    for (let i = 1; i < 200; i++) await cycle()
    const settled = await waitFor(() => readdirSync('/proc/self/fd').length <= fdsBefore, 5000)
    const fdsAfter = readdirSync('/proc/self/fd').length
    console.log(`file descriptors: ${fdsBefore} before 199 publish-then-fetch cycles, ${fdsAfter} after`)
    expect(settled).toBe(true)
    expect(await readdir(files.path)).toEqual([])
  })
})

/** The active resources once they stop changing (sockets of earlier downloads take a moment to close). */
async function steadyResources(): Promise<Record<string, number>> {
  let last = JSON.stringify(activeResources())
  for (let i = 0; i < 50; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    const now = JSON.stringify(activeResources())
    if (now === last) break
    last = now
  }
  return JSON.parse(last) as Record<string, number>
}

async function drain(iterator: AsyncIterator<Uint8Array>): Promise<void> {
  for (let step = await iterator.next(); !step.done; step = await iterator.next());
}
