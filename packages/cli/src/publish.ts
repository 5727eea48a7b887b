import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve as resolvePath } from 'node:path'
import { fileURLToPath } from 'node:url'
import { NarHashMismatchError, resolveNarToFile, type NarHash } from '@narrace/core'
import { httpBackend, walkClosure } from '@narrace/http'
import type { NarIndex } from '@narrace/index'
import type { WebTorrent } from '@narrace/torrent'
import { parseNarInfo } from '@narrace/narinfo'
import { httpUrl, parse, trackerUrl, UsageError } from './args.js'
import { describe } from './fetch.js'
import { cacheFile, hashFile, narFileHash } from './files.js'
import { exportToFile, openIndexForWriting } from './index-command.js'
import type { CommandIO } from './io.js'
import { readRoots } from './roots.js'

/** Where `Publisher` donates NARs. */
export interface PublishTargets {
  index: NarIndex
  /** A Kubo RPC API to add NARs to. */
  ipfsApi?: string
  /** Seed each NAR as a single-file torrent. */
  torrent?: boolean
  /** Trackers the torrents announce to. */
  announce?: string[]
  /** Keep seeding after publishing, so torrents already mapped are seeded again too. @default true */
  seed?: boolean
  /** Hears errors of the seeding client that no single publish call owns, such as a listening failure. */
  onError?: (error: unknown) => void
}

/** One NAR file on disk and what its narinfo says about it. */
export interface NarFile {
  path: string
  hash: NarHash
  size: number
  storePath?: string
  url?: string
}

export interface PublishResult {
  /** False when the index already had every mapping asked for. */
  published: boolean
  cid?: string
  btih?: string
}

/**
 * Donates NAR files: adds them to IPFS and/or seeds them as torrents, and records the mappings.
 * It skips what the index already maps, except that a mapped torrent is seeded again when `seed` is on,
 * since a mapping alone serves nobody. `narrace publish` and `narrace prefetch --publish` share it.
 */
export class Publisher {
  /** Torrents this publisher seeds. */
  seeding = 0
  private readonly targets: PublishTargets
  private torrentClient: WebTorrent | undefined

  constructor(targets: PublishTargets) {
    if (!targets.ipfsApi && !targets.torrent) throw new UsageError('publishing needs --ipfs-api URL and/or --torrent')
    this.targets = targets
  }

  /** Whether publishing this NAR has work to do, so that a caller need not fetch it otherwise. */
  needs(hash: NarHash): boolean {
    const known = this.targets.index.get(hash)
    return (this.targets.ipfsApi !== undefined && !known?.cid) || this.wantsTorrent(known?.btih)
  }

  /** Publishes one NAR; `verified` says its FileHash was already checked (as `resolveNarToFile` does). */
  async publish(nar: NarFile, options: { verified?: boolean; signal?: AbortSignal } = {}): Promise<PublishResult> {
    const { index, ipfsApi } = this.targets
    const known = index.get(nar.hash)
    const wantsIpfs = ipfsApi !== undefined && !known?.cid
    const wantsTorrent = this.wantsTorrent(known?.btih)
    const result: PublishResult = { published: wantsIpfs || (wantsTorrent && !known?.btih) }
    if (known?.cid) result.cid = known.cid
    if (known?.btih) result.btih = known.btih
    if (!wantsIpfs && !wantsTorrent) return result
    if (result.published && !options.verified) {
      const actual = await hashFile(nar.path, options.signal)
      if (!actual.hash.equals(nar.hash) || actual.size !== nar.size) {
        throw new NarHashMismatchError(`${nar.path} is not the file with FileHash ${nar.hash} and size ${nar.size}`, {
          expected: nar.hash.toString(),
          actual: actual.hash.toString(),
          sources: [nar.path],
        })
      }
    }
    options.signal?.throwIfAborted()
    index.put({
      fileHash: nar.hash.toString(),
      size: nar.size,
      ...(nar.storePath ? { storePath: nar.storePath } : {}),
      ...(nar.url ? { url: nar.url } : {}),
    })
    if (wantsIpfs) {
      const { publishToIpfs } = await import('@narrace/ipfs')
      result.cid = (await publishToIpfs(nar.path, { api: ipfsApi, index, ...signalOf(options) })).cid
    }
    if (wantsTorrent) {
      const { publishToTorrent } = await import('@narrace/torrent')
      const client = await this.client()
      const seeded = await publishToTorrent(nar.path, {
        index,
        client,
        announce: this.targets.announce ?? [],
        hash: nar.hash,
        ...signalOf(options),
      })
      result.btih = seeded.infoHash
      this.seeding++
    }
    return result
  }

