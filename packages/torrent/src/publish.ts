import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdtemp, rm, stat, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join, resolve } from 'node:path'
import { NarBackendError, parseNarHash, type NarHash } from '@narrace/core'
import type { NarIndex } from '@narrace/index'
import { isUsableTracker, type WebTorrent, type WebTorrentTorrent } from './client.js'

export interface PublishToTorrentOptions {
  /** Where the mapping (btih, magnet, size) is recorded. */
  index: NarIndex
  /** The client that seeds the file; it keeps seeding until the caller removes the torrent or destroys it. */
  client: WebTorrent
  /** Trackers to announce to; they go into the magnet link. Only HTTP(S) and UDP trackers are used. */
  announce: string[]
  /** The file's FileHash, when known: the file is then not hashed again. */
  hash?: NarHash
  signal?: AbortSignal
}

export interface PublishToTorrentResult {
  /** The BitTorrent v1 infohash, 40 lowercase hex characters. */
  infoHash: string
  magnet: string
}

async function hashFile(file: string, signal: AbortSignal | undefined): Promise<NarHash> {
  const hasher = createHash('sha256')
  for await (const chunk of createReadStream(file, signal ? { signal } : {})) hasher.update(chunk as Buffer)
  return parseNarHash(hasher.digest('hex'))
}

/** Seeds `path` and resolves once the client serves it. */
function seed(
  client: WebTorrent,
  path: string,
  announce: string[],
  signal: AbortSignal | undefined,
): Promise<WebTorrentTorrent> {
  return new Promise<WebTorrentTorrent>((resolvePromise, reject) => {
    const torrent = client.seed(path, { announce }, (seeded) => settle(undefined, seeded))
    const onError = (error: Error | string): void => {
      settle(new NarBackendError(`could not seed ${path}: ${error instanceof Error ? error.message : error}`, { cause: error }))
    }
    const onAbort = (): void => {
      // The store is the caller's file: remove the torrent, never the file.
      void client.remove(torrent, { destroyStore: false }, () => {}).catch(() => {})
      settle(signal!.reason)
    }
    torrent.once('error', onError)
    signal?.addEventListener('abort', onAbort, { once: true })
    function settle(error: unknown, seeded?: WebTorrentTorrent): void {
      torrent.removeListener('error', onError)
      signal?.removeEventListener('abort', onAbort)
      if (seeded) resolvePromise(seeded)
      else reject(error as Error)
    }
  })
}

/**
 * Seeds a `.nar.xz` as a torrent of one file named `<nix32>.nar.xz` and records its infohash, magnet link
 * and size in the index under the file's FileHash. A file with another name is seeded through a symlink
 * in a temporary directory, removed when the torrent closes. A torrent of that name and length already in
 * the client is reused.
 */
export async function publishToTorrent(file: string, options: PublishToTorrentOptions): Promise<PublishToTorrentResult> {
  const { client, index, signal } = options
  signal?.throwIfAborted()
  const [hash, { size }] = await Promise.all([options.hash ?? hashFile(file, signal), stat(file)])
  signal?.throwIfAborted()
  const name = `${hash.nix32}.nar.xz`
  let torrent = client.torrents.find((t) => t.name === name && t.length === size && !t.destroyed)
  if (!torrent) {
    const announce = options.announce.filter(isUsableTracker)
    if (basename(file) === name) {
      torrent = await seed(client, file, announce, signal)
    } else {
      const dir = await mkdtemp(join(tmpdir(), 'narrace-publish-'))
      const cleanup = (): Promise<void> => rm(dir, { recursive: true, force: true })
      try {
        await symlink(resolve(file), join(dir, name))
        torrent = await seed(client, join(dir, name), announce, signal)
      } catch (error) {
        await cleanup()
        throw error
      }
      torrent.once('close', () => void cleanup())
    }
  }
  const result = { infoHash: torrent.infoHash, magnet: torrent.magnetURI }
  index.put({ fileHash: hash.toString(), btih: result.infoHash, magnet: result.magnet, size })
  return result
}
