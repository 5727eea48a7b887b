import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { NarNotFoundError, NarraceError, parseNarHash, resolveNar } from '@narrace/core'
import { openIndex, type NarIndex } from '@narrace/index'
import { ipfsBackend, publishToIpfs, trustlessGatewayHelia } from '@narrace/ipfs'
import { createHeliaLight, type Helia } from 'helia'
import { CID } from 'multiformats/cid'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'

/**
 * A minimal trustless gateway (`GET /ipfs/<cid>?format=raw` → the block) over a Helia blockstore, as
 * Kubo's gateway answers it. `corrupt` names CIDs whose blocks it sends with a flipped byte.
 */
async function startGateway(store: Helia, corrupt: Set<string>): Promise<{ server: Server; url: string; paths: string[] }> {
  const paths: string[] = []
  const server = createServer((request, response) => {
    paths.push(request.url ?? '')
    const match = /^\/ipfs\/([^/?]+)/.exec(request.url ?? '')
    const raw = request.url?.includes('format=raw') || request.headers.accept?.includes('application/vnd.ipld.raw')
    void (async () => {
      try {
        if (!match || !raw) throw new Error('not a trustless block request')
        const cid = CID.parse(match[1]!)
        if (!(await store.blockstore.has(cid))) throw new Error('no such block')
        const chunks: Uint8Array[] = []
        for await (const chunk of store.blockstore.get(cid)) chunks.push(chunk)
        const block = Buffer.concat(chunks)
        if (corrupt.has(cid.toString())) block[0]! ^= 0xff
        response.writeHead(200, { 'content-type': 'application/vnd.ipld.raw', 'content-length': block.length })
        response.end(block)
      } catch (error) {
        response.writeHead(404, { 'content-type': 'text/plain' })
        response.end((error as Error).message)
      }
    })()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, paths }
}

async function readAll(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  for await (const chunk of stream) chunks.push(chunk)
  return Buffer.concat(chunks)
}

describe('trustless-gateway mode', () => {
  let store: Helia
  let client: Helia | undefined
  let gateway: Awaited<ReturnType<typeof startGateway>>
  let index: NarIndex
  const corrupt = new Set<string>()

  beforeAll(async () => {
    store = createHeliaLight()
    await store.start()
    index = openIndex()
    for (const name of ['200k', '900k', '5m']) await publishToIpfs(fixtures.narPath(name), { helia: store, index })
    gateway = await startGateway(store, corrupt)
    client = await trustlessGatewayHelia([gateway.url])
  })

  afterAll(async () => {
    await client?.stop()
    gateway?.server.closeAllConnections()
    gateway?.server.close()
    index?.close()
    await store?.stop()
  })

  it('fetches a NAR of at most 1 MiB by its raw CID, as one verified block', async () => {
    const fixture = fixtures.path('200k')
    const stream = await resolveNar(fixture.fileHash, { backends: [ipfsBackend({ helia: client! })], size: fixture.fileSize })
    expect((await readAll(stream)).equals(await readFile(fixtures.narPath('200k')))).toBe(true)
    expect(gateway.paths.some((path) => path.startsWith(`/ipfs/${index.get(fixture.fileHash)!.cid}`))).toBe(true)
  })

  it('fetches a 5 MiB NAR through its mapping, from an offset', async () => {
    const fixture = fixtures.path('5m')
    const file = await readFile(fixtures.narPath('5m'))
    const backend = ipfsBackend({ helia: client!, index, name: 'gateway' })
    expect((await readAll(await resolveNar(fixture.fileHash, { backends: [backend] }))).equals(file)).toBe(true)
    const source = await backend.fetch(parseNarHash(fixture.fileHash), { signal: AbortSignal.timeout(20_000), offset: 4_000_000 })
    expect(source.offset).toBe(4_000_000)
    expect((await readAll(source.body)).equals(file.subarray(4_000_000))).toBe(true)
  })

  it('never passes on a block the gateway corrupted', async () => {
    const fixture = fixtures.path('900k')
    corrupt.add(index.get(fixture.fileHash)!.cid!)
    const backend = ipfsBackend({ helia: client!, firstByteTimeoutMs: 2_000 })
    const error = await resolveNar(fixture.fileHash, { backends: [backend], size: fixture.fileSize })
      .then(readAll)
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarraceError)
  })

  it('gives NarNotFoundError for a CID no gateway has', async () => {
    const unknown = parseNarHash(randomBytes(32).toString('hex'))
    const backend = ipfsBackend({ helia: client!, firstByteTimeoutMs: 2_000 })
    await expect(backend.fetch(unknown, { signal: AbortSignal.timeout(20_000) })).rejects.toThrow(NarNotFoundError)
  })
})
