import { createHash, randomBytes } from 'node:crypto'
import { NarHashMismatchError, NarNotFoundError, parseNarHash, resolveNar, type NarHash } from '@narrace/core'
import { openIndex } from '@narrace/index'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import {
  announceNar,
  askMapping,
  createIpfsNode,
  ipfsBackend,
  ipfsNodeInfo,
  narCid,
  publishToIpfs,
  withdrawNar,
  type EmbeddedIpfsNode,
} from '../src/index.js'

const MiB = 1024 * 1024

/** The routing table kad-dht keeps; its public type hides it. */
function routingTableSize(node: EmbeddedIpfsNode): number {
  return (node.libp2p.services.dht as unknown as { routingTable: { size: number } }).routingTable.size
}

function fileOf(bytes: Uint8Array): { bytes: Uint8Array; hash: NarHash } {
  return { bytes, hash: parseNarHash(createHash('sha256').update(bytes).digest('hex')) }
}

async function readAll(body: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  for await (const chunk of body) chunks.push(chunk)
  return Buffer.concat(chunks)
}

/** Closes any direct connection between two nodes, so that they meet only through the DHT. */
async function apart(a: EmbeddedIpfsNode, b: EmbeddedIpfsNode): Promise<void> {
  await a.libp2p.hangUp(b.libp2p.peerId)
  expect(a.libp2p.getConnections(b.libp2p.peerId)).toEqual([])
}

