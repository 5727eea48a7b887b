import { readFile, stat } from 'node:fs/promises'
import { InvalidNarHashError, NarraceError } from '@narrace/core'
import { isStoreHashPart, parseStoreBasename, parseStorePath, type NarInfo } from '@narrace/narinfo'
import type { Dispatcher } from 'undici'
import { resolveNarInfo, type NarInfoCache } from './narinfo.js'

/** How many narinfo lookups a closure walk keeps in flight. */
export const DEFAULT_CLOSURE_CONCURRENCY = 16

/** A store path of the closure, with the narinfo that won its race. */
export interface ClosureEntry {
  /** The full store path, `/nix/store/<hash part>-<name>`. */
  storePath: string
  narInfo: NarInfo
  /** The cache the narinfo came from. */
  cache: string
  /** The narinfo exactly as that cache sent it, to store unchanged with its signatures. */
  text: string
}

/** A path of the closure that no cache could give a valid narinfo for. */
export interface ClosureMiss {
  /** The full store path when a referrer named it, else the hash part that was asked for. */
  storePath: string
  /** NarNotFoundError when every cache said 404; InvalidNarInfoError when the rest lied; else NarBackendError. */
  error: unknown
}

export interface WalkClosureOptions {
  /** Binary caches (URLs, `{ url, headers?, netrc?, … }` or httpBackends), raced for every narinfo. */
  caches: NarInfoCache[]
  /** When given, only narinfos signed by one of these keys count. */
  trustedKeys?: string[]
  signal?: AbortSignal
  /** Narinfo lookups in flight at once. @default 16 */
  concurrency?: number
  /** The undici dispatcher for every lookup. @default the one resolveNarInfo shares */
  dispatcher?: Dispatcher
  /**
   * Called for each path no cache could give, as soon as that is known; the walk goes on without that
   * path's references. Every miss is also listed in the walk's `missing` array.
   */
  onMissing?: (miss: ClosureMiss) => void
}

/** The walk: iterate it for the paths found; `missing` lists the paths no cache had, so far. */
export type ClosureWalk = AsyncGenerator<ClosureEntry, void, undefined> & { readonly missing: readonly ClosureMiss[] }

/** Accepts a full store path, a store path basename or a bare 32-character hash part. */
function hashPartOf(input: string): { hashPart: string; storePath: string } {
  const text = input.trim()
  if (isStoreHashPart(text)) return { hashPart: text, storePath: text }
  try {
    const parsed = text.startsWith('/') ? parseStorePath(text) : parseStoreBasename(text)
    return { hashPart: parsed.hashPart, storePath: parsed.path }
  } catch (error) {
    throw new InvalidNarHashError(`'${input}' is neither a store path nor a 32-character hash part`, { cause: error })
  }
}

/** Reads a list file: one store path or hash part a line; blank lines and `#` comments are skipped. */
async function readList(file: string): Promise<{ hashPart: string; storePath: string }[]> {
  const text = await readFile(file, 'utf8')
  const paths: { hashPart: string; storePath: string }[] = []
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/#.*/, '').trim()
    if (line === '') continue
    try {
      paths.push(hashPartOf(line))
    } catch (error) {
      throw new InvalidNarHashError(`${file}:${i + 1}: '${line}' is neither a store path nor a 32-character hash part`, {
        cause: error,
      })
    }
  }
  return paths
}

/** A store path, a hash part, or else a file listing them. */
async function rootsOf(input: string): Promise<{ hashPart: string; storePath: string }[]> {
  try {
    return [hashPartOf(input)]
  } catch (error) {
    const isFile = await stat(input).then((s) => s.isFile(), () => false)
    if (!isFile) throw error
    return readList(input)
  }
}

type Lookup = { hashPart: string; storePath: string } & ({ result: ClosureEntry } | { error: unknown })

/**
 * Walks the closure of `storePaths` breadth-first through narinfo References, racing the caches for
 * each narinfo with resolveNarInfo, at most `concurrency` at a time. Each input is a full store path, a
 * 32-character hash part, or a file with one of those a line. Yields every path of the closure exactly
 * once, in the order its narinfo arrives; cycles and self-references are safe. A path that no cache has
 * is reported in `missing` and to `onMissing`, and the walk goes on. Leaving the loop early aborts the
 * lookups in flight.
 */
export function walkClosure(storePaths: string[], options: WalkClosureOptions): ClosureWalk {
  const missing: ClosureMiss[] = []
  return Object.assign(walk(storePaths, options, missing), { missing })
}

async function* walk(
  storePaths: string[],
  options: WalkClosureOptions,
  misses: ClosureMiss[],
): AsyncGenerator<ClosureEntry, void, undefined> {
  const outer = options.signal
  outer?.throwIfAborted()
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? DEFAULT_CLOSURE_CONCURRENCY))
  const seen = new Set<string>()
  const queue: { hashPart: string; storePath: string }[] = []
  const enqueue = (path: { hashPart: string; storePath: string }): void => {
    if (seen.has(path.hashPart)) return
    seen.add(path.hashPart)
    queue.push(path)
  }
  for (const input of storePaths) for (const root of await rootsOf(input)) enqueue(root)

  const walking = new AbortController()
  const signal = outer ? AbortSignal.any([outer, walking.signal]) : walking.signal
  const running = new Map<string, Promise<Lookup>>()
  const lookup = async (hashPart: string, storePath: string): Promise<Lookup> => {
    try {
      const found = await resolveNarInfo(hashPart, {
        caches: options.caches,
        signal,
        ...(options.trustedKeys && { trustedKeys: options.trustedKeys }),
        ...(options.dispatcher && { dispatcher: options.dispatcher }),
      })
      const { narInfo, cache, text } = found
      return { hashPart, storePath, result: { storePath: narInfo.storePath, narInfo, cache, text } }
    } catch (error) {
      return { hashPart, storePath, error }
    }
  }

  try {
    while (queue.length > 0 || running.size > 0) {
      // An abort while the consumer held the last entry must not end the walk as if it were complete.
      outer?.throwIfAborted()
      while (running.size < concurrency && queue.length > 0) {
        const next = queue.shift()!
        running.set(next.hashPart, lookup(next.hashPart, next.storePath))
      }
      const done = await Promise.race(running.values())
      // Removed here, not when it settles: lookups settling together must each be taken once.
      running.delete(done.hashPart)
      signal.throwIfAborted()
      if ('error' in done) {
        const miss = { storePath: done.storePath, error: done.error }
        misses.push(miss)
        options.onMissing?.(miss)
        continue
      }
      for (const reference of done.result.narInfo.references) {
        const parsed = parseStoreBasename(reference)
        enqueue({ hashPart: parsed.hashPart, storePath: parsed.path })
      }
      yield done.result
    }
    outer?.throwIfAborted()
  } finally {
    walking.abort(new NarraceError('the closure walk ended'))
  }
}
