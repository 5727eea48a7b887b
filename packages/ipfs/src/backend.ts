import {
  NarBackendError,
  NarNotFoundError,
  NarraceError,
  parseNarHash,
  type NarBackend,
  type NarHash,
  type NarSource,
} from '@narrace/core'
import type { NarIndex } from '@narrace/index'
import { CID } from 'multiformats/cid'
import { narCid } from './cid.js'
import { ipfsNode, type IpfsNodeOptions } from './node.js'

/** Files up to this size are looked up by their raw CID without an index entry: the largest single block narrace adds. */
export const DEFAULT_RAW_BLOCK_MAX_BYTES = 1_048_576

/** How long to wait for the first byte before deciding no provider has the file. */
export const DEFAULT_FIRST_BYTE_TIMEOUT_MS = 10_000

/** The longest delay setTimeout honours. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1

/** Options of `ipfsBackend`. */
export interface IpfsBackendOptions extends IpfsNodeOptions {
  /** Maps FileHashes to CIDs, for files too large to be one raw block. */
  index?: NarIndex
  /**
   * Without an index entry, the raw CID is tried only when the size is unknown or at most this.
   * @default DEFAULT_RAW_BLOCK_MAX_BYTES
   */
  rawBlockMaxBytes?: number
  /**
   * When no byte arrives within this many ms, the file counts as not found: IPFS would otherwise
   * search for a CID nobody provides for as long as it is allowed to.
   * @default DEFAULT_FIRST_BYTE_TIMEOUT_MS
   */
  firstByteTimeoutMs?: number
  /** The backend's name in events and errors. @default 'ipfs' */
  name?: string
}

const noop = (): void => {}

/** The Kubo RPC's, Helia's and gateways' ways of saying that a block is nowhere to be had. */
const NOT_FOUND = /not found|could not find|no link named|no such/i

/** Whether an error, or one it wraps (Helia aggregates one error per provider), says "not found". */
function saysNotFound(error: unknown, depth = 0): boolean {
  if (!(error instanceof Error) || depth > 3) return false
  if (NOT_FOUND.test(error.message)) return true
  const inner = (error as { errors?: unknown }).errors
  const nested = [error.cause, ...(Array.isArray(inner) ? inner : [])]
  return nested.some((cause) => saysNotFound(cause, depth + 1))
}

/**
 * A backend that reads a file from IPFS by its FileHash, through Kubo's RPC API or an embedded Helia node.
 * The CID comes from the index if it has one; otherwise it is the raw CID of the FileHash (`narCid`),
 * tried only when the file can be a single block. Offsets and ends are passed on to `cat` as offset and
 * length and honoured, so resolveNar may stripe over IPFS.
 */
