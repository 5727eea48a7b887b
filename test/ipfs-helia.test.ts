import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import {
  NarHashMismatchError,
  NarNotFoundError,
  parseNarHash,
  resolveNar,
  type NarBackend,
  type NarEvent,
  type NarHash,
} from '@narrace/core'
import { httpBackend } from '@narrace/http'
import { openIndex, type NarIndex } from '@narrace/index'
import { ipfsBackend, narCid, publishToIpfs } from '@narrace/ipfs'
import type { Helia } from 'helia'
import { CID } from 'multiformats/cid'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import { connect, loopbackHelia } from './support/helia.js'

async function readAll(stream: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  for await (const chunk of stream) chunks.push(chunk)
  return Buffer.concat(chunks)
}

function hashOf(bytes: Uint8Array): NarHash {
  return parseNarHash(createHash('sha256').update(bytes).digest('hex'))
}

const nodes: Helia[] = []
const indexes: NarIndex[] = []
let dir: string
/** Publishes the fixture NARs. */
let provider: Helia
/** Backs the ipfsBackend under test; holds nothing itself. */
let fetcher: Helia
let index: NarIndex

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narrace-ipfs-helia-'))
  provider = await loopbackHelia()
  fetcher = await loopbackHelia()
  nodes.push(provider, fetcher)
  await connect(fetcher, provider)
  index = openIndex()
  indexes.push(index)
})

afterAll(async () => {
  for (const i of indexes) i.close()
  await Promise.all(nodes.map((node) => node.stop()))
  if (dir) await rm(dir, { recursive: true, force: true })
})

describe('publishToIpfs with Helia', () => {
  it('adds a file of at most 1 MiB as exactly its raw CID, and records the mapping', async () => {
    for (const name of ['200k', '900k']) {
      const fixture = fixtures.path(name)
      const result = await publishToIpfs(fixtures.narPath(name), { helia: provider, index })
      expect(result).toEqual({
        cid: narCid(fixture.fileHash).toString(),
        singleBlock: true,
        fileHash: fixture.fileHash,
        size: fixture.fileSize,
      })
      expect(index.get(fixture.fileHash)).toMatchObject({ cid: result.cid, size: fixture.fileSize })
    }
    const oneMiB = randomBytes(1_048_576)
    const exact = await publishToIpfs(oneMiB, { helia: provider })
    expect(exact).toMatchObject({ cid: narCid(hashOf(oneMiB)).toString(), singleBlock: true })
  })

  it('adds a larger file as a DAG whose CID only the mapping knows', async () => {
    const fixture = fixtures.path('5m')
    const result = await publishToIpfs(fixtures.narPath('5m'), { helia: provider, index })
    expect(result.singleBlock).toBe(false)
    expect(result.cid).not.toBe(narCid(fixture.fileHash).toString())
    expect(index.get(fixture.fileHash)).toMatchObject({ cid: result.cid, size: fixture.fileSize })
    const justOver = randomBytes(1_048_577)
    expect((await publishToIpfs(justOver, { helia: provider })).singleBlock).toBe(false)
  })
})

