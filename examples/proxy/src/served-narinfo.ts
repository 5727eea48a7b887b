import type { NarHash } from '@narrace/core'
import { resolveNarInfo, type HttpBackend } from '@narrace/http'
import type { NarIndex } from '@narrace/index'
import { compressionExtension, rewriteNarInfo, type NarInfo } from '@narrace/narinfo'

/** A narinfo as the proxy serves it, and what it learned from it. */
export interface ServedNarInfo {
  /** The narinfo text Nix gets: `URL: nar/<FileHash nix32>.nar<ext>`, every other line as the upstream wrote it. */
  text: string
  /** The narinfo as the upstream sent it. */
  narInfo: NarInfo
  /** The upstream it came from, as given in `--upstream`. */
  upstream: string
  /**
   * The FileHash the NAR route verifies against; undefined for a compressed file whose narinfo has no
   * FileHash, which is served as `nar/<hash part>.nar<ext>` and passed through unverified.
   */
  fileHash?: NarHash
  fileSize?: number
}

/**
 * The served form of an upstream's narinfo. The URL names the file by its FileHash (from the narinfo, or
 * its NarHash when `Compression: none`), so the NAR route needs no memory to find it, and the name never
 * changes for a Nix that cached it. Only a compressed file with no FileHash is named by the store path's
 * hash part instead, since nothing else names it.
 */
export function servedNarInfo(upstream: string, narInfo: NarInfo, text: string, hashPart: string): ServedNarInfo {
  const unnamed = narInfo.fileHash === undefined && narInfo.compression !== 'none'
  const rewritten = rewriteNarInfo(text, unnamed ? `nar/${hashPart}.nar${compressionExtension(narInfo.compression)}` : undefined)
  const served: ServedNarInfo = { text: rewritten.text, narInfo, upstream }
  if (rewritten.fileHash) served.fileHash = rewritten.fileHash
  if (rewritten.fileSize !== undefined) served.fileSize = rewritten.fileSize
  return served
}

/**
 * Records in the index what the NAR route needs later, across restarts: the FileHash with its size and
 * store path, and what this upstream calls the file (fetched from it under that name). Throws the index's
 * typed error for a mapping it refuses (a URL over its length bound).
 */
export function learnNarInfo(index: NarIndex, served: ServedNarInfo): void {
  if (!served.fileHash) return
  const location: Parameters<NarIndex['put']>[0] = {
    fileHash: served.fileHash.toString(),
    storePath: served.narInfo.storePath,
  }
  if (served.fileSize !== undefined) location.size = served.fileSize
  index.put(location)
  index.setUpstreamUrl(served.fileHash, served.upstream, served.narInfo.url)
}

export interface ResolveServedOptions {
  /** The upstreams' backends, each named by its URL as given: narinfo go through their credentials and checks. */
  upstreams: readonly HttpBackend[]
  trustedKeys: string[] | undefined
  signal: AbortSignal
}

/**
 * Races the upstreams for `hashPart`'s narinfo (resolveNarInfo: signature checked) and gives its served
 * form. When the winner names no verifiable file (compressed, no FileHash), the other upstreams are asked
 * too, and one that does is preferred: a verified race beats a file passed through on trust. Rejects as
 * resolveNarInfo does.
 */
export async function resolveServedNarInfo(hashPart: string, options: ResolveServedOptions): Promise<ServedNarInfo> {
  const ask = async (caches: HttpBackend[]): Promise<ServedNarInfo> => {
    const found = await resolveNarInfo(hashPart, { caches, trustedKeys: options.trustedKeys, signal: options.signal })
    return servedNarInfo(found.cache, found.narInfo, found.text, hashPart)
  }
  const served = await ask([...options.upstreams])
  const others = options.upstreams.filter((upstream) => upstream.name !== served.upstream)
  if (served.fileHash || others.length === 0) return served
  const better = await ask(others).catch(() => undefined)
  return better?.fileHash ? better : served
}
