import type { NarHash } from '@narrace/core'
import type { NarIndex } from '@narrace/index'
import type { NarStore, StoreEntry } from '@narrace/store'
import type { WebTorrent } from '@narrace/torrent'
import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'

/** NARs published at once: each is read from disk, chunked and hashed again for IPFS and the torrent. @default 2 */
export const DEFAULT_DONATION_CONCURRENCY = 2

/** The parts of a Helia node donation uses: the blockstore to add to, pins, and garbage collection. */
export interface HeliaForDonation {
  blockstore: unknown
  pins: {
    add(cid: CID, options?: { signal?: AbortSignal }): AsyncIterable<unknown>
    rm(cid: CID, options?: { signal?: AbortSignal }): AsyncIterable<unknown>
  }
  gc(options?: { signal?: AbortSignal }): Promise<void>
}

export interface DonationOptions {
  store: NarStore
  index: NarIndex
  /** The IPFS node NARs are added to: an embedded Helia node, or a Kubo RPC API URL. */
  ipfs?:
    | {
        helia: HeliaForDonation
        /** Announces a published NAR (e.g. in the DHT, by FileHash); awaited before the next NAR. */
        announce?: (fileHash: NarHash, cid: string, size: number, signal: AbortSignal) => Promise<void>
        /** Stops announcing an evicted NAR. */
        withdraw?: (fileHash: NarHash) => Promise<void>
      }
    | { api: string }
  /** The client that seeds every NAR as a torrent, announced to these trackers. */
  torrent?: { client: WebTorrent; announce: string[] }
  logger: Logger
  /** @default DEFAULT_DONATION_CONCURRENCY */
  concurrency?: number
}

/**
 * Gives back what the store keeps: every NAR that enters the store is added to IPFS (raw leaves, 1 MiB
 * chunks, as `publishToIpfs` does) and pinned, seeded as a torrent, and its mapping recorded; every NAR
 * evicted is unpinned, no longer seeded, and its mapping marked gone. NARs already in the store when it
 * starts are published again (seeding and an in-memory blockstore do not outlive the process).
 * Work for one FileHash runs in order; at most `concurrency` NARs are worked on at once.
 */
export class Donation {
  private readonly options: DonationOptions
  private readonly chains = new Map<string, Promise<void>>()
  private readonly waiting: Array<() => void> = []
  private running = 0
  private readonly closing = new AbortController()
  private readonly unsubscribe: Array<() => void>

  constructor(options: DonationOptions) {
    if (!options.ipfs && !options.torrent) throw new TypeError('donation needs IPFS and/or a torrent client')
    this.options = options
    this.unsubscribe = [
      options.store.on('add', (entry) => this.enqueue(entry.fileHash, () => this.publish(entry))),
      options.store.on('evict', (entry) => this.enqueue(entry.fileHash, () => this.unpublish(entry))),
    ]
    for (const entry of options.store.entries()) this.enqueue(entry.fileHash, () => this.publish(entry))
  }

  /** Resolves once everything queued so far is done (for tests and a graceful stop). */
  async settled(): Promise<void> {
    while (this.chains.size > 0) await Promise.all(this.chains.values())
  }

  /** Stops taking work and aborts what is in flight; the caller then closes the IPFS node and torrent client. */
  async close(): Promise<void> {
    for (const off of this.unsubscribe) off()
    this.closing.abort(new Error('the proxy is closing'))
    await this.settled()
  }

  private enqueue(hash: NarHash, work: () => Promise<void>): void {
    if (this.closing.signal.aborted) return
    const key = hash.toString()
    const run = async (): Promise<void> => {
      await this.slot()
      try {
        if (!this.closing.signal.aborted) await work()
      } catch (error) {
        if (!this.closing.signal.aborted) this.options.logger.warn({ nar: hash.nix32, err: error }, 'donation failed')
      } finally {
        this.running--
        this.waiting.shift()?.()
      }
    }
    const chain = (this.chains.get(key) ?? Promise.resolve()).then(run)
    this.chains.set(key, chain)
    void chain.finally(() => {
      if (this.chains.get(key) === chain) this.chains.delete(key)
    })
  }

  private async slot(): Promise<void> {
    if (this.running >= (this.options.concurrency ?? DEFAULT_DONATION_CONCURRENCY)) {
      await new Promise<void>((resolve) => this.waiting.push(resolve))
    }
    this.running++
  }

  private async publish(entry: StoreEntry): Promise<void> {
    // The store may have evicted it while this waited its turn; the evict work follows in the chain.
    if (!this.options.store.has(entry.fileHash)) return
    const { index, ipfs, torrent, logger } = this.options
    const signal = this.closing.signal
    const fileHash = entry.fileHash.toString()
    index.put({ fileHash, size: entry.size, url: entry.url, source: 'local' })
    const line: Record<string, unknown> = { nar: entry.fileHash.nix32, size: entry.size }
    if (ipfs) {
      const { publishToIpfs } = await import('@narrace/ipfs')
      const added = await publishToIpfs(entry.path, {
        ...('helia' in ipfs ? { helia: ipfs.helia as never } : { api: ipfs.api }),
        index,
        signal,
      })
      if ('helia' in ipfs) for await (const _ of ipfs.helia.pins.add(CID.parse(added.cid), { signal })) void _
      if ('helia' in ipfs) await ipfs.announce?.(entry.fileHash, added.cid, entry.size, signal)
      line.cid = added.cid
    }
    if (torrent) {
      const { publishToTorrent } = await import('@narrace/torrent')
      const seeded = await publishToTorrent(entry.path, { index, client: torrent.client, announce: torrent.announce, hash: entry.fileHash, signal })
      line.btih = seeded.infoHash
    }
    logger.info(line, 'donated')
  }

  private async unpublish(entry: StoreEntry): Promise<void> {
    const { index, ipfs, torrent, logger } = this.options
    const location = index.get(entry.fileHash)
    if (torrent && location?.btih) {
      const seeded = torrent.client.torrents.find((t) => t.infoHash === location.btih)
      if (seeded) await new Promise<void>((resolve) => torrent.client.remove(seeded, { destroyStore: false }, () => resolve()))
    }
    if (ipfs && location?.cid) {
      const cid = CID.parse(location.cid)
      if ('helia' in ipfs) {
        await ipfs.withdraw?.(entry.fileHash)
        for await (const _ of ipfs.helia.pins.rm(cid)) void _
        // Without a pin the blocks are only a cache; collecting them keeps the node within the store's budget.
        await ipfs.helia.gc()
      } else {
        const response = await fetch(`${ipfs.api}/api/v0/pin/rm?arg=${encodeURIComponent(cid.toString())}`, { method: 'POST' })
        await response.body?.cancel()
      }
    }
    index.markGone(entry.fileHash)
    logger.info({ nar: entry.fileHash.nix32, cid: location?.cid, btih: location?.btih }, 'donation withdrawn')
  }
}
