import { createCipheriv, createHash } from 'node:crypto'
import { encodeNix32 } from '@narrace/core'

const ZEROS = Buffer.alloc(1024 * 1024)

/**
 * Deterministic, incompressible file contents: the AES-128-CTR keystream for `seed`, so a server in
 * another process makes the same bytes without them ever touching the disk or the repository.
 */
export function* narChunks(size: number, seed: number, chunkSize = 1024 * 1024): Generator<Buffer> {
  const key = createHash('sha256').update(`narrace-bench-${seed}`).digest().subarray(0, 16)
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16))
  const zeros = chunkSize <= ZEROS.length ? ZEROS : Buffer.alloc(chunkSize)
  for (let done = 0; done < size; done += chunkSize) {
    yield cipher.update(zeros.subarray(0, Math.min(chunkSize, size - done)))
  }
}

/** The whole file in memory. */
export function makeNar(size: number, seed: number): Buffer {
  return Buffer.concat([...narChunks(size, seed)], size)
}

/** `sha256:<nix32>` of a buffer or a stream of chunks: the FileHash narrace fetches by. */
export function fileHash(data: Uint8Array | Iterable<Uint8Array>): string {
  const hash = createHash('sha256')
  if (data instanceof Uint8Array) hash.update(data)
  else for (const chunk of data) hash.update(chunk)
  return `sha256:${encodeNix32(hash.digest())}`
}

/**
 * A file of `size` bytes made of one 1 MiB block of `seed` repeated, yielded as views that allocate no
 * data: what a memory measurement streams, so that the generator's own garbage does not hide the cost
 * of what is measured.
 */
export function* repeatedChunks(size: number, seed: number, chunkSize: number): Generator<Uint8Array> {
  const block = makeNar(1024 * 1024, seed)
  for (let done = 0; done < size; done += chunkSize) {
    const at = done % block.length
    yield block.subarray(at, at + Math.min(chunkSize, size - done, block.length - at))
  }
}

/** The seed of the files the peak-RSS measurement streams. */
export const RSS_SEED = 7
