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
import { DEFAULT_DISCOVERY_TIMEOUT_MS, discoverMappings, type DiscoveryNode } from './discover.js'
import { ipfsNode, type IpfsNodeOptions } from './node.js'
import { checkedBody, hashesTo } from './verify.js'

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
  /**
   * Finds the mapping of a file too large for one raw block with no mapping in the index through the
   * DHT: providers of the FileHash's raw CID, asked over `/narrace/mapping/1.0.0`. Needs `helia` to be
   * an embedded node (`createIpfsNode`). What is found goes into `index` with `source: 'dht'`.
   * @default false
   */
  discover?: boolean
  /** How long discovery may search before the file counts as not found. @default DEFAULT_DISCOVERY_TIMEOUT_MS */
  discoveryTimeoutMs?: number
}

const noop = (): void => {}

/** Which part of a file to read: from `offset`, `length` bytes or to the end. */
interface Range {
  offset: number
  length: number | undefined
}

/** Errors that prove a mapping wrong, as opposed to a provider that was slow or gone. */
const lies = new WeakSet<object>()

function lie(message: string): NarNotFoundError {
  const error = new NarNotFoundError(message)
  lies.add(error)
  return error
}

/** The node discovery runs on; a TypeError when `discover` was asked of anything but an embedded node. */
function discoveryNode(helia: unknown): DiscoveryNode {
  let libp2p: unknown
  try {
    libp2p = (helia as { libp2p?: unknown } | undefined)?.libp2p
  } catch {
    // Helia's getter throws while the node is not started.
  }
  const dht = (libp2p as { services?: { dht?: { findProviders?: unknown } } } | undefined)?.services?.dht
  if (typeof dht?.findProviders !== 'function') {
    throw new TypeError('discover needs helia to be a started embedded node with a DHT (createIpfsNode)')
  }
  return helia as DiscoveryNode
}

/**
 * Runs `run` with a signal that aborts when `signal` does or when no progress was reported through
 * `alive` for `idleMs` (then with NarNotFoundError); settles on that abort even if `run` ignores it.
 */
