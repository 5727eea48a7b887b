import type { NarBackend, NarHash } from '@narrace/core'
import type { NarIndex } from '@narrace/index'
import type { EmbeddedIpfsNode } from '@narrace/ipfs'

/** `--ipfs embedded`: a Helia node inside the proxy, its backend, and how the proxy announces and stops it. */
export interface EmbeddedIpfs {
  node: EmbeddedIpfsNode
  /** Races IPFS; with discovery on, finds NARs the index lacks by FileHash in the DHT. */
  backend: NarBackend
  /** For the first log line, so that scripts can bootstrap other nodes from this one. */
  info: { peerId: string; addrs: string[] }
  /** Announces a donated NAR in the DHT (both provider records), and answers its mapping. */
  announce(fileHash: NarHash, cid: string, size: number, signal: AbortSignal): Promise<void>
  /** Stops announcing an evicted NAR. */
  withdraw(fileHash: NarHash): Promise<void>
  close(): Promise<void>
}

export interface EmbeddedIpfsOptions {
  listen: string[]
  /** Multiaddrs ending in /p2p/<peer id>; `amino` = the public Amino DHT. */
  bootstrap: string[]
  /** Look NARs up by FileHash in the DHT (off with --no-discover). */
  discover: boolean
  index: NarIndex
  signal?: AbortSignal
}

/** Starts the embedded node; rejects with the library's TypeError for a listen or bootstrap address that is no multiaddr. */
export async function startEmbeddedIpfs(options: EmbeddedIpfsOptions): Promise<EmbeddedIpfs> {
  const { announceNar, createIpfsNode, ipfsBackend, ipfsNodeInfo, withdrawNar } = await import('@narrace/ipfs')
  const node = await createIpfsNode({
    listen: options.listen,
    bootstrap: options.bootstrap,
    ...(options.signal ? { signal: options.signal } : {}),
  })
  return {
    node,
    backend: ipfsBackend({ helia: node, index: options.index, discover: options.discover }),
    info: ipfsNodeInfo(node),
    async announce(fileHash, cid, size, signal) {
      await announceNar(node, fileHash, cid, { size, signal })
    },
    withdraw: (fileHash) => withdrawNar(node, fileHash),
    async close() {
      await node.stop()
    },
  }
}
