import type { AddressInfo } from 'node:net'
import type { NarBackend } from '@narrace/core'
import type { NarIndex } from '@narrace/index'
import { createIpfsNode, ipfsNodeInfo, publishToIpfs } from '@narrace/ipfs'
import { createClient, publishToTorrent, torrentBackend } from '@narrace/torrent'
import { Server as TrackerServer } from 'bittorrent-tracker'

/** A p2p network holding published copies, and the backend that reads from it. */
export interface Swarm {
  backend: NarBackend
  close(): Promise<void>
}

/**
 * One IPFS node on loopback TCP, a DHT server, holding `files`: the IPFS network a proxy joins by naming
 * `bootstrap`, as `--ipfs-bootstrap` does. No public bootstrap, no mDNS, no gateways.
 */
export async function startIpfs(files: string[], index: NarIndex, signal: AbortSignal): Promise<{ bootstrap: string; close(): Promise<void> }> {
  const provider = await createIpfsNode({ signal })
  try {
    for (const file of files) await publishToIpfs(file, { helia: provider, index, signal })
  } catch (error) {
    await provider.stop()
    throw error
  }
  return {
    bootstrap: ipfsNodeInfo(provider).addrs[0]!,
    close: async () => {
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