describe('ipfsBackend over Helia bitswap', () => {
  it('fetches a 200 KiB NAR by its raw CID, with no index entry, also from an offset', async () => {
    const fixture = fixtures.path('200k')
    const backend = ipfsBackend({ helia: fetcher })
    const t0 = performance.now()
    const stream = await resolveNar(fixture.fileHash, { backends: [backend], size: fixture.fileSize })
    const bytes = await readAll(stream)
    console.log(`200 KiB over loopback bitswap by raw CID: ${(performance.now() - t0).toFixed(0)} ms`)
    const file = await readFile(fixtures.narPath('200k'))
    expect(bytes.equals(file)).toBe(true)
    expect(stream.winner).toBe('ipfs')

    const source = await backend.fetch(parseNarHash(fixture.fileHash), { signal: AbortSignal.timeout(20_000), offset: 150_000 })
    expect(source.offset).toBe(150_000)
    expect((await readAll(source.body)).equals(file.subarray(150_000))).toBe(true)
  })

  it('fetches a 5 MiB NAR through its index entry, and honours an offset', async () => {
    const fixture = fixtures.path('5m')
    const file = await readFile(fixtures.narPath('5m'))
    const backend = ipfsBackend({ helia: fetcher, index, name: 'helia' })
    const t0 = performance.now()
    const stream = await resolveNar(fixture.fileHash, { backends: [backend] })
    expect((await readAll(stream)).equals(file)).toBe(true)
    console.log(`5 MiB over loopback bitswap through the index: ${(performance.now() - t0).toFixed(0)} ms`)
    expect(stream.size).toBe(fixture.fileSize)

    const offset = 3_000_000
    const source = await backend.fetch(parseNarHash(fixture.fileHash), { signal: AbortSignal.timeout(20_000), offset })
    expect(source.offset).toBe(offset)
    expect(source.size).toBe(fixture.fileSize)
    expect((await readAll(source.body)).equals(file.subarray(offset))).toBe(true)

    // A range across block boundaries, end exclusive, for striping.
    const range = await backend.fetch(parseNarHash(fixture.fileHash), {
      signal: AbortSignal.timeout(20_000),
      offset: 1_000_000,
      end: 2_200_001,
    })
    expect(range).toMatchObject({ offset: 1_000_000, ranges: true })
    expect((await readAll(range.body)).equals(file.subarray(1_000_000, 2_200_001))).toBe(true)
  })

  it('refuses at once a large NAR with no mapping', async () => {
    const fixture = fixtures.path('5m')
    const backend = ipfsBackend({ helia: fetcher })
    await expect(
      backend.fetch(parseNarHash(fixture.fileHash), { signal: AbortSignal.timeout(20_000), size: fixture.fileSize }),
    ).rejects.toThrow(NarNotFoundError)
  })

  it('turns a wrong mapping into NarHashMismatchError', async () => {
    const fixture = fixtures.path('200k')
    const wrong = Buffer.from(await readFile(fixtures.narPath('200k')))
    wrong[1000]! ^= 0xff
    const { cid } = await publishToIpfs(wrong, { helia: provider })
    const lying = openIndex()
    indexes.push(lying)
    lying.put({ fileHash: fixture.fileHash, cid })
    const stream = await resolveNar(fixture.fileHash, {
      backends: [ipfsBackend({ helia: fetcher, index: lying })],
      size: fixture.fileSize,
    })
    await expect(readAll(stream)).rejects.toThrow(NarHashMismatchError)
  })

  it('gives NarNotFoundError when no provider sends a byte within firstByteTimeoutMs', async () => {
    const unknown = hashOf(randomBytes(64))
    const backend = ipfsBackend({ helia: fetcher, firstByteTimeoutMs: 300 })
    const t0 = performance.now()
    const error = await backend.fetch(unknown, { signal: AbortSignal.timeout(20_000) }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarNotFoundError)
    expect((error as Error).message).toMatch(/within 300 ms/)
    // Far below the 20 s signal: the timeout, not the caller, ended the wait.
    expect(performance.now() - t0).toBeLessThan(10_000)
  })

  it('fetches a raw CID again at once after an earlier fetch of it was aborted', async () => {
    const bytes = randomBytes(200_000)
    const hash = hashOf(bytes)
    await publishToIpfs(bytes, { helia: provider })
    const backend = ipfsBackend({ helia: fetcher, firstByteTimeoutMs: 5_000 })
    const controller = new AbortController()
    const lost = backend.fetch(hash, { signal: controller.signal }).then((source) => source.body[Symbol.asyncIterator]().next())
    // Aborted in flight, as a loser of resolveNar's race is: once its want is on the want list, before a byte came back.
    await new Promise((resolve) => setTimeout(resolve, 5))
    controller.abort(new Error('lost the race'))
    await lost.catch(() => {})
    const source = await backend.fetch(hash, { signal: AbortSignal.timeout(20_000) })
    expect((await readAll(source.body)).equals(bytes)).toBe(true)
  })

  it('keeps fetching a block for one caller when another caller of the same block aborts', async () => {
    const bytes = randomBytes(200_000)
    const hash = hashOf(bytes)
    await publishToIpfs(bytes, { helia: provider })
    const backend = ipfsBackend({ helia: fetcher, firstByteTimeoutMs: 5_000 })
    const controller = new AbortController()
    const lost = backend.fetch(hash, { signal: controller.signal })
    const kept = backend.fetch(hash, { signal: AbortSignal.timeout(20_000) })
    await new Promise((resolve) => setTimeout(resolve, 5))
    controller.abort(new Error('lost the race'))
    await lost.catch(() => {})
    expect((await readAll((await kept).body)).equals(bytes)).toBe(true)
  })

  it('stops promptly when the caller aborts while waiting for the first byte', async () => {
    const backend = ipfsBackend({ helia: fetcher })
    const controller = new AbortController()
    const pending = backend.fetch(hashOf(randomBytes(64)), { signal: controller.signal })
    setTimeout(() => controller.abort(new Error('caller gave up')), 50)
    await expect(pending).rejects.toThrow('caller gave up')
  })
})