export function ipfsBackend(options: IpfsBackendOptions = {}): NarBackend {
  const node = ipfsNode(options)
  const name = options.name ?? 'ipfs'
  const rawBlockMaxBytes = options.rawBlockMaxBytes ?? DEFAULT_RAW_BLOCK_MAX_BYTES
  const firstByteTimeoutMs = options.firstByteTimeoutMs ?? DEFAULT_FIRST_BYTE_TIMEOUT_MS
  if (!Number.isSafeInteger(rawBlockMaxBytes) || rawBlockMaxBytes < 0) {
    throw new RangeError(`rawBlockMaxBytes must be an integer ≥ 0, got ${String(rawBlockMaxBytes)}`)
  }
  // setTimeout makes NaN, negatives, Infinity and anything over 2^31 - 1 ms into 1 ms: every file would
  // count as not found.
  if (typeof firstByteTimeoutMs !== 'number' || !(firstByteTimeoutMs > 0 && firstByteTimeoutMs <= MAX_TIMEOUT_MS)) {
    throw new RangeError(
      `firstByteTimeoutMs must be a number of milliseconds from 1 to ${MAX_TIMEOUT_MS}, got ${String(firstByteTimeoutMs)}`,
    )
  }
  const index = options.index

  function lookup(hash: NarHash, requestSize: number | undefined): { cid: CID; size: number | undefined } {
    const location = index?.get(hash)
    const size = requestSize ?? location?.size
    if (location?.cid !== undefined) return { cid: CID.parse(location.cid), size }
    if (size === undefined || size <= rawBlockMaxBytes) return { cid: narCid(hash), size }
    throw new NarNotFoundError(
      `${name}: ${hash} is ${size} bytes, too large for one raw block (${rawBlockMaxBytes}), and no index maps it to a CID`,
    )
  }

  return {
    name,
    async fetch(hash, options): Promise<NarSource> {
      // resolveNar always passes a NarHash and a signal; a direct caller may not.
      const { offset = 0, size: requestSize, end } = options ?? {}
      const length = end !== undefined && end > offset ? end - offset : undefined
      const signal = options?.signal ?? new AbortController().signal
      if (signal.aborted) throw signal.reason
      const { cid, size } = lookup(parseNarHash(hash), requestSize)
      // kubo-rpc-client's own `timeout` never fires, so every call is bound by this controller instead.
      const controller = new AbortController()
      const onAbort = (): void => controller.abort(signal.reason)
      signal.addEventListener('abort', onAbort, { once: true })
      const release = (): void => {
        signal.removeEventListener('abort', onAbort)
        controller.abort(new NarraceError('the IPFS read is over'))
      }
      let iterator: AsyncIterator<Uint8Array> | undefined
      try {
        iterator = node.cat(cid, { offset, length, signal: controller.signal })[Symbol.asyncIterator]()
        const first = await firstChunk(iterator, controller, () => {
          return new NarNotFoundError(`${name}: no IPFS provider sent a byte of ${cid} (${hash}) within ${firstByteTimeoutMs} ms`)
        })
        const source: NarSource = { body: rest(first, iterator, release), offset, ranges: true }
        if (size !== undefined) source.size = size
        return source
      } catch (error) {
        release()
        if (iterator?.return) Promise.resolve(iterator.return()).catch(noop)
        if (signal.aborted) throw signal.reason
        if (error instanceof NarraceError) throw error
        const message = error instanceof Error ? error.message : String(error)
        if (saysNotFound(error)) {
          throw new NarNotFoundError(`${name}: ${cid} (${hash}) is not on IPFS: ${message}`, { cause: error, errors: [error] })
        }
        throw new NarBackendError(`${name}: reading ${cid} (${hash}) failed: ${message}`, { backend: name, cause: error })
      }
    },
  }

  /** The first non-empty chunk, or undefined for an empty file; rejects with `onTimeout()` after firstByteTimeoutMs. */
  async function firstChunk(
    iterator: AsyncIterator<Uint8Array>,
    controller: AbortController,
    onTimeout: () => Error,
  ): Promise<Uint8Array | undefined> {
    let timer: NodeJS.Timeout | undefined
    let onAbort = noop
    // Settles on the deadline or an abort even if the node itself ignores its signal.
    const expired = new Promise<never>((_, reject) => {
      onAbort = () => reject(controller.signal.reason)
      controller.signal.addEventListener('abort', onAbort, { once: true })
      timer = setTimeout(() => controller.abort(onTimeout()), firstByteTimeoutMs)
    })
    try {
      for (;;) {
        const next = iterator.next()
        next.catch(noop)
        const step = await Promise.race([next, expired])
        if (step.done) return undefined
        if (step.value.length > 0) return step.value
      }
    } finally {
      clearTimeout(timer)
      controller.signal.removeEventListener('abort', onAbort)
    }
  }
}

async function* rest(
  first: Uint8Array | undefined,
  iterator: AsyncIterator<Uint8Array>,
  release: () => void,
): AsyncGenerator<Uint8Array> {
  try {
    if (first === undefined) return
    yield first
    for (;;) {
      const step = await iterator.next()
      if (step.done) return
      yield step.value
    }
  } finally {
    release()
    if (iterator.return) Promise.resolve(iterator.return()).catch(noop)
  }
}
