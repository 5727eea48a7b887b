import { constants } from 'node:fs'
import { access, stat } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { InvalidNarHashError, parseNarHash, resolveNarToFile, type NarEvent, type NarHash } from '@narrace/core'
import { httpUrl, parse, trackerUrl, UsageError } from './args.js'
import { formatBytes, formatMs, formatRate } from './format.js'
import type { CommandIO } from './io.js'
import { meterBackend } from './meter.js'
import { Progress } from './progress.js'
import { openSources, type SourceOptions } from './sources.js'

/** What `narrace fetch` was asked to do. */
export interface FetchOptions extends SourceOptions {
  /** A FileHash in any form Nix writes it, or a NAR URL that also names its cache. */
  target: string
  output: string
}

export interface FetchResult {
  winner: string
  size: number
  ms: number
  path: string
  /** Bytes each backend delivered. */
  byBackend: Map<string, number>
}

/**
 * Splits `http://cache/prefix/nar/<x>.nar.xz` into the cache URL and the narinfo-style relative URL.
 * Anything else is parsed as a hash.
 */
export function parseFetchTarget(target: string): { hash: NarHash; cache?: string; url?: string } {
  if (!/^https?:\/\//i.test(target)) return { hash: parseNarHash(target) }
  const hash = parseNarHash(target)
  const url = new URL(target)
  const match = /^(.*?\/)(nar\/[^/]+)$/.exec(url.pathname)
  if (!match) throw new UsageError(`'${target}' is not a NAR URL ending in nar/<nix32>.nar.xz`)
  return { hash, cache: `${url.origin}${match[1]!}`.replace(/\/+$/, ''), url: match[2]! }
}

/** Fetches one NAR into `options.output`, racing every source given, and reports progress on `io.stderr`. */
export async function fetchCommand(options: FetchOptions, io: CommandIO): Promise<FetchResult> {
  const { hash, cache, url: targetUrl } = parseFetchTarget(options.target)
  const path = resolve(options.output)
  await checkOutput(path)
  const http = [...(cache ? [cache] : []), ...(options.http ?? [])].filter((u, i, all) => all.indexOf(u) === i)
  const sources = await openSources({ ...options, http }, io.signal)
  const progress = new Progress(io.stderr)
  try {
    if (sources.backends.length === 0) {
      throw new UsageError('no source to fetch from: give a NAR URL, --http URL, --ipfs-api URL or --torrent')
    }
    const known = sources.index?.get(hash)
    const size = known?.size
    const url = targetUrl ?? known?.url
    progress.total = size
    const backends = sources.backends.map((b) =>
      meterBackend(b, {
        onSource: (_name, source) => {
          progress.total ??= source.size
        },
        onBytes: (name, bytes) => progress.add(name, bytes),
      }),
    )
    const onEvent = (event: NarEvent): void => {
      if (event.type === 'win') progress.log(`${event.backend} won after ${formatMs(event.ms)}`)
      if (event.type === 'failover') progress.log(`failed over to ${event.backend} at byte ${event.bytes}`)
      if (event.type === 'fail') progress.log(`${event.backend} failed: ${describe(event.error)}`)
    }
    const t0 = performance.now()
    progress.start()
    const result = await resolveNarToFile(hash, path, {
      backends,
      onEvent,
      ...(size !== undefined ? { size } : {}),
      ...(url !== undefined ? { url } : {}),
      ...(io.signal ? { signal: io.signal } : {}),
    })
    const ms = performance.now() - t0
    progress.stop()
    io.stdout.write(
      `${hash} -> ${path}\n` +
        `winner ${result.winner}, ${formatBytes(result.size)} (${result.size} bytes) in ${formatMs(ms)}, ${formatRate(result.size, ms)}\n`,
    )
    return { winner: result.winner, size: result.size, ms, path, byBackend: progress.byBackend }
  } finally {
    progress.stop()
    await sources.close()
  }
}

/** Fails before any download when FILE can't be written, rather than after it with a temporary file's name. */
async function checkOutput(path: string): Promise<void> {
  if ((await stat(path).catch(() => undefined))?.isDirectory()) {
    throw new UsageError(`-o ${path} is a directory; give the file to write`)
  }
  const dir = dirname(path)
  try {
    if (!(await stat(dir)).isDirectory()) throw new Error(`${dir} is not a directory`)
    await access(dir, constants.W_OK)
  } catch (error) {
    throw new Error(`can't write ${path}: ${describe(error)}`)
  }
}

/** Parses `narrace fetch` arguments. */
export function parseFetchArgs(args: string[]): FetchOptions {
  const { values, positionals } = parse(args, {
    output: { type: 'string', short: 'o' },
    http: { type: 'string', multiple: true },
    'ipfs-api': { type: 'string' },
    index: { type: 'string' },
    torrent: { type: 'boolean' },
    announce: { type: 'string', multiple: true },
  })
  if (positionals.length !== 1) throw new UsageError('fetch takes exactly one hash or NAR URL')
  if (!values.output) throw new UsageError('fetch needs -o FILE')
  try {
    parseFetchTarget(positionals[0]!)
  } catch (error) {
    if (error instanceof InvalidNarHashError) throw new UsageError(error.message)
    throw error
  }
  const options: FetchOptions = {
    target: positionals[0]!,
    output: values.output,
    http: (values.http ?? []).map((u) => httpUrl(u, '--http')),
    torrent: values.torrent === true,
    announce: (values.announce ?? []).map(trackerUrl),
  }
  if (values['ipfs-api'] !== undefined) options.ipfsApi = httpUrl(values['ipfs-api'], '--ipfs-api')
  if (values.index !== undefined) options.indexPath = values.index
  return options
}

export function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}
