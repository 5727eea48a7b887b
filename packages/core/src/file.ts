import { randomBytes } from 'node:crypto'
import { open, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { NarHash } from './hash.js'
import { resolveNar } from './resolve.js'
import type { ResolveNarOptions } from './types.js'

export interface ResolveNarToFileResult {
  winner: string
  size: number
  path: string
}

/**
 * Fetches a file through `resolveNar` into `path`. The bytes go to a temporary file beside it, which is
 * fsynced and renamed only once the SHA-256 checks out: a failed or aborted call leaves nothing at `path`.
 */
export async function resolveNarToFile(
  hash: string | NarHash,
  path: string,
  options: ResolveNarOptions,
): Promise<ResolveNarToFileResult> {
  const dir = dirname(path)
  const temp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.partial`)
  // The temporary file is made first, so that a resolveNar that fails leaves no stream open.
  let handle: Awaited<ReturnType<typeof open>> | undefined = await open(temp, 'wx', 0o644)
  try {
    const stream = await resolveNar(hash, options)
    for await (const chunk of stream) {
      await handle.write(chunk)
    }
    await handle.sync()
    await handle.close()
    handle = undefined
    await rename(temp, path)
    await syncDir(dir)
    return { winner: stream.winner, size: stream.bytesRead, path }
  } catch (error) {
    await handle?.close().catch(() => {})
    await rm(temp, { force: true })
    if (options.signal?.aborted) throw options.signal.reason
    throw error
  }
}

/** Makes the rename itself durable. Some file systems refuse to fsync a directory, which is harmless. */
async function syncDir(dir: string): Promise<void> {
  try {
    const handle = await open(dir, 'r')
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
  } catch {
    // best effort: the data itself was already synced
  }
}