describe('an IPFS node that stops mid-stream', () => {
  let server: CacheServer | undefined
  afterAll(async () => {
    await server?.close()
  })

  it('fails over to HTTP at the byte already read', async () => {
    const fixture = fixtures.path('5m')
    const file = await readFile(fixtures.narPath('5m'))
    const seeder = await loopbackHelia()
    const leecher = await loopbackHelia()
    nodes.push(seeder, leecher)
    await connect(leecher, seeder)
    const mapping = openIndex()
    indexes.push(mapping)
    // The seeder gets only the DAG root and the first 1 MiB leaf, so that however fast bitswap is, the
    // leecher can't have the whole file before the seeder stops.
    const { cid } = await publishToIpfs(file, { helia: provider, index: mapping })
    const root = CID.parse(cid)
    await seeder.blockstore.put(root, await readAll(provider.blockstore.get(root)))
    const firstLeaf = file.subarray(0, 1_048_576)
    await seeder.blockstore.put(narCid(hashOf(firstLeaf)), firstLeaf)
    const ipfs = ipfsBackend({ helia: leecher, index: mapping })
    // The leecher fetches what the seeder has beforehand, so that even on a busy machine the IPFS side
    // wins the race and the stall comes only after the first MiB.
    const warm = await ipfs.fetch(parseNarHash(fixture.fileHash), { signal: AbortSignal.timeout(20_000), offset: 0 })
    for await (const chunk of warm.body) if (chunk.length > 0) break
    server = await startCacheServer({ root: fixtures.cacheDir })
    const http = httpBackend({ url: server.url, name: 'http' })
    const backends: NarBackend[] = [ipfs, http]
    const events: NarEvent[] = []
    try {
      const stream = await resolveNar(fixture.fileHash, {
        backends,
        size: fixture.fileSize,
        hedge: { http: 60_000 },
        stallTimeoutMs: 1_000,
        onEvent: (event) => events.push(event),
      })
      const chunks: Uint8Array[] = []
      for await (const chunk of stream) {
        if (chunks.length === 0) await seeder.stop()
        chunks.push(chunk)
      }
      expect(Buffer.concat(chunks).equals(file)).toBe(true)
      expect(stream.winner).toBe('ipfs')
      expect(stream.sources).toEqual(['ipfs', 'http'])
      const failover = events.find((event) => event.type === 'failover')
      expect(failover).toMatchObject({ backend: 'http' })
      expect(failover!.bytes).toBeGreaterThan(0)
      expect(server.requests.some((request) => request.range?.startsWith('bytes=') && request.range !== 'bytes=0-')).toBe(true)
    } finally {
      await http.close()
    }
  })
})

describe('publishToIpfs from a file path', () => {
  it('hashes while it adds and gives the same CID as adding the bytes', async () => {
    const bytes = randomBytes(300_000)
    const path = join(dir, 'some.nar.xz')
    await writeFile(path, bytes)
    const fromPath = await publishToIpfs(path, { helia: provider })
    expect(fromPath).toEqual(await publishToIpfs(bytes, { helia: provider }))
    expect(fromPath.fileHash).toBe(hashOf(bytes).toString())
  })
})