  private wantsTorrent(btih: string | undefined): boolean {
    return this.targets.torrent === true && (this.targets.seed !== false || btih === undefined)
  }

  /** Stops seeding. */
  async close(): Promise<void> {
    const client = this.torrentClient
    this.torrentClient = undefined
    this.seeding = 0
    if (client) await new Promise<void>((resolve) => client.destroy(() => resolve()))
  }

  private async client(): Promise<WebTorrent> {
    if (!this.torrentClient) {
      const { createClient } = await import('@narrace/torrent')
      const client = createClient()
      client.on('error', (error) => this.targets.onError?.(error))
      this.torrentClient = client
    }
    return this.torrentClient
  }
}

/** What `narrace publish` was asked to do. */
export interface PublishOptions {
  /** A file:// folder (or plain path), or an http(s) binary cache. */
  cache: string
  /** For an HTTP cache: store paths or hash parts whose closures are published. */
  paths?: string[]
  /** For an HTTP cache: a file of store paths, one a line. */
  list?: string
  indexPath: string
  ipfsApi?: string
  torrent?: boolean
  announce?: string[]
  /** With --torrent, keep seeding until interrupted. @default true */
  seed?: boolean
  /** Write every mapping in the index to this NDJSON file at the end. */
  exportPath?: string
  /** For an HTTP cache: only narinfos signed by one of these keys are trusted. */
  trustedKeys?: string[]
}

export interface PublishSummary {
  published: number
  skipped: number
  failed: Array<{ what: string; error: string }>
  seeding: number
}

/**
 * Publishes every NAR of a binary cache. A folder is read whole; an HTTP cache can't be listed, so the
 * closures of the store paths given are walked. A re-run skips what the index already maps. With a torrent
 * target and `seed` (the default) it keeps seeding until `io.signal` aborts, then returns normally.
 */
export async function publishCommand(options: PublishOptions, io: CommandIO): Promise<PublishSummary> {
  const signal = io.signal
  const index = await openIndexForWriting(options.indexPath)
  const summary: PublishSummary = { published: 0, skipped: 0, failed: [], seeding: 0 }
  let workDir: string | undefined
  let publisher: Publisher | undefined
  try {
    publisher = new Publisher({
      index,
      ...(options.ipfsApi !== undefined ? { ipfsApi: options.ipfsApi } : {}),
      torrent: options.torrent === true,
      announce: options.announce ?? [],
      seed: options.seed !== false,
      onError: (error) => io.stderr.write(`torrent client: ${describe(error)}\n`),
    })
    const report = (what: string, result: PublishResult): void => {
      if (result.published) summary.published++
      else summary.skipped++
      const where = [result.cid ? `cid ${result.cid}` : '', result.btih ? `btih ${result.btih}` : ''].filter(Boolean)
      io.stdout.write(`${result.published ? 'published' : 'skipped  '} ${what} ${where.join(' ')}\n`)
    }
    const fail = (what: string, error: unknown): void => {
      signal?.throwIfAborted()
      summary.failed.push({ what, error: describe(error) })
      io.stderr.write(`failed ${what}: ${describe(error)}\n`)
    }

    if (isHttp(options.cache)) {
      const roots = await readRoots(options.paths ?? [], options.list)
      if (roots.length === 0) {
        throw new UsageError('an HTTP cache has no listing: name store paths or --list FILE to publish their closures')
      }
      workDir = await mkdtemp(join(tmpdir(), 'narrace-publish-'))
      const backend = httpBackend({ url: options.cache, name: options.cache })
      try {
        for await (const item of walkClosure(roots, {
          caches: [options.cache],
          ...(options.trustedKeys?.length ? { trustedKeys: options.trustedKeys } : {}),
          ...(signal ? { signal } : {}),
          onMissing: (miss) => fail(miss.storePath, miss.error),
        })) {
          const { storePath, narInfo } = item
          try {
            const hash = narFileHash(narInfo)
            const path = join(workDir, `${hash.nix32}.nar.xz`)
            let size = narInfo.fileSize ?? 0
            if (publisher.needs(hash)) {
              const fetched = await resolveNarToFile(hash, path, {
                backends: [backend],
                ...(narInfo.fileSize !== undefined ? { size: narInfo.fileSize } : {}),
                url: narInfo.url,
                ...(signal ? { signal } : {}),
              })
              size = fetched.size
            }
            const nar: NarFile = { path, hash, size, storePath, url: narInfo.url }
            report(storePath, await publisher.publish(nar, { verified: true, ...(signal ? { signal } : {}) }))
            // A seeded torrent reads its file until the end; an IPFS node keeps its own copy.
            if (!options.torrent) await rm(path, { force: true })
          } catch (error) {
            fail(storePath, error)
          }
        }
      } finally {
        await backend.close()
      }
    } else {
      if (options.paths?.length || options.list) {
        throw new UsageError('a cache folder is published whole; store paths and --list apply to HTTP caches')
      }
      const dir = options.cache.startsWith('file:') ? fileURLToPath(options.cache) : resolvePath(options.cache)
      const names = (await readdir(dir)).filter((n) => n.endsWith('.narinfo')).sort()
      for (const name of names) {
        signal?.throwIfAborted()
        let what = name
        try {
          const narInfo = parseNarInfo(await readFile(join(dir, name), 'utf8'))
          what = narInfo.storePath
          const path = cacheFile(dir, narInfo.url)
          const nar: NarFile = {
            path,
            hash: narFileHash(narInfo),
            size: narInfo.fileSize ?? (await stat(path)).size,
            storePath: narInfo.storePath,
            url: narInfo.url,
          }
          report(what, await publisher.publish(nar, signalOf({ signal })))
        } catch (error) {
          fail(what, error)
        }
      }
    }

    if (options.exportPath) await exportToFile(index, options.exportPath, signal)
    summary.seeding = publisher.seeding
    io.stdout.write(`published ${summary.published}, skipped ${summary.skipped}, failed ${summary.failed.length}\n`)
    if (options.seed !== false && publisher.seeding > 0) await seedUntilAborted(publisher.seeding, io)
    return summary
  } finally {
    await publisher?.close()
    index.close()
    if (workDir) await rm(workDir, { recursive: true, force: true })
  }
}

