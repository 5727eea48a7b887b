import { createHash } from 'node:crypto'
import type { NarHash } from '@narrace/core'

/**
 * Passes `body` (a whole file) on and hashes it on the way; when it ended and its SHA-256 is not
 * `hash`, calls `onMismatch` before the end is passed on. resolveNar rejects such a file anyway: this
 * is how the backend learns that the mapping it used lied. A body not read to its end proves nothing.
 */
export async function* checkedBody(
  body: AsyncIterable<Uint8Array>,
  hash: NarHash,
  onMismatch: () => void,
): AsyncGenerator<Uint8Array> {
  const hasher = createHash('sha256')
  for await (const chunk of body) {
    hasher.update(chunk)
    yield chunk
  }
  if (!hasher.digest().equals(hash.bytes)) onMismatch()
}

/** Whether `body` hashes to `hash`; calls `alive` on each chunk, so that a caller can tell a stall from a slow file. */
export async function hashesTo(body: AsyncIterable<Uint8Array>, hash: NarHash, alive: () => void = () => {}): Promise<boolean> {
  const hasher = createHash('sha256')
  for await (const chunk of body) {
    hasher.update(chunk)
    alive()
  }
  return hasher.digest().equals(hash.bytes)
}
