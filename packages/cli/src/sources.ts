import { existsSync } from 'node:fs'
import type { NarBackend } from '@narrace/core'
import { httpBackend } from '@narrace/http'
import type { NarIndex } from '@narrace/index'
import { UsageError } from './args.js'
import { defaultIndexPath, openIndexForWriting } from './index-command.js'

/** The sources a command may race, as its flags name them. */
export interface SourceOptions {
  /** HTTP binary caches. */
  http?: string[]
  /** A Kubo RPC API, such as `http://127.0.0.1:5001`. */
  ipfsApi?: string
  /**
   * The mapping index file: FileHash → CID, infohash. Without it, IPFS and torrents use the default index
   * (`narrace index import` fills it) when that file exists.
   */
  indexPath?: string
  /** Race a BitTorrent backend too; it finds torrents through the index. */
  torrent?: boolean
  /** Trackers for the torrent backend. */
  announce?: string[]
}

/** Open backends and the index behind them; `close()` releases all of it. */
export interface Sources {
  backends: NarBackend[]
  index: NarIndex | undefined
  close(): Promise<void>
}

/** Opens a backend per source. The p2p packages load only when their flag is given. */
export async function openSources(options: SourceOptions, signal?: AbortSignal): Promise<Sources> {
  const p2p = options.torrent === true || options.ipfsApi !== undefined
  const indexPath = options.indexPath ?? (p2p && existsSync(defaultIndexPath()) ? defaultIndexPath() : undefined)
  if (options.torrent && indexPath === undefined) {
    throw new UsageError('--torrent finds torrents through the mapping index: give --index PATH or set NARRACE_INDEX')
  }
  signal?.throwIfAborted()
  const index = indexPath !== undefined ? await openIndexForWriting(indexPath) : undefined
  const backends: NarBackend[] = (options.http ?? []).map((url) => httpBackend({ url, name: url }))
  try {
    if (options.ipfsApi !== undefined) {
      const { ipfsBackend } = await import('@narrace/ipfs')
      backends.push(ipfsBackend({ api: options.ipfsApi, name: 'ipfs', ...(index ? { index } : {}) }))
    }
    if (options.torrent && index) {
      const { torrentBackend } = await import('@narrace/torrent')
      backends.push(torrentBackend({ index, name: 'torrent', announce: options.announce ?? [] }))
    }
  } catch (error) {
    index?.close()
    throw error
  }
  return {
    backends,
    index,
    async close() {
      await Promise.allSettled(backends.map((b) => b.close?.()))
      index?.close()
    },
  }
}
