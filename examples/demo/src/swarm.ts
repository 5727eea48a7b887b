import type { AddressInfo } from 'node:net'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import type { NarBackend } from '@narrace/core'
import type { NarIndex } from '@narrace/index'
import { ipfsBackend, publishToIpfs } from '@narrace/ipfs'
import { createClient, publishToTorrent, torrentBackend } from '@narrace/torrent'
import { Server as TrackerServer } from 'bittorrent-tracker'
import { createHelia, type Helia } from 'helia'

/** A p2p network holding published copies, and the backend that reads from it. */
export interface Swarm {
  backend: NarBackend
  close(): Promise<void>
}

/** A Helia node on loopback TCP only: no discovery, no delegated routing, no public gateways. */
async function loopbackHelia(): Promise<Helia> {
  const node = await createHelia({
    libp2p: {
      addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      peerDiscovery: [],
      services: { identify: identify() },
    },
    http: { delegatedRouters: [], recursiveGateways: [] },
  })
  await node.start()
  return node
}

/** Helia's public type hides the libp2p node it runs on; the demo dials it directly. */
function libp2p(node: Helia): { dial(address: unknown): Promise<unknown>; getMultiaddrs(): unknown[] } {
  return (node as unknown as { libp2p: ReturnType<typeof libp2p> }).libp2p
}

/** Two Helia nodes: one publishes `files`, the other backs the proxy's IPFS backend. */
export async function startIpfs(files: string[], index: NarIndex): Promise<Swarm & { helia: Helia }> {
  const provider = await loopbackHelia()
  const fetcher = await loopbackHelia()
  await libp2p(fetcher).dial(libp2p(provider).getMultiaddrs()[0]!)
  for (const file of files) await publishToIpfs(file, { helia: provider, index })
  return {
    backend: ipfsBackend({ helia: fetcher, index }),
    // The proxy's own node: what the proxy donates goes here, as with `--ipfs embedded`.
    helia: fetcher,
    close: async () => {
      await fetcher.stop()
      await provider.stop()
    },
  }
}

/** A tracker and one seeder holding `files`; the proxy's torrent backend downloads with a client of its own. */
export async function startTorrent(files: string[], index: NarIndex): Promise<Swarm & { announce: string[] }> {
  const tracker = new TrackerServer({ http: true, udp: false, ws: false, stats: false })
  tracker.on('warning', () => {})
  await new Promise<void>((resolve, reject) => {
    tracker.on('error', reject)
    tracker.listen(0, '127.0.0.1', resolve)
  })
  const announce = [`http://127.0.0.1:${(tracker.http!.address() as AddressInfo).port}/announce`]
  const seeder = createClient()
  seeder.on('error', () => {})
  for (const file of files) await publishToTorrent(file, { index, client: seeder, announce })
  const backend = torrentBackend({ index, announce })
  return {
    backend,
    announce,
    close: async () => {
      await backend.close()
      await new Promise((resolve) => seeder.destroy(resolve))
      tracker.http!.closeAllConnections()
      await new Promise((resolve) => tracker.close(resolve))
    },
  }
}
