import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { createHelia, type Helia } from 'helia'

/** A started Helia node on loopback TCP only: no discovery, no delegated routing, no public gateways. */
export async function loopbackHelia(): Promise<Helia> {
  const node = await createHelia({
    libp2p: {
      addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      peerDiscovery: [],
      services: { identify: identify() },
      // Every peer here is on 127.0.0.1, and tests dial one provider from many new nodes: libp2p would
      // refuse more than 5 inbound connections a second from one host.
      connectionManager: { allow: ['/ip4/127.0.0.1'] },
    },
    http: { delegatedRouters: [], recursiveGateways: [] },
  })
  await node.start()
  return node
}

/** Dials `to` from `from` directly: with no discovery, that is how loopback nodes find each other. */
export async function connect(from: Helia, to: Helia): Promise<void> {
  // Helia's public type hides the libp2p node it runs on.
  const libp2p = (node: Helia) =>
    (node as Helia & { libp2p: { dial(address: unknown): Promise<unknown>; getMultiaddrs(): unknown[] } }).libp2p
  await libp2p(from).dial(libp2p(to).getMultiaddrs()[0])
}
