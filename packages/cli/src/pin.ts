import { resolve as resolvePath } from 'node:path'
import { walkClosure } from '@narrace/http'
import { parseNarInfo, parseStoreBasename, type NarInfo } from '@narrace/narinfo'
import { narInfoFile, openStore, type NarStore } from '@narrace/store'
import { httpUrl, parse, UsageError } from './args.js'
import { describe } from './fetch.js'
import { formatBytes } from './format.js'
import type { CommandIO } from './io.js'
import { readRoots } from './roots.js'

/** What `narrace pin` was asked to do. */
export interface PinOptions {
  /** Store paths or hash parts whose closures are pinned. */
  paths: string[]
  /** A file of store paths, one a line. */
  list?: string
  /** The store folder. */
  store: string
  /** Release the pins instead. */
  unpin?: boolean
  /**
   * Read narinfo from these caches instead of the store, so that a closure can be pinned before its NARs
   * arrive (they are then never evicted once they do).
   */
  caches?: string[]
  trustedKeys?: string[]
}

export interface PinSummary {
  /** Store paths whose NAR is now pinned (or unpinned). */
  pinned: string[]
  /** Bytes of those NARs that are in the store now. */
  bytes: number
  /** Pinned paths whose NAR is not in the store yet. */
  absent: string[]
  /** Store paths of the closure that have no narinfo where it was looked for. */
  missing: string[]
}

/** One narinfo of the closure: its store path and what it says. */
interface Found {
  storePath: string
  narInfo: NarInfo
}

/**
 * Pins (or unpins) whole closures in a store: every NAR of every path they reach through References is
 * held out of LRU eviction. The closure is read from the store's own narinfo, or from `--cache` URLs.
 */
export async function pinCommand(options: PinOptions, io: CommandIO): Promise<PinSummary> {
  const roots = await readRoots(options.paths, options.list)
  if (roots.length === 0) throw new UsageError('pin needs a store path, a hash part or --list FILE')
  const store = await openStore(resolvePath(options.store), { maxBytes: Number.MAX_SAFE_INTEGER, ...(io.signal ? { signal: io.signal } : {}) })
  const summary: PinSummary = { pinned: [], bytes: 0, absent: [], missing: [] }
  try {
    const found = options.caches?.length
      ? walkClosure(roots, {
          caches: options.caches,
          ...(options.trustedKeys?.length ? { trustedKeys: options.trustedKeys } : {}),
          ...(io.signal ? { signal: io.signal } : {}),
          onMissing: (miss) => summary.missing.push(miss.storePath),
        })
      : walkStore(store, roots, summary.missing, io.signal)
    for await (const { storePath, narInfo } of found) {
      const { fileHash } = narInfoFile(narInfo)
      if (options.unpin) store.unpin(fileHash)
      else store.pin(fileHash)
      summary.pinned.push(storePath)
      const entry = store.get(fileHash)
      if (entry) summary.bytes += entry.size
      else summary.absent.push(storePath)
    }
  } finally {
    await store.close()
  }
  const verb = options.unpin ? 'unpinned' : 'pinned'
  io.stdout.write(
    `${verb} ${summary.pinned.length} paths (${formatBytes(summary.bytes)} in the store` +
      `${summary.absent.length ? `, ${summary.absent.length} NARs not there yet` : ''}), ${summary.missing.length} missing\n` +
      summary.missing.map((p) => `missing ${p}\n`).join(''),
  )
  return summary
}

/** The closure as the store's own narinfos give it, breadth first; paths it has no narinfo for go to `missing`. */
async function* walkStore(store: NarStore, roots: string[], missing: string[], signal?: AbortSignal): AsyncGenerator<Found> {
  const seen = new Set<string>()
  const queue = roots.map((root) => root.replace(/^\/nix\/store\//, ''))
  while (queue.length > 0) {
    signal?.throwIfAborted()
    const name = queue.shift()!
    const hashPart = name.slice(0, 32)
    if (seen.has(hashPart)) continue
    seen.add(hashPart)
    const text = await store.narInfo(hashPart)
    if (text === undefined) {
      missing.push(name.length > 32 ? `/nix/store/${name}` : name)
      continue
    }
    let narInfo: NarInfo
    try {
      narInfo = parseNarInfo(text)
    } catch (error) {
      missing.push(`${name}: ${describe(error)}`)
      continue
    }
    yield { storePath: narInfo.storePath, narInfo }
    for (const reference of narInfo.references) queue.push(parseStoreBasename(reference).basename)
  }
}

/** Parses `narrace pin` arguments. */
export function parsePinArgs(args: string[]): PinOptions {
  const { values, positionals } = parse(args, {
    list: { type: 'string' },
    store: { type: 'string' },
    unpin: { type: 'boolean' },
    cache: { type: 'string', multiple: true },
    'trusted-public-key': { type: 'string', multiple: true },
  })
  if (!values.store) throw new UsageError('pin needs --store DIR')
  const options: PinOptions = {
    paths: positionals,
    store: values.store,
    unpin: values.unpin === true,
    caches: (values.cache ?? []).map((u) => httpUrl(u, '--cache')),
    trustedKeys: values['trusted-public-key'] ?? [],
  }
  if (values.list !== undefined) options.list = values.list
  return options
}
