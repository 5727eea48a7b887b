import { resolve as resolvePath } from 'node:path'
import { performance } from 'node:perf_hooks'
import { resolveNar, type NarEvent } from '@narrace/core'
import { walkClosure } from '@narrace/http'
import type { NarInfo } from '@narrace/narinfo'
import { narInfoFile, openStore } from '@narrace/store'
import { httpUrl, parse, positiveInteger, trackerUrl, UsageError } from './args.js'
import { describe } from './fetch.js'
import { isVerifiedFile } from './files.js'
import { formatBytes, formatMs, formatPercent, formatRate, formatTable } from './format.js'
import { defaultIndexPath } from './index-command.js'
import type { CommandIO } from './io.js'
import { meterBackend } from './meter.js'
import { Progress } from './progress.js'
import { Publisher, seedUntilAborted } from './publish.js'
import { readRoots } from './roots.js'
import { openSources } from './sources.js'

/** NARs fetched at once unless --jobs says otherwise. */
export const DEFAULT_JOBS = 4

/** What `narrace prefetch` was asked to do. */
export interface PrefetchOptions {
  /** Store paths or hash parts whose closures are fetched. */
  paths: string[]
  /** A file of store paths, one a line. */
  list?: string
  /** The HTTP binary caches: the narinfo comes only from these. */
  caches: string[]
  /** The folder that becomes a file:// binary cache. */
  output: string
  /** Only narinfos signed by one of these keys are accepted. */
  trustedKeys?: string[]
  ipfsApi?: string
  torrent?: boolean
  announce?: string[]
  /** The mapping index. @default with `publish`, the default index of `narrace index` */
  indexPath?: string
  /** Donate every NAR as `narrace publish` does. */
  publish?: boolean
  /** With --publish --torrent, keep seeding until interrupted. @default true */
  seed?: boolean
  /** NARs fetched at once. @default 4 */
  jobs?: number
  /** Called as each path is settled, for callers that embed prefetch. */
  onPath?: (result: PathResult) => void
}

/** What happened to one store path of the closure. */
export interface PathResult {
  storePath: string
  status: 'fetched' | 'present' | 'failed'
  size: number
  /** The backend that won, when fetched. */
  winner?: string
  ms?: number
  /** Why it failed, or why publishing it failed (its status then still says fetched or present). */
  error?: string
}

export interface PrefetchSummary {
  paths: PathResult[]
  /** Store paths that no cache has. */
  missing: string[]
  failed: PathResult[]
  /** Bytes fetched over the network. */
  bytes: number
  ms: number
  /** Bytes each backend delivered. */
  byBackend: Map<string, number>
  /** NARs each backend won. */
  wins: Map<string, number>
}

/**
 * Walks the closure of `options.paths` through the caches' narinfo and races every NAR into `options.output`,
 * which becomes a valid file:// binary cache: `nix-cache-info`, each narinfo as the cache signed it, and
 * each NAR at its narinfo URL. NARs already there and verified are skipped, so a re-run after a kill
 * fetches only what is missing. A path no cache has is reported and the rest is still fetched.
 */
