import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { NarBackendError, parseNarHash } from '@narrace/core'
import type { NarIndex } from '@narrace/index'
import { narCid } from './cid.js'
import { ipfsNode, type IpfsNodeOptions } from './node.js'

/** Options of `publishToIpfs`. */
export interface PublishToIpfsOptions extends IpfsNodeOptions {
  /** Records the mapping FileHash → { cid, size } here. */
  index?: NarIndex
  signal?: AbortSignal
}

/** What `publishToIpfs` added. */
export interface PublishToIpfsResult {
  /** The CID of the file, CIDv1 in base32. */
  cid: string
  /** True when the file is one raw block, so `cid` is `narCid(fileHash)` and needs no mapping to be found. */
  singleBlock: boolean
  /** The file's SHA-256 as `sha256:<nix32>`. */
  fileHash: string
  /** The file's size in bytes. */
  size: number
}

/**
 * Adds a file (a `.nar.xz`, by path or as bytes) to IPFS with raw leaves, CIDv1 and 1 MiB chunks, so that
 * a file of at most 1 MiB becomes exactly `narCid(fileHash)`. Records the mapping in `options.index`.
 * A file that can't be read rejects with its own error (ENOENT…); a node that fails, with NarBackendError.
 */
export async function publishToIpfs(
  file: string | Uint8Array,
  options: PublishToIpfsOptions = {},
): Promise<PublishToIpfsResult> {
  const { signal } = options
  if (signal?.aborted) throw signal.reason
  const node = ipfsNode(options)
  const hasher = createHash('sha256')
  let size = 0
  let content: Uint8Array | AsyncIterable<Uint8Array>
  let readError: unknown
  if (typeof file === 'string') {
    // The file is hashed on its way into IPFS, so it is read once.
    content = (async function* () {
      try {
        for await (const chunk of createReadStream(file, { signal })) {
          const bytes = chunk as Buffer
          hasher.update(bytes)
          size += bytes.length
          yield new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)
        }
      } catch (error) {
        readError = error
        throw error
      }
    })()
  } else if (file instanceof Uint8Array) {
    hasher.update(file)
    size = file.length
    content = file
  } else {
    throw new TypeError('publishToIpfs takes a file path or the bytes of the file')
  }
  let cid: Awaited<ReturnType<typeof node.add>>
  try {
    cid = await node.add(content, signal ? { signal } : {})
  } catch (error) {
    if (signal?.aborted) throw signal.reason
    // A file that can't be read keeps its own error (ENOENT, EISDIR…); anything else is the node's failure.
    if (readError !== undefined) throw readError
    const message = error instanceof Error ? error.message : String(error)
    throw new NarBackendError(`adding to IPFS through ${node.kind} failed: ${message}`, {
      backend: node.kind,
      cause: error,
    })
  }
  const hash = parseNarHash(hasher.digest('hex'))
  const result: PublishToIpfsResult = {
    cid: cid.toV1().toString(),
    singleBlock: cid.equals(narCid(hash)),
    fileHash: hash.toString(),
    size,
  }
  options.index?.put({ fileHash: result.fileHash, size, cid: result.cid })
  return result
}