/** Keeps the process seeding until Ctrl-C (or the caller's signal). */
export async function seedUntilAborted(count: number, io: CommandIO): Promise<void> {
  const signal = io.signal
  if (!signal || signal.aborted) return
  io.stderr.write(`seeding ${count} torrent${count === 1 ? '' : 's'}; Ctrl-C to stop\n`)
  await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))
}

function signalOf(options: { signal?: AbortSignal }): { signal?: AbortSignal } {
  return options.signal ? { signal: options.signal } : {}
}

function isHttp(cache: string): boolean {
  return /^https?:\/\//i.test(cache)
}

/** Parses `narrace publish` arguments. */
export function parsePublishArgs(args: string[]): PublishOptions {
  const { values, positionals } = parse(args, {
    cache: { type: 'string' },
    list: { type: 'string' },
    index: { type: 'string' },
    'ipfs-api': { type: 'string' },
    torrent: { type: 'boolean' },
    announce: { type: 'string', multiple: true },
    seed: { type: 'boolean' },
    export: { type: 'string' },
    'trusted-public-key': { type: 'string', multiple: true },
  })
  if (!values.cache) throw new UsageError('publish needs --cache DIR|URL')
  if (!values.index) throw new UsageError('publish needs --index PATH, where the mappings are recorded')
  if (!values['ipfs-api'] && !values.torrent) throw new UsageError('publish needs --ipfs-api URL and/or --torrent')
  if (values.torrent && !values.announce?.length) {
    throw new UsageError('--torrent needs --announce URL: with DHT off, trackers are how peers find the seeder')
  }
  const options: PublishOptions = {
    cache: isHttp(values.cache) ? httpUrl(values.cache, '--cache') : values.cache,
    paths: positionals,
    indexPath: values.index,
    torrent: values.torrent === true,
    announce: (values.announce ?? []).map(trackerUrl),
    seed: values.seed !== false,
    trustedKeys: values['trusted-public-key'] ?? [],
  }
  if (values.list !== undefined) options.list = values.list
  if (values['ipfs-api'] !== undefined) options.ipfsApi = httpUrl(values['ipfs-api'], '--ipfs-api')
  if (values.export !== undefined) options.exportPath = values.export
  return options
}