export async function prefetchCommand(options: PrefetchOptions, io: CommandIO): Promise<PrefetchSummary> {
  const signal = io.signal
  const roots = await readRoots(options.paths, options.list)
  if (roots.length === 0) throw new UsageError('prefetch needs a store path, a hash part or --list FILE')
  if (options.caches.length === 0) throw new UsageError('prefetch needs --cache URL: narinfo comes only from HTTP caches')
  if (options.publish && options.torrent && !options.announce?.length) {
    throw new UsageError('--publish --torrent needs --announce URL: with DHT off, trackers are how peers find the seeder')
  }
  const indexPath = options.indexPath ?? (options.publish ? defaultIndexPath() : undefined)
  const dir = resolvePath(options.output)
  // The folder is a store with no budget: its layout, verified entry, leftovers of a kill removed, one owner.
  const store = await openStore(dir, { maxBytes: Number.MAX_SAFE_INTEGER, ...(signal ? { signal } : {}) })

  let sources: Awaited<ReturnType<typeof openSources>>
  try {
    sources = await openSources(
      {
        http: options.caches,
        ...(options.ipfsApi !== undefined ? { ipfsApi: options.ipfsApi } : {}),
        // --publish records mappings, by default where `narrace index export` reads them.
        ...(indexPath !== undefined ? { indexPath } : {}),
        torrent: options.torrent === true,
        announce: options.announce ?? [],
      },
      signal,
    )
  } catch (error) {
    await store.close()
    throw error
  }
  const progress = new Progress(io.stderr)
  progress.paths = 0
  progress.pathsTotal = 0
  progress.total = 0
  const summary: PrefetchSummary = {
    paths: [],
    missing: [],
    failed: [],
    bytes: 0,
    ms: 0,
    byBackend: progress.byBackend,
    wins: new Map(),
  }
  const backends = sources.backends.map((b) => meterBackend(b, { onBytes: (name, n) => progress.add(name, n) }))
  let publisher: Publisher | undefined
  const t0 = performance.now()
  try {
    if (options.publish) {
      publisher = new Publisher({
        index: sources.index!,
        ...(options.ipfsApi !== undefined ? { ipfsApi: options.ipfsApi } : {}),
        torrent: options.torrent === true,
        announce: options.announce ?? [],
        seed: options.seed !== false,
        onError: (error) => progress.log(`torrent client: ${describe(error)}`),
      })
    }
    const settle = (result: PathResult): void => {
      summary.paths.push(result)
      if (result.error !== undefined) summary.failed.push(result)
      progress.paths = (progress.paths ?? 0) + 1
      options.onPath?.(result)
    }

    const one = async (storePath: string, narInfo: NarInfo, text: string): Promise<void> => {
      const size = narInfo.fileSize ?? 0
      const t = performance.now()
      try {
        // Refuses a URL that climbs (`nar/../nix-cache-info`) before anything is fetched or written.
        const file = narInfoFile(narInfo)
        const hash = file.fileHash
        let entry = store.get(hash)
        let result: PathResult
        if (entry && (await isVerifiedFile(entry.path, hash, narInfo.fileSize, signal))) {
          result = { storePath, status: 'present', size }
          progress.total = (progress.total ?? 0) - size
        } else {
          if (entry) await store.remove(hash)
          let winner = ''
          const stream = await resolveNar(hash, {
            backends,
            ...(narInfo.fileSize !== undefined ? { size: narInfo.fileSize } : {}),
            url: narInfo.url,
            ...(signal ? { signal } : {}),
            onEvent: (event: NarEvent) => {
              if (event.type === 'win') winner = event.backend
              if (event.type === 'failover') progress.log(`${storePath}: failed over to ${event.backend} at byte ${event.bytes}`)
            },
          })
          entry = await store.add(hash, stream, {
            ...(narInfo.fileSize !== undefined ? { size: narInfo.fileSize } : {}),
            compression: narInfo.compression,
            ...(signal ? { signal } : {}),
          })
          winner = stream.winner || winner
          summary.bytes += entry.size
          summary.wins.set(winner, (summary.wins.get(winner) ?? 0) + 1)
          result = { storePath, status: 'fetched', size: entry.size, winner, ms: performance.now() - t }
          progress.log(`fetched ${storePath} ${formatBytes(entry.size)} from ${winner} in ${formatMs(result.ms!)}`)
        }
        // The narinfo goes in after its NAR, as Nix writes a cache: a narinfo always means a complete NAR.
        // It is the cache's own text, so that its signatures and any field narrace does not know stay as
        // they were; only its URL names the file as Nix would.
        await store.addNarInfo(text, signal ? { signal } : {})
        if (publisher) {
          try {
            await publisher.publish(
              { path: entry.path, hash, size: result.size, storePath, url: file.url },
              { verified: true, ...(signal ? { signal } : {}) },
            )
          } catch (error) {
            // The NAR itself is safely in the cache; only the donation failed.
            if (signal?.aborted) throw signal.reason
            result.error = `publish: ${describe(error)}`
            progress.log(`failed to publish ${storePath}: ${describe(error)}`)
          }
        }
        settle(result)
      } catch (error) {
        if (signal?.aborted) throw signal.reason
        settle({ storePath, status: 'failed', size, error: describe(error) })
        progress.log(`failed ${storePath}: ${describe(error)}`)
      }
    }

    progress.start()
    const running = new Set<Promise<void>>()
    const jobs = options.jobs ?? DEFAULT_JOBS
    let stopped: unknown
    try {
      for await (const item of walkClosure(roots, {
        caches: options.caches,
        ...(options.trustedKeys?.length ? { trustedKeys: options.trustedKeys } : {}),
        ...(signal ? { signal } : {}),
        onMissing: (miss) => {
          summary.missing.push(miss.storePath)
          progress.log(`missing ${miss.storePath}: ${describe(miss.error)}`)
        },
      })) {
        progress.pathsTotal = (progress.pathsTotal ?? 0) + 1
        progress.total = (progress.total ?? 0) + (item.narInfo.fileSize ?? 0)
        while (running.size >= jobs) await Promise.race(running)
        const job = one(item.storePath, item.narInfo, item.text).catch((error: unknown) => {
          stopped = error
        })
        const tracked = job.finally(() => running.delete(tracked))
        running.add(tracked)
        if (stopped !== undefined) break
      }
    } finally {
      await Promise.all(running)
    }
    if (stopped !== undefined) throw stopped
    signal?.throwIfAborted()
    summary.ms = performance.now() - t0
    progress.stop()
    io.stdout.write(formatSummary(summary))
    if (publisher && options.seed !== false && publisher.seeding > 0) await seedUntilAborted(publisher.seeding, io)
    return summary
  } finally {
    progress.stop()
    await publisher?.close()
    await sources.close()
    await store.close()
  }
}

