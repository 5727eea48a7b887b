import { parseNarHash, type NarHash } from '@narrace/core'
import type { Libp2p, PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { Multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'

/** The libp2p protocol a node answers "which root CID holds the file with this FileHash?" on. */
export const MAPPING_PROTOCOL = '/narrace/mapping/1.0.0'

/** The longest request accepted: `{"fileHash":"sha256:<nix32>"}` is about 70 bytes. @default 256 */
export const MAPPING_REQUEST_MAX_BYTES = 256

/** The longest answer accepted: a CID and a size. @default 1024 */
export const MAPPING_ANSWER_MAX_BYTES = 1024

/** How long one ask (dial, request, answer) may take, also how long a server waits for a request. @default 2_000 */
export const DEFAULT_MAPPING_TIMEOUT_MS = 2_000

/** Mapping requests a node answers at once on one connection; more are refused by libp2p. @default 4 */
export const MAPPING_MAX_INBOUND_STREAMS = 4

/** What a provider says holds a file: the UnixFS root CID and the file's size. */
export interface NarMapping {
  cid: CID
  size: number
}

/** Answers a FileHash with what this node holds, or undefined. */
export type MappingLookup = (hash: NarHash) => NarMapping | undefined

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** Codecs a NAR's root may have: a dag-pb UnixFS file, or one raw block. */
const FILE_CODECS = new Set([0x70, 0x55])

/** The bytes of a request for `hash`. */
export function encodeMappingRequest(hash: NarHash): Uint8Array {
  return encoder.encode(JSON.stringify({ fileHash: hash.toString() }))
}

/** The FileHash a request asks for; throws on anything else. */
export function decodeMappingRequest(bytes: Uint8Array): NarHash {
  const request = parseJsonObject(bytes, 'request')
  if (typeof request.fileHash !== 'string') throw new TypeError('the mapping request has no fileHash')
  return parseNarHash(request.fileHash)
}

/** The bytes of an answer: the mapping, or `{"none":true}`. */
export function encodeMappingAnswer(mapping: NarMapping | undefined): Uint8Array {
  return encoder.encode(
    JSON.stringify(mapping === undefined ? { none: true } : { cid: mapping.cid.toV1().toString(), size: mapping.size }),
  )
}

/** The mapping an answer gives, or undefined for "none"; throws on a malformed answer. */
export function decodeMappingAnswer(bytes: Uint8Array): NarMapping | undefined {
  const answer = parseJsonObject(bytes, 'answer')
  if (answer.none === true && answer.cid === undefined) return undefined
  if (typeof answer.cid !== 'string' || answer.cid.length > 200) throw new TypeError('the mapping answer has no valid cid')
  let cid: CID
  try {
    cid = CID.parse(answer.cid)
  } catch (error) {
    throw new TypeError(`the mapping answer's cid '${answer.cid}' is not a CID`, { cause: error })
  }
  if (!FILE_CODECS.has(cid.code)) throw new TypeError(`the mapping answer's cid ${cid} is neither dag-pb nor raw`)
  const size = answer.size
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new TypeError('the mapping answer has no valid size')
  }
  return { cid, size }
}

function parseJsonObject(bytes: Uint8Array, what: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(decoder.decode(bytes))
  } catch (error) {
    throw new TypeError(`the mapping ${what} is not JSON`, { cause: error })
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TypeError(`the mapping ${what} is not an object`)
  return value as Record<string, unknown>
}

/**
 * Answers `/narrace/mapping/1.0.0` on this node with `lookup`: one length-prefixed request, one
 * length-prefixed answer, then the stream is closed. A malformed or slow request gets the stream reset.
 * Resolves to a function that stops answering.
 */
export async function serveMappings(
  libp2p: Pick<Libp2p, 'handle' | 'unhandle'>,
  lookup: MappingLookup,
  options: { timeoutMs?: number } = {},
): Promise<() => Promise<void>> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_MAPPING_TIMEOUT_MS
  await libp2p.handle(
    MAPPING_PROTOCOL,
    async (stream: Stream) => {
      const signal = AbortSignal.timeout(timeoutMs)
      try {
        const lp = lpStream(stream, { maxDataLength: MAPPING_REQUEST_MAX_BYTES })
        const hash = decodeMappingRequest((await lp.read({ signal })).subarray())
        await lp.write(encodeMappingAnswer(lookup(hash)), { signal })
        await stream.close({ signal })
      } catch (error) {
        stream.abort(error instanceof Error ? error : new Error(String(error)))
      }
    },
    { maxInboundStreams: MAPPING_MAX_INBOUND_STREAMS },
  )
  return () => libp2p.unhandle(MAPPING_PROTOCOL)
}

/** The libp2p parts asking needs. */
export type MappingAsker = Pick<Libp2p, 'dialProtocol' | 'peerStore'>

/**
 * Asks one peer which root CID holds `hash`. Resolves to its mapping or undefined ("none"); rejects
 * when the peer can't be reached, answers something malformed, or takes longer than `timeoutMs`.
 */
export async function askMapping(
  libp2p: MappingAsker,
  peer: { id: PeerId; multiaddrs?: Multiaddr[] },
  hash: NarHash,
  options: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<NarMapping | undefined> {
  const timeout = AbortSignal.timeout(options.timeoutMs ?? DEFAULT_MAPPING_TIMEOUT_MS)
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout
  // The DHT's answer carries the provider's addresses; the peer store may not have them yet.
  if (peer.multiaddrs !== undefined && peer.multiaddrs.length > 0) {
    await libp2p.peerStore.merge(peer.id, { multiaddrs: peer.multiaddrs }, { signal })
  }
  const stream = await libp2p.dialProtocol(peer.id, MAPPING_PROTOCOL, { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: MAPPING_ANSWER_MAX_BYTES })
    await lp.write(encodeMappingRequest(hash), { signal })
    const answer = decodeMappingAnswer((await lp.read({ signal })).subarray())
    await stream.close({ signal }).catch(() => stream.abort(new Error('closing the mapping stream failed')))
    return answer
  } catch (error) {
    stream.abort(error instanceof Error ? error : new Error(String(error)))
    throw error
  }
}
