import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import type { Helia } from '@helia/interface'
import { identify } from '@libp2p/identify'
import type { Identify } from '@libp2p/identify'
import type { Libp2p, PeerId } from '@libp2p/interface'
import { kadDHT, passthroughMapper, removePrivateAddressesMapper, type KadDHT } from '@libp2p/kad-dht'
import { ping, type Ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { createHelia, type HeliaInit } from 'helia'

/** Where an embedded node listens unless told otherwise: loopback only, any free port. */
export const DEFAULT_IPFS_LISTEN: readonly string[] = ['/ip4/127.0.0.1/tcp/0']

/** How long `createIpfsNode` waits for each bootstrap peer to answer a dial. @default 10_000 */
export const DEFAULT_BOOTSTRAP_DIAL_TIMEOUT_MS = 10_000

/**
 * The public Amino DHT's bootstrap peers (Kubo's list), used only when `bootstrap` says `'amino'`.
 * Never a default: a node joins the public DHT only when asked to.
 */
export const AMINO_BOOTSTRAP: readonly string[] = [
  '/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN',
  '/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb',
  '/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt',
  '/dnsaddr/va1.bootstrap.libp2p.io/p2p/12D3KooWKnDdG3iXw9eTFijk3EWSunZcFi54Zka4wmtqtt6rPxc8',
  '/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ',
]

/** How long others keep this node's provider records: Amino's 48 hours. @default 172_800_000 */
export const PROVIDER_RECORD_VALIDITY_MS = 172_800_000

/** A provider record is published again when it has less than this left to live. @default 86_400_000 */
export const REPROVIDE_THRESHOLD_MS = 86_400_000

/** How often the DHT looks for records of its own that are due to be published again. @default 3_600_000 */
export const REPROVIDE_CHECK_INTERVAL_MS = 3_600_000

/** The libp2p services an embedded node runs, and nothing else. */
export type EmbeddedServices = {
  identify: Identify
  ping: Ping
  dht: KadDHT
}

/** A started Helia node with its libp2p: give it to `ipfsBackend({ helia })`, `publishToIpfs`, `announceNar`. */
export interface EmbeddedIpfsNode extends Helia {
  libp2p: Libp2p<EmbeddedServices>
}

/** Options of `createIpfsNode`. */
export interface CreateIpfsNodeOptions {
  /** Multiaddrs to listen on. @default DEFAULT_IPFS_LISTEN */
  listen?: readonly string[]
  /**
   * Peers to join the DHT through, as multiaddrs ending in `/p2p/<peer id>`; `'amino'` stands for the
   * public Amino bootstrap list. @default [] (a DHT of whoever dials this node)
   */
  bootstrap?: readonly string[]
  /** Where blocks are kept. @default Helia's in-memory blockstore */
  blockstore?: HeliaInit['blockstore']
  /** Where the peer key, DHT records and pins are kept. @default Helia's in-memory datastore */
  datastore?: HeliaInit['datastore']
  /** @default DEFAULT_BOOTSTRAP_DIAL_TIMEOUT_MS */
  bootstrapDialTimeoutMs?: number
  signal?: AbortSignal
}

/** Expands `'amino'` and checks that every bootstrap address names its peer. */
export function bootstrapAddresses(bootstrap: readonly string[]): Multiaddr[] {
  const expanded = bootstrap.flatMap((entry) => (entry === 'amino' ? AMINO_BOOTSTRAP : [entry]))
  return [...new Set(expanded)].map((address) => {
    let parsed: Multiaddr
    try {
      parsed = multiaddr(address)
    } catch (error) {
      throw new TypeError(`'${address}' is not a multiaddr`, { cause: error })
    }
    if (parsed.getComponents().at(-1)?.name !== 'p2p') {
      throw new TypeError(`bootstrap address '${address}' must end in /p2p/<peer id>`)
    }
    return parsed
  })
}

/**
 * Creates and starts an embedded Helia node: libp2p over TCP with noise and yamux, identify, ping,
 * bitswap, and a Kademlia DHT in server mode. Nothing is dialled but the bootstrap peers: no public
 * bootstrap list unless `'amino'` is named, no mDNS, no AutoNAT, UPnP, relay, delegated routing or
 * gateways. Resolves once every bootstrap peer was dialled (or failed to answer within the timeout:
 * a node starts even when its bootstrap peers are down). Stop it with `node.stop()`.
 */
export async function createIpfsNode(options: CreateIpfsNodeOptions = {}): Promise<EmbeddedIpfsNode> {
  const { signal } = options
  signal?.throwIfAborted()
  const listen = [...(options.listen ?? DEFAULT_IPFS_LISTEN)]
  for (const address of listen) {
    if (!isMultiaddr(address)) throw new TypeError(`listen address '${address}' is not a multiaddr`)
  }
  const bootstrap = bootstrapAddresses(options.bootstrap ?? [])
  const dialTimeoutMs = options.bootstrapDialTimeoutMs ?? DEFAULT_BOOTSTRAP_DIAL_TIMEOUT_MS
  if (!(Number.isSafeInteger(dialTimeoutMs) && dialTimeoutMs > 0)) {
    throw new RangeError(`bootstrapDialTimeoutMs must be a positive integer, got ${String(dialTimeoutMs)}`)
  }
  const publicDht = options.bootstrap?.includes('amino') ?? false
  const node = await createHelia({
    ...(options.blockstore ? { blockstore: options.blockstore } : {}),
    ...(options.datastore ? { datastore: options.datastore } : {}),
    libp2p: {
      addresses: { listen },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      peerDiscovery: [],
      services: {
        identify: identify(),
        ping: ping(),
        dht: kadDHT({
          // A server from the start: libp2p would otherwise wait for a public address that a loopback
          // or LAN node never has, and stay a client that answers no query.
          clientMode: false,
          // The public DHT is no place for private addresses; a private one (loopback, a LAN) is
          // nothing but.
          peerInfoMapper: publicDht ? removePrivateAddressesMapper : passthroughMapper,
          // Records this node announced are published again a day before others drop them; the timer
          // is the DHT's own, bounded in concurrency and queue, and stops with the node.
          providers: { provideValidity: PROVIDER_RECORD_VALIDITY_MS / 1000 },
          reprovide: {
            validity: PROVIDER_RECORD_VALIDITY_MS,
            threshold: REPROVIDE_THRESHOLD_MS,
            interval: REPROVIDE_CHECK_INTERVAL_MS,
          },
        }),
      },
      // Peers of a private DHT often share one host: libp2p would refuse more than a few inbound
      // connections a second from one address.
      connectionManager: { allow: publicDht ? [] : ['/ip4/127.0.0.1', '/ip6/::1'] },
    },
    // No delegated routers, no public gateways: blocks come over bitswap from DHT providers only.
    http: { delegatedRouters: [], recursiveGateways: [] },
  })
  const embedded = node as unknown as EmbeddedIpfsNode
  try {
    await embedded.start()
    signal?.throwIfAborted()
    await Promise.allSettled(
      bootstrap.map((address) =>
        embedded.libp2p.dial(address, {
          signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(dialTimeoutMs)]) : AbortSignal.timeout(dialTimeoutMs),
        }),
      ),
    )
    signal?.throwIfAborted()
  } catch (error) {
    await embedded.stop().catch(() => {})
    throw error
  }
  return embedded
}

/** The node's peer id and the multiaddrs others can dial it at (each ending in its peer id). */
export function ipfsNodeInfo(node: Pick<EmbeddedIpfsNode, 'libp2p'>): { peerId: string; addrs: string[] } {
  const peerId: PeerId = node.libp2p.peerId
  return { peerId: peerId.toString(), addrs: node.libp2p.getMultiaddrs().map((address) => address.toString()) }
}

function isMultiaddr(address: string): boolean {
  try {
    multiaddr(address)
    return true
  } catch {
    return false
  }
}
