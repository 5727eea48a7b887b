import { NarNotFoundError, type NarBackend, type NarFetchOptions, type NarHash, type NarSource } from '@narrace/core'
import type { NarIndex } from '@narrace/index'
import { parseStorePath } from '@narrace/narinfo'
import type { ServedNarInfo } from './served-narinfo.js'

export interface UpstreamNames {
  index: NarIndex
  /** This upstream's own narinfo of a store path (signature checked): what it calls its file. */
  narInfo(upstream: string, hashPart: string, signal: AbortSignal): Promise<ServedNarInfo>
  /** Records what the upstream calls the file, for the next fetch and the next run. */
  learn(served: ServedNarInfo): void
}

/**
 * An upstream's backend that asks for each file under that upstream's own name for it: the URL its
 * narinfo gave, kept in the index per upstream (cachix's `nar/<uuid>.nar.zst`, harmonia's
 * `nar/<narhash>.nar?hash=…`). When the index has no name from this upstream yet but knows the store
 * path, the upstream's own narinfo is read first: it names the file, or shows the upstream holds the
 * path as another file (another compression), which counts as "not here". Otherwise the file is asked
 * for under the `url` resolveNar passes, the standard `nar/<FileHash nix32>.nar<ext>`. Every other
 * property is the backend's own.
 */
export function perUpstreamUrls<T extends NarBackend>(backend: T, upstream: string, names: UpstreamNames): T {
  const own = async (hash: NarHash, signal: AbortSignal): Promise<string | undefined> => {
    const known = names.index.upstreamUrls(hash).get(upstream)
    if (known !== undefined) return known
    const storePath = names.index.get(hash)?.storePath
    if (storePath === undefined) return undefined
    const served = await names.narInfo(upstream, parseStorePath(storePath).hashPart, signal)
    if (!served.fileHash?.equals(hash)) {
      throw new NarNotFoundError(`${upstream}: holds ${storePath} as another file than ${hash.nix32}`)
    }
    names.learn(served)
    return served.narInfo.url
  }
  const wrapper: T = Object.create(backend) as T
  wrapper.fetch = async (hash: NarHash, options: NarFetchOptions): Promise<NarSource> => {
    const url = await own(hash, options.signal)
    return backend.fetch(hash, url === undefined ? options : { ...options, url })
  }
  return wrapper
}
