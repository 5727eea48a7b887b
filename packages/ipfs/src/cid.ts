import { parseNarHash, type NarHash } from '@narrace/core'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { create as createDigest } from 'multiformats/hashes/digest'
import { sha256 } from 'multiformats/hashes/sha2'

/**
 * The CID of a file stored as one raw IPFS block: CIDv1, codec `raw`, multihash sha2-256 of the FileHash.
 * It addresses the file only while the file is a single block (at most 1 MiB when added with
 * `rawLeaves` and 1 MiB chunks); larger files need a mapping from the index.
 */
export function narCid(hash: NarHash | string): CID {
  return CID.createV1(raw.code, createDigest(sha256.code, parseNarHash(hash).bytes))
}
