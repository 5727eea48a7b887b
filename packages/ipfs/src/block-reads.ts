import type { Blocks } from '@helia/interface'
import { NarNotFoundError } from '@narrace/core'
import { base64 } from 'multiformats/bases/base64'
import type { CID } from 'multiformats/cid'
import { raceSignal } from 'race-signal'

/** What `@helia/unixfs` needs of a blockstore. */
export type UnixfsBlockstore = Pick<Blocks, 'get' | 'put' | 'has'>

/**
 * How long a network read of a block goes on after the last fetch stopped waiting for it. A block that
 * a connected provider has arrives well within this, and is then stored for the next fetch.
 */
export const ABANDONED_READ_TIMEOUT_MS = 10_000

interface BlockRead {
  block: Promise<Uint8Array>
  controller: AbortController
  waiters: number
  settled: boolean
  timer?: NodeJS.Timeout
}

/** One wrapper per Helia blockstore, so that every backend on a node shares its reads. */
const wrappers = new WeakMap<UnixfsBlockstore, UnixfsBlockstore>()

/**
 * Wraps a Helia blockstore so that a fetch's abort never reaches Helia's bitswap want list, where it
 * would spoil the next fetch of the same block.
 *
 * Helia's bitswap (seen in @helia/bitswap 4.0.19) keeps one want-list entry per block, shared by all
 * callers. An aborted want marks that entry cancelled; the next debounced flush (10 ms) drops it, and
 * sends no cancel to the peers.
 * - A want for the same block made before that flush joins the cancelled entry, is never sent, and waits
 *   until its own deadline. So does any other caller already waiting on that entry.
 * - A block the provider sends after the abort is dropped, and the provider, which still counts it as
 *   sent, ignores a new want for it for 5 s or more.
 *
 * So each block missing locally gets one network read per node, with its own AbortController, shared by
 * every fetch that wants the block. A fetch that aborts only stops waiting. The read goes on until the
 * block arrives (Helia stores it, and the next fetch reads it locally) or until nobody has waited for it
 * for `ABANDONED_READ_TIMEOUT_MS`. The price: blocks already asked for by a fetch that lost a race still
 * arrive, for at most that long. What remains of the bug: a block that no provider sent in all that time
 * and that a fetch asks for again within the 10 ms after its read was given up is not found this time.
 */
export function sharedBlockReads(blockstore: UnixfsBlockstore): UnixfsBlockstore {
  const existing = wrappers.get(blockstore)
  if (existing !== undefined) return existing
  const reads = new Map<string, BlockRead>()

  function join(cid: CID): BlockRead {
    const key = base64.encode(cid.multihash.bytes)
    let read = reads.get(key)
    if (read === undefined) {
      const controller = new AbortController()
      const started: BlockRead = {
        // An abandoned read rejects with the reason it was abandoned for, not with Helia's AbortError.
        block: collect(blockstore.get(cid, { signal: controller.signal })).catch((error: unknown) => {
          throw controller.signal.aborted ? controller.signal.reason : error
        }),
        controller,
        waiters: 0,
        settled: false,
      }
      // Until it settles, a read stays joinable, even once abandoned: a fetch that joins it then fails at
      // once, where a new want would meet the cancelled entry and wait for nothing.
      const forget = (): void => {
        started.settled = true
        clearTimeout(started.timer)
        if (reads.get(key) === started) reads.delete(key)
      }
      started.block.then(forget, forget)
      reads.set(key, started)
      read = started
    }
    read.waiters++
    clearTimeout(read.timer)
    return read
  }

  function leave(read: BlockRead, cid: CID): void {
    read.waiters--
    if (read.waiters > 0 || read.settled) return
    read.timer = setTimeout(() => {
      read.controller.abort(
        new NarNotFoundError(`no IPFS provider sent block ${cid} within ${ABANDONED_READ_TIMEOUT_MS} ms after the last fetch gave up on it`),
      )
    }, ABANDONED_READ_TIMEOUT_MS)
    // A pending read must not keep the process alive.
    read.timer.unref()
  }

  async function* get(cid: CID, options: { signal?: AbortSignal } = {}): AsyncGenerator<Uint8Array> {
    const { signal } = options
    signal?.throwIfAborted()
    if (await blockstore.has(cid, { signal })) {
      yield* blockstore.get(cid, { signal })
      return
    }
    signal?.throwIfAborted()
    const read = join(cid)
    let block: Uint8Array
    try {
      block = await raceSignal(read.block, signal)
    } finally {
      leave(read, cid)
    }
    yield block
  }

  const wrapper: UnixfsBlockstore = {
    get,
    put: (cid, block, options) => blockstore.put(cid, block, options),
    has: (cid, options) => blockstore.has(cid, options),
  }
  wrappers.set(blockstore, wrapper)
  return wrapper
}

async function collect(chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
}