async function withDeadline<T>(
  signal: AbortSignal,
  idleMs: number,
  run: (bounded: AbortSignal, alive: () => void) => Promise<T>,
): Promise<T> {
  const controller = new AbortController()
  const onAbort = (): void => controller.abort(signal.reason)
  signal.addEventListener('abort', onAbort, { once: true })
  let timer: NodeJS.Timeout | undefined
  const alive = (): void => {
    clearTimeout(timer)
    timer = setTimeout(() => controller.abort(new NarNotFoundError(`no IPFS provider sent a block within ${idleMs} ms`)), idleMs)
  }
  alive()
  const aborted = new Promise<never>((_, reject) => {
    controller.signal.addEventListener('abort', () => reject(controller.signal.reason), { once: true })
  })
  aborted.catch(noop)
  try {
    return await Promise.race([run(controller.signal, alive), aborted])
  } finally {
    clearTimeout(timer)
    signal.removeEventListener('abort', onAbort)
    controller.abort(new NarraceError('the IPFS read is over'))
  }
}

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
  const discoveryTimeoutMs = options.discoveryTimeoutMs ?? DEFAULT_DISCOVERY_TIMEOUT_MS
  if (typeof discoveryTimeoutMs !== 'number' || !(discoveryTimeoutMs > 0 && discoveryTimeoutMs <= MAX_TIMEOUT_MS)) {
    throw new RangeError(
      `discoveryTimeoutMs must be a number of milliseconds from 1 to ${MAX_TIMEOUT_MS}, got ${String(discoveryTimeoutMs)}`,
    )
  }
  const discovery = options.discover === true ? discoveryNode(options.helia) : undefined
  const index = options.index

  /** Where the file is, as far as the index and the FileHash tell; undefined when only discovery can say. */
  function lookup(hash: NarHash, requestSize: number | undefined): { cid: CID; size: number | undefined; mapped: boolean } | undefined {
    const location = index?.get(hash)
    const size = requestSize ?? location?.size
    if (location?.cid !== undefined) return { cid: CID.parse(location.cid), size, mapped: true }
    if (size === undefined || size <= rawBlockMaxBytes) return { cid: narCid(hash), size, mapped: false }
    if (discovery !== undefined) return undefined
    throw new NarNotFoundError(
      `${name}: ${hash} is ${size} bytes, too large for one raw block (${rawBlockMaxBytes}), and no index maps it to a CID`,
    )
  }

  /**
   * Asks the DHT, then tries each mapping found, those most providers agree on first. A mapping whose
   * root is not a file of the right size is marked bad and the next is tried; while others disagree, a
   * mapping is read whole and checked before a byte is given out, so a liar costs one attempt.
   */
  async function discoverAndOpen(hash: NarHash, size: number, range: Range, signal: AbortSignal): Promise<NarSource> {
    const markBad = (cid: CID): void => index?.markBad(hash, { cid: cid.toV1().toString() })
    const candidates = await discoverMappings(discovery!, hash, {
      size,
      timeoutMs: discoveryTimeoutMs,
      signal,
      onWrongSize: (mapping) => markBad(mapping.cid),
    })
    if (candidates.length === 0) {
      throw new NarNotFoundError(`${name}: no DHT provider of ${hash} gave a mapping within ${discoveryTimeoutMs} ms`)
    }
    const errors: unknown[] = []
    for (const [at, candidate] of candidates.entries()) {
      const cid = candidate.cid.toV1().toString()
      if (index !== undefined) {
        index.put({ fileHash: hash.toString(), cid, size, source: 'dht' })
        // The index ignores a mapping it already saw fail for this file.
        if (index.get(hash)?.cid !== cid) continue
      }
      try {
        const stat = await withDeadline(signal, firstByteTimeoutMs, (bounded) => node.stat!(candidate.cid, { signal: bounded }))
        if (stat.type === 'directory' || stat.size !== size) {
          throw lie(`${name}: ${cid}, which a DHT provider named for ${hash}, holds ${stat.size} bytes, not ${size}`)
        }
        if (at < candidates.length - 1) {
          const matches = await withDeadline(signal, firstByteTimeoutMs, (bounded, alive) =>
            hashesTo(node.cat(candidate.cid, { offset: 0, signal: bounded }), hash, alive),
          )
          if (!matches) throw lie(`${name}: ${cid}, which a DHT provider named for ${hash}, holds other bytes`)
        }
        return await open(hash, { cid: candidate.cid, size, mapped: true }, range, signal)
      } catch (error) {
        if (signal.aborted) throw signal.reason
        // A provider that lied is not asked again for this file; one that was slow may be, next time.
        if (typeof error === 'object' && error !== null && lies.has(error)) markBad(candidate.cid)
        errors.push(error)
      }
    }
    throw new NarNotFoundError(`${name}: none of the ${candidates.length} mappings the DHT gave for ${hash} held it`, { errors })
  }

  return {
    name,
    async fetch(hash, options): Promise<NarSource> {
      // resolveNar always passes a NarHash and a signal; a direct caller may not.
      const { offset = 0, size: requestSize, end } = options ?? {}
      const length = end !== undefined && end > offset ? end - offset : undefined
      const signal = options?.signal ?? new AbortController().signal
      if (signal.aborted) throw signal.reason
      const narHash = parseNarHash(hash)
      const found = lookup(narHash, requestSize)
      if (found === undefined) return discoverAndOpen(narHash, requestSize ?? index?.get(narHash)?.size ?? 0, { offset, length }, signal)
      return open(narHash, found, { offset, length }, signal)
    },
  }

  /** Streams `cid` from `offset`; a mapped file read whole is hashed, and its mapping marked bad if it lied. */
  async function open(
    hash: NarHash,
    { cid, size, mapped }: { cid: CID; size: number | undefined; mapped: boolean },
    { offset, length }: Range,
    signal: AbortSignal,
  ): Promise<NarSource> {
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
      let body = rest(first, iterator, release)
      // A raw CID is the FileHash itself, checked block by block; a mapping is only a hint.
      if (mapped && offset === 0 && (length === undefined || (size !== undefined && length >= size)) && index !== undefined) {
        body = checkedBody(body, hash, () => index.markBad(hash, { cid: cid.toV1().toString() }))
      }
      const source: NarSource = { body, offset, ranges: true }
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
