import { parseNarHash, type NarHash } from '@narrace/core'
import { unixfs } from '@helia/unixfs'
import type { KadDHT } from '@libp2p/kad-dht'
import { CID } from 'multiformats/cid'
import { narCid } from './cid.js'
import type { EmbeddedIpfsNode } from './embedded.js'
import { serveMappings, type NarMapping } from './mapping-protocol.js'

/**
 * How long announcing one key may take: finding the closest DHT peers and giving them the record. The
 * record is kept locally at once and re-provided by the DHT later even when this runs out. @default 30_000
 */
export const DEFAULT_PROVIDE_TIMEOUT_MS = 30_000

/** What a node announced, by FileHash: what its mapping protocol answers. One table per node. */
const announced = new WeakMap<object, { mappings: Map<string, NarMapping>; serving: Promise<unknown> }>()

function table(node: EmbeddedIpfsNode): Map<string, NarMapping> {
  let entry = announced.get(node.libp2p)
  if (entry === undefined) {
    const mappings = new Map<string, NarMapping>()
    // The node answers for what it announced, and nothing else: those are the files it holds.
    const serving = serveMappings(node.libp2p, (hash) => mappings.get(hash.toString()))
    serving.catch(() => {})
    entry = { mappings, serving }
    announced.set(node.libp2p, entry)
  }
  return entry.mappings
}

/** What `announceNar` did: how many DHT peers took each provider record. */
export interface AnnounceResult {
  /** Peers that stored the record under the FileHash's raw CID (the discovery key). */
  fileHashPeers: number
  /** Peers that stored the record under the UnixFS root CID. */
  rootPeers: number
}

/**
 * Announces that this node holds the file `fileHash` as the UnixFS DAG `rootCid` (added as
 * `publishToIpfs` does, blocks in this node): a DHT provider record under the raw CID of the FileHash,
 * the key others find it by with nothing but a narinfo, and one under the root CID, the key bitswap
 * finds blocks by. The node then answers `/narrace/mapping/1.0.0` for it. The DHT re-provides both
 * records before they expire until `withdrawNar` or the node stops. Rejects when the root is not a
 * file held here. Each record's publication is bounded by `timeoutMs`; one that found no peer (a node
 * alone so far) still stands locally, where other nodes' queries find it.
 */
export async function announceNar(
  node: EmbeddedIpfsNode,
  fileHash: NarHash | string,
  rootCid: CID | string,
  options: { size?: number; signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<AnnounceResult> {
  const hash = parseNarHash(fileHash)
  const root = typeof rootCid === 'string' ? CID.parse(rootCid) : rootCid
  const { signal } = options
  signal?.throwIfAborted()
  // Only what is here is announced: a node must not send others after blocks it lacks.
  const stat = await unixfs(node).stat(root, { offline: true, ...(signal ? { signal } : {}) })
  if (stat.type === 'directory') throw new TypeError(`${root} is a directory, not a file`)
  const size = Number(stat.size)
  if (options.size !== undefined && options.size !== size) {
    throw new RangeError(`${root} holds ${size} bytes, not the ${options.size} announced for ${hash}`)
  }
  table(node).set(hash.toString(), { cid: root, size })
  await announced.get(node.libp2p)!.serving
  const timeout = AbortSignal.timeout(options.timeoutMs ?? DEFAULT_PROVIDE_TIMEOUT_MS)
  const bounded = signal ? AbortSignal.any([signal, timeout]) : timeout
  const [fileHashPeers, rootPeers] = await Promise.all([provide(node, narCid(hash), bounded), provide(node, root, bounded)])
  signal?.throwIfAborted()
  return { fileHashPeers, rootPeers }
}

/** Stops announcing `fileHash`: no more answers for it, no more re-provides of its records. */
export async function withdrawNar(node: EmbeddedIpfsNode, fileHash: NarHash | string, options: { signal?: AbortSignal } = {}): Promise<void> {
  const hash = parseNarHash(fileHash)
  const mappings = table(node)
  const mapping = mappings.get(hash.toString())
  mappings.delete(hash.toString())
  const dht = node.libp2p.services.dht
  await dht.cancelReprovide(narCid(hash), options)
  if (mapping !== undefined) await dht.cancelReprovide(mapping.cid, options)
}

async function drain(events: AsyncIterable<unknown>): Promise<void> {
  try {
    for await (const _ of events) void _
  } catch {
    // Bounded by its signal; the re-provider tries again later.
  }
}

/** Publishes one provider record; the count of peers that took it. A timeout is no failure: see announceNar. */
async function provide(node: EmbeddedIpfsNode, key: CID, signal: AbortSignal): Promise<number> {
  let peers = 0
  const dht = node.libp2p.services.dht as KadDHT & { routingTable?: { size: number } }
  // With no peer yet, a DHT query waits for one (within `signal`): the record is kept locally at once,
  // where others' queries find it, and sent out if a peer comes; the caller need not wait for that.
  if (dht.routingTable?.size === 0) {
    void drain(dht.provide(key, { signal }))
    return 0
  }
  try {
    for await (const event of node.libp2p.services.dht.provide(key, { signal })) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'ADD_PROVIDER') peers++
    }
  } catch (error) {
    if (!signal.aborted) throw error
  }
  return peers
}