describe('a loopback DHT of Helia nodes finds a NAR by its FileHash alone', () => {
  // A bootstrap node, a publisher, a liar, three more DHT servers and a fetcher added per test.
  const swarm: EmbeddedIpfsNode[] = []
  const extra: EmbeddedIpfsNode[] = []
  let bootstrap: string
  let publisher: EmbeddedIpfsNode
  let liar: EmbeddedIpfsNode
  const nar = fileOf(randomBytes(5 * MiB))
  let narRoot: string

  beforeAll(async () => {
    const first = await createIpfsNode()
    swarm.push(first)
    bootstrap = ipfsNodeInfo(first).addrs[0]!
    for (let i = 0; i < 5; i++) swarm.push(await createIpfsNode({ bootstrap: [bootstrap] }))
    publisher = swarm[1]!
    liar = swarm[2]!
    // Every node knows some others before anything is announced: the DHT is formed.
    await vi.waitFor(() => expect(swarm.every((node) => routingTableSize(node) >= 2)).toBe(true), { timeout: 20_000, interval: 50 })
    const published = await publishToIpfs(nar.bytes, { helia: publisher })
    expect(published.singleBlock).toBe(false)
    narRoot = published.cid
    const announced = await announceNar(publisher, nar.hash, published.cid, { size: nar.bytes.length })
    expect(announced.fileHashPeers).toBeGreaterThan(0)
    expect(announced.rootPeers).toBeGreaterThan(0)
  })

  afterAll(async () => {
    await Promise.all([...swarm, ...extra].map((node) => node.stop()))
  })

  /** A fresh node that joins through the bootstrap node and is connected to nobody else. */
  async function newcomer(): Promise<EmbeddedIpfsNode> {
    const node = await createIpfsNode({ bootstrap: [bootstrap] })
    extra.push(node)
    await vi.waitFor(() => expect(routingTableSize(node)).toBeGreaterThan(0), { timeout: 20_000, interval: 50 })
    for (const other of [publisher, liar]) await apart(node, other)
    return node
  }

  /** The liar adds random bytes of `size` and announces them as the file `hash`. */
  async function lieAbout(hash: NarHash, size: number): Promise<{ cid: string }> {
    const decoy = await publishToIpfs(randomBytes(size), { helia: liar })
    await announceNar(liar, hash, decoy.cid)
    return decoy
  }

  /** A discovering backend on a newcomer, with an empty index of its own. */
  async function discovering(discoveryTimeoutMs: number) {
    const fetcher = await newcomer()
    const index = openIndex()
    return { index, backend: ipfsBackend({ helia: fetcher, index, discover: true, discoveryTimeoutMs }) }
  }

  it('fetches and verifies a 5 MiB NAR found by FileHash, with an empty index, and records the mapping as from the DHT', async () => {
    const { index, backend } = await discovering(5_000)
    try {
      const stream = await resolveNar(nar.hash, { backends: [backend], size: nar.bytes.length })
      expect((await readAll(stream)).equals(nar.bytes)).toBe(true)
      expect(index.get(nar.hash)).toMatchObject({ cid: narRoot, size: nar.bytes.length, source: 'dht' })
    } finally {
      index.close()
    }
  })

  it('skips a provider that lies about the mapping and still gets the NAR', async () => {
    // The liar holds another file of the same size and says it is this NAR.
    await lieAbout(nar.hash, 5 * MiB)
    const { index, backend } = await discovering(5_000)
    try {
      const stream = await resolveNar(nar.hash, { backends: [backend], size: nar.bytes.length })
      expect((await readAll(stream)).equals(nar.bytes)).toBe(true)
      // Whichever answered first, the mapping kept is the one that verified.
      expect(index.get(nar.hash)?.cid).toBe(narRoot)
    } finally {
      index.close()
      await withdrawNar(liar, nar.hash)
    }
  })

  it('a lie with nobody to outvote it costs one failed attempt, and is not tried again', async () => {
    const only = fileOf(randomBytes(2 * MiB))
    await lieAbout(only.hash, 2 * MiB)
    const { index, backend } = await discovering(3_000)
    try {
      const first = await resolveNar(only.hash, { backends: [backend], size: only.bytes.length })
      await expect(readAll(first)).rejects.toBeInstanceOf(NarHashMismatchError)
      expect(index.get(only.hash)?.cid).toBeUndefined()
      await expect(resolveNar(only.hash, { backends: [backend], size: only.bytes.length })).rejects.toBeInstanceOf(NarNotFoundError)
    } finally {
      index.close()
      await withdrawNar(liar, only.hash)
    }
  })

  it('with no provider at all, rejects with NarNotFoundError within discoveryTimeoutMs', async () => {
    const fetcher = await newcomer()
    const missing = fileOf(randomBytes(64))
    const discoveryTimeoutMs = 1_500
    const backend = ipfsBackend({ helia: fetcher, discover: true, discoveryTimeoutMs })
    const started = performance.now()
    await expect(resolveNar(missing.hash, { backends: [backend], size: 3 * MiB })).rejects.toBeInstanceOf(NarNotFoundError)
    // Bounded by the timeout (plus the time it takes to reject), not by the DHT.
    expect(performance.now() - started).toBeLessThan(discoveryTimeoutMs + 1_000)
  })

  it('answers the mapping protocol only for what a node announced, and withdraws', async () => {
    const fetcher = await newcomer()
    const peer = { id: publisher.libp2p.peerId, multiaddrs: publisher.libp2p.getMultiaddrs() }
    const answer = await askMapping(fetcher.libp2p, peer, nar.hash)
    expect(answer?.cid.toString()).toBe(narRoot)
    expect(answer?.size).toBe(nar.bytes.length)
    expect(await askMapping(fetcher.libp2p, peer, fileOf(randomBytes(8)).hash)).toBeUndefined()
    // The raw CID of the FileHash names the publisher as a provider.
    const providers: string[] = []
    for await (const provider of fetcher.libp2p.contentRouting.findProviders(narCid(nar.hash), { signal: AbortSignal.timeout(5_000) })) {
      providers.push(provider.id.toString())
      if (provider.id.equals(publisher.libp2p.peerId)) break
    }
    expect(providers).toContain(publisher.libp2p.peerId.toString())
  })
})

describe('discover', () => {
  it('needs an embedded node', () => {
    expect(() => ipfsBackend({ api: 'http://127.0.0.1:1', discover: true })).toThrow(/embedded node/)
  })
})
