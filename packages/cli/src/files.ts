import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, readdir, rm } from 'node:fs/promises'
import { dirname, isAbsolute, join, normalize, sep } from 'node:path'
import { InvalidNarInfoError, parseNarHash, type NarHash } from '@narrace/core'
import type { NarInfo } from '@narrace/narinfo'

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

/**
 * `mkdir -p`, one level at a time. Node's own `mkdir(…, { recursive: true })` never returns where
 * `mkdir` says ENOENT for a parent that exists, as under /proc; this fails there instead.
 */
export async function makeDirectory(path: string): Promise<void> {
  try {
    await mkdir(path)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EEXIST') return
    const parent = dirname(path)
    if (code !== 'ENOENT' || parent === path) throw error
    await makeDirectory(parent)
    await mkdir(path).catch((again: NodeJS.ErrnoException) => {
      if (again.code !== 'EEXIST') throw again
    })
  }
}

/**
 * Where a narinfo URL lands inside a cache folder. A URL that is absolute or climbs out (`../x`) is refused:
 * narinfos come from the network.
 */
export function cacheFile(dir: string, url: string): string {
  const relative = normalize(url)
  if (url.includes('\0') || isAbsolute(relative) || relative === '..' || relative.startsWith(`..${sep}`) || /^[a-z]+:/i.test(url)) {
    throw new Error(`narinfo URL '${url}' does not stay inside the cache`)
  }
  return join(dir, relative)
}

/** Temporary files `resolveNarToFile` leaves only when the process was killed outright. */
const PARTIAL = /^\..+\.[0-9a-f]{12}\.partial$/

/** Removes partial downloads a killed run left in `dir`; returns how many. */
export async function removePartials(dir: string): Promise<number> {
  let removed = 0
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return 0
  }
  for (const name of names) {
    if (!PARTIAL.test(name)) continue
    await rm(join(dir, name), { force: true })
    removed++
  }
  return removed
}

/** The FileHash a NAR is fetched and verified by; a narinfo without one can't be fetched safely. */
export function narFileHash(narInfo: NarInfo): NarHash {
  if (!narInfo.fileHash) throw new InvalidNarInfoError(`the narinfo of ${narInfo.storePath} has no FileHash to verify its NAR by`)
  return parseNarHash(narInfo.fileHash)
}
