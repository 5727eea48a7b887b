import type { Helia } from '@helia/interface'
import { unixfs } from '@helia/unixfs'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { create, type KuboRPCClient } from 'kubo-rpc-client'
import type { CID } from 'multiformats/cid'
import { sharedBlockReads } from './block-reads.js'

/** Where Kubo's RPC API listens by default. */
export const DEFAULT_KUBO_API = 'http://127.0.0.1:5001'

/** The chunk size narrace adds files with: the largest block bitswap carries well, and what makes a file up to this size one raw block. */
export const CHUNK_SIZE = 1_048_576

/** Which IPFS node to talk to. */
export interface IpfsNodeOptions {
  /**
   * A Kubo RPC API URL such as `'http://127.0.0.1:5001'`, or a kubo-rpc-client instance.
   * @default DEFAULT_KUBO_API, when `helia` is not given either
   */
  api?: string | URL | KuboRPCClient
  /** A started Helia node (helia 7). Give this or `api`, not both. */
  helia?: Pick<Helia, 'blockstore'>
}

/** What narrace needs from an IPFS node: stream a range of a file (the rest without `length`), and add one. */
export interface IpfsNode {
  readonly kind: 'kubo' | 'helia'
  cat(cid: CID, options: { offset: number; length?: number | undefined; signal: AbortSignal }): AsyncIterable<Uint8Array>
  add(content: Uint8Array | AsyncIterable<Uint8Array>, options: { signal?: AbortSignal }): Promise<CID>
  /** What the root block says the file is (Helia only): fetches that one block. */
  stat?(cid: CID, options: { signal: AbortSignal }): Promise<{ type: 'file' | 'directory' | 'raw'; size: number }>
}

/** Kubo's and Helia's cat take the same range options; an offset of 0 is left out, as some nodes want. */
function catOptions(
  offset: number,
  length: number | undefined,
  signal: AbortSignal,
): { offset?: number; length?: number; signal: AbortSignal } {
  return { ...(offset > 0 && { offset }), ...(length !== undefined && { length }), signal }
}

function kuboNode(client: KuboRPCClient): IpfsNode {
  return {
    kind: 'kubo',
    cat: (cid, { offset, length, signal }) => client.cat(cid, catOptions(offset, length, signal)),
    async add(content, { signal }) {
      const result = await client.add(content, {
        cidVersion: 1,
        rawLeaves: true,
        chunker: `size-${CHUNK_SIZE}`,
        ...(signal ? { signal } : {}),
      })
      return result.cid
    },
  }
}

function heliaNode(helia: Pick<Helia, 'blockstore'>): IpfsNode {
  // Not unixfs(helia): Helia's bitswap mishandles aborted wants, which sharedBlockReads keeps from it.
  const fs = unixfs({ blockstore: sharedBlockReads(helia.blockstore) })
  const addOptions = { cidVersion: 1, rawLeaves: true, chunker: fixedSize({ chunkSize: CHUNK_SIZE }) } as const
  return {
    kind: 'helia',
    cat: (cid, { offset, length, signal }) => fs.cat(cid, catOptions(offset, length, signal)),
    async stat(cid, { signal }) {
      const stat = await fs.stat(cid, { signal })
      return { type: stat.type, size: Number(stat.size) }
    },
    add: (content, { signal }) =>
      content instanceof Uint8Array
        ? fs.addBytes(content, { ...addOptions, ...(signal ? { signal } : {}) })
        : fs.addByteStream(content, { ...addOptions, ...(signal ? { signal } : {}) }),
  }
}

/** Picks the node the options name; throws a TypeError when they name both kinds. */
export function ipfsNode(options: IpfsNodeOptions): IpfsNode {
  if (options.api !== undefined && options.helia !== undefined) {
    throw new TypeError('give either api (Kubo RPC) or helia, not both')
  }
  if (options.helia !== undefined) {
    if (typeof options.helia?.blockstore?.get !== 'function') throw new TypeError('helia must be a Helia node')
    return heliaNode(options.helia)
  }
  const api = options.api ?? DEFAULT_KUBO_API
  return kuboNode(typeof api === 'string' || api instanceof URL ? create({ url: api }) : api)
}
