import { isNarMismatch, type NarBackend, type NarEvent, type NarHash } from '@narrace/core'
import { normalizeLocation, type NarIndex, type NarLocation } from '@narrace/index'
import { request, type Dispatcher } from 'undici'
import { MAPPINGS_PATH } from './mappings-route.js'

/** How long the peers are asked for a mapping, all at once, before the p2p sources go without. @default 1000 */
export const DEFAULT_MAPPINGS_TIMEOUT_MS = 1000
/** The largest answer read from a peer; one mapping line is well under 2 KiB. @default 16 KiB */
export const MAX_MAPPING_ANSWER_BYTES = 16 * 1024
/** How long "no peer knows it" is remembered, so that a NAR asked for again does not ask every peer again. @default 60 s */
export const DEFAULT_MAPPINGS_MISS_TTL_MS = 60_000
/** FileHashes whose miss is remembered at most. @default 10000 */
const MAX_REMEMBERED_MISSES = 10_000

export interface PeerMappingsOptions {
  /** Base URLs of other narrace proxies (`http://host:port`); a function for peers that come and go. */
  peers: string[] | (() => string[])
  index: NarIndex
  /** @default DEFAULT_MAPPINGS_TIMEOUT_MS */
  timeoutMs?: number
  /** @default DEFAULT_MAPPINGS_MISS_TTL_MS */
  missTtlMs?: number
  /** The pool the requests go through; the caller closes it. */
  dispatcher?: Dispatcher
  onError?: (peer: string, error: unknown) => void
}

/**
 * Asks other proxies' mappings endpoints for what the local index lacks. A peer's answer is a hint: it
 * is validated with `normalizeLocation`, must name the FileHash asked for, and is recorded with
 * `source: 'peer:<url>'`. The bytes it leads to are verified like any other, and `blame` marks an
 * address that failed verification bad, so that it is never tried again.
 */
export class PeerMappings {
  private readonly options: PeerMappingsOptions
  private readonly pending = new Map<string, Promise<void>>()
  private readonly misses = new Map<string, number>()

  constructor(options: PeerMappingsOptions) {
    this.options = options
  }

  /** Makes sure the index holds what the peers know about `hash` (no-op when it already maps it). */
  async learn(hash: NarHash, signal?: AbortSignal): Promise<void> {
    const key = hash.toString()
    const known = this.options.index.get(key)
    if (known?.cid !== undefined || known?.btih !== undefined) return
    const missedAt = this.misses.get(key)
    if (missedAt !== undefined && performance.now() - missedAt < (this.options.missTtlMs ?? DEFAULT_MAPPINGS_MISS_TTL_MS)) return
    let asking = this.pending.get(key)
    if (!asking) {
      asking = this.ask(hash).finally(() => this.pending.delete(key))
      this.pending.set(key, asking)
    }
    if (!signal) return asking
    signal.throwIfAborted()
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(signal.reason)
      signal.addEventListener('abort', onAbort, { once: true })
      asking.then(resolve, resolve).finally(() => signal.removeEventListener('abort', onAbort))
    })
  }

  /** Wraps a p2p backend so that it looks for a mapping at the peers before it reads the index. */
  wrap(backend: NarBackend): NarBackend {
    return {
      name: backend.name,
      fetch: async (hash, options) => {
        await this.learn(hash, options.signal)
        return backend.fetch(hash, options)
      },
      ...(backend.close ? { close: () => backend.close!() } : {}),
    }
  }

  /**
   * An `onEvent` listener for one download: a p2p source whose bytes failed verification gets its
   * address marked bad for this FileHash. A raw CID derived from the FileHash can't be wrong, so only
   * a mapped one is blamed.
   */
  blame(hash: NarHash, location: NarLocation | undefined): (event: NarEvent) => void {
    return (event) => {
      if (event.type !== 'fail' || !isNarMismatch(event.error) || !location) return
      try {
        if (event.backend.startsWith('ipfs') && location.cid) this.options.index.markBad(hash, { cid: location.cid })
        if (event.backend.startsWith('torrent') && location.btih) this.options.index.markBad(hash, { btih: location.btih })
      } catch {
        // A malformed address was never stored; nothing to mark.
      }
    }
  }

  private async ask(hash: NarHash): Promise<void> {
    const timeout = AbortSignal.timeout(this.options.timeoutMs ?? DEFAULT_MAPPINGS_TIMEOUT_MS)
    const peers = typeof this.options.peers === 'function' ? this.options.peers() : this.options.peers
    const answers = await Promise.allSettled(peers.map((peer) => this.askOne(peer, hash, timeout)))
    let learned = false
    for (const [i, answer] of answers.entries()) {
      const peer = peers[i]!
      if (answer.status === 'rejected') {
        this.options.onError?.(peer, answer.reason)
        continue
      }
      const location = answer.value
      if (!location || location.status === 'gone' || (location.cid === undefined && location.btih === undefined)) continue
      const { updatedAt: _, status: __, ...rest } = location
      try {
        this.options.index.put({ ...rest, source: `peer:${peer}` })
        learned = true
      } catch (error) {
        this.options.onError?.(peer, error)
      }
    }
    if (learned) this.misses.delete(hash.toString())
    else {
      this.misses.set(hash.toString(), performance.now())
      if (this.misses.size > MAX_REMEMBERED_MISSES) this.misses.delete(this.misses.keys().next().value!)
    }
  }

  private async askOne(peer: string, hash: NarHash, signal: AbortSignal): Promise<NarLocation | undefined> {
    const response = await request(`${peer}${MAPPINGS_PATH}/${hash.nix32}`, {
      signal,
      maxRedirections: 0,
      headersTimeout: this.options.timeoutMs ?? DEFAULT_MAPPINGS_TIMEOUT_MS,
      ...(this.options.dispatcher ? { dispatcher: this.options.dispatcher } : {}),
    } as Parameters<typeof request>[1])
    if (response.statusCode === 404) {
      await response.body.dump()
      return undefined
    }
    if (response.statusCode !== 200) {
      await response.body.dump()
      throw new Error(`${peer} answered ${response.statusCode}`)
    }
    const chunks: Buffer[] = []
    let bytes = 0
    for await (const chunk of response.body as AsyncIterable<Buffer>) {
      bytes += chunk.length
      if (bytes > MAX_MAPPING_ANSWER_BYTES) {
        response.body.destroy()
        throw new Error(`${peer} sent more than ${MAX_MAPPING_ANSWER_BYTES} bytes for one mapping`)
      }
      chunks.push(chunk)
    }
    const line = Buffer.concat(chunks).toString('utf8').split('\n', 1)[0]!
    const location = normalizeLocation(JSON.parse(line))
    if (location.fileHash !== hash.toString()) throw new Error(`${peer} answered for ${location.fileHash}, not ${hash}`)
    return location
  }
}
