import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { isAbsolute, join, normalize, sep } from 'node:path'
import { InvalidNarInfoError, parseNarHash, type NarHash } from '@narrace/core'
import type { NarInfo } from '@narrace/narinfo'
import { InvalidNarUrlError } from '@narrace/store'

/** The SHA-256 of a file, read as a stream. */
export async function hashFile(path: string, signal?: AbortSignal): Promise<{ hash: NarHash; size: number }> {
  const hasher = createHash('sha256')
  let size = 0
  for await (const chunk of createReadStream(path, signal ? { signal } : {}) as AsyncIterable<Buffer>) {
    hasher.update(chunk)
    size += chunk.length
  }
  return { hash: parseNarHash(`sha256:${hasher.digest('hex')}`), size }
}

/** Whether the file at `path` exists and is exactly the file with this FileHash and size. */
export async function isVerifiedFile(path: string, hash: NarHash, size: number | undefined, signal?: AbortSignal): Promise<boolean> {
  try {
    const actual = await hashFile(path, signal)
    return actual.hash.equals(hash) && (size === undefined || actual.size === size)
  } catch (error) {
    if (signal?.aborted) throw signal.reason
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw error
  }
}

export { makeDirectory } from '@narrace/store'

/**
 * Where a narinfo URL lands inside a cache folder. A URL that is absolute or climbs out (`../x`) is refused:
 * narinfos come from the network.
 */
export function cacheFile(dir: string, url: string): string {
  const relative = normalize(url)
  if (url.includes('\0') || isAbsolute(relative) || relative === '..' || relative.startsWith(`..${sep}`) || /^[a-z]+:/i.test(url)) {
    throw new InvalidNarUrlError(`narinfo URL '${url}' does not stay inside the cache`, { url })
  }
  return join(dir, relative)
}

/** The FileHash a NAR is fetched and verified by; a narinfo without one can't be fetched safely. */
export function narFileHash(narInfo: NarInfo): NarHash {
  if (!narInfo.fileHash) throw new InvalidNarInfoError(`the narinfo of ${narInfo.storePath} has no FileHash to verify its NAR by`)
  return parseNarHash(narInfo.fileHash)
}