/** The table printed at the end: one row per backend, then the totals. */
export function formatSummary(summary: PrefetchSummary): string {
  const rows = [...summary.byBackend]
    .sort((a, b) => b[1] - a[1])
    .map(([name, bytes]) => [
      name,
      String(summary.wins.get(name) ?? 0),
      formatBytes(bytes),
      formatPercent(bytes, summary.bytes),
    ])
  const fetched = summary.paths.filter((p) => p.status === 'fetched').length
  const present = summary.paths.filter((p) => p.status === 'present').length
  const totals =
    `${summary.paths.length + summary.missing.length} paths: ${fetched} fetched, ${present} already present, ` +
    `${summary.missing.length} missing, ${summary.failed.length} failed; ` +
    `${formatBytes(summary.bytes)} in ${formatMs(summary.ms)}, ${formatRate(summary.bytes, summary.ms)}\n`
  const problems = [
    ...summary.missing.map((p) => `missing ${p}\n`),
    ...summary.failed.map((p) => `failed  ${p.storePath}: ${p.error ?? ''}\n`),
  ]
  return (rows.length > 0 ? formatTable(['backend', 'NARs won', 'bytes', 'share'], rows) : '') + totals + problems.join('')
}

/** Parses `narrace prefetch` arguments. */
export function parsePrefetchArgs(args: string[]): PrefetchOptions {
  const { values, positionals } = parse(args, {
    list: { type: 'string' },
    cache: { type: 'string', multiple: true },
    output: { type: 'string', short: 'o' },
    'trusted-public-key': { type: 'string', multiple: true },
    'ipfs-api': { type: 'string' },
    torrent: { type: 'boolean' },
    announce: { type: 'string', multiple: true },
    index: { type: 'string' },
    publish: { type: 'boolean' },
    seed: { type: 'boolean' },
    jobs: { type: 'string' },
  })
  if (!values.output) throw new UsageError('prefetch needs -o DIR')
  if (!values.cache?.length) throw new UsageError('prefetch needs --cache URL')
  const options: PrefetchOptions = {
    paths: positionals,
    caches: values.cache.map((u) => httpUrl(u, '--cache')),
    output: values.output,
    trustedKeys: values['trusted-public-key'] ?? [],
    torrent: values.torrent === true,
    announce: (values.announce ?? []).map(trackerUrl),
    publish: values.publish === true,
    seed: values.seed !== false,
    jobs: positiveInteger(values.jobs, '--jobs', DEFAULT_JOBS),
  }
  if (values.list !== undefined) options.list = values.list
  if (values['ipfs-api'] !== undefined) options.ipfsApi = httpUrl(values['ipfs-api'], '--ipfs-api')
  if (values.index !== undefined) options.indexPath = values.index
  return options
}
