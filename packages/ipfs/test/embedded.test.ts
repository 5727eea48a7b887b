import { afterEach, describe, expect, it } from 'vitest'
import { AMINO_BOOTSTRAP, bootstrapAddresses, createIpfsNode, ipfsNodeInfo, type EmbeddedIpfsNode } from '../src/index.js'

const nodes: EmbeddedIpfsNode[] = []
afterEach(async () => {
  await Promise.all(nodes.splice(0).map((node) => node.stop()))
})

async function started(options: Parameters<typeof createIpfsNode>[0] = {}): Promise<EmbeddedIpfsNode> {
  const node = await createIpfsNode(options)
  nodes.push(node)
  return node
}

describe('createIpfsNode', () => {
  it('listens on loopback only, dials nobody, and runs its DHT as a server', async () => {
    const node = await started()
    const { peerId, addrs } = ipfsNodeInfo(node)
    expect(addrs.length).toBeGreaterThan(0)
    for (const address of addrs) expect(address).toMatch(new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${peerId}$`))
    expect(node.libp2p.services.dht.getMode()).toBe('server')
    expect(node.libp2p.getConnections()).toEqual([])
  })

  it('joins through a bootstrap peer and puts it in its routing table, loopback address and all', async () => {
    const first = await started()
    const second = await started({ bootstrap: [ipfsNodeInfo(first).addrs[0]!] })
    expect(second.libp2p.getConnections(first.libp2p.peerId).length).toBeGreaterThan(0)
    const table = (second.libp2p.services.dht as unknown as { routingTable: { size: number; find(id: unknown): Promise<unknown> } }).routingTable
    await expect.poll(() => table.find(first.libp2p.peerId), { timeout: 10_000 }).toBeDefined()
  })

  it("expands 'amino' to the public list and refuses addresses without a peer id", () => {
    expect(bootstrapAddresses(['amino']).map(String)).toEqual([...AMINO_BOOTSTRAP])
    expect(() => bootstrapAddresses(['/ip4/127.0.0.1/tcp/4001'])).toThrow(/must end in \/p2p/)
    expect(() => bootstrapAddresses(['nonsense'])).toThrow(TypeError)
  })

  it('refuses a listen address that is no multiaddr', async () => {
    await expect(createIpfsNode({ listen: ['127.0.0.1:0'] })).rejects.toThrow(TypeError)
  })
})
