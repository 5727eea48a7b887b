import type { NarBackend, NarFetchOptions, NarHash, NarSource } from '@narrace/core'
import type { NarIndex } from '@narrace/index'

/**
 * An upstream's backend that asks for each file under that upstream's own name for it: the URL its
 * narinfo gave, kept in the index per upstream (cachix's `nar/<uuid>.nar.zst`, harmonia's
 * `nar/<narhash>.nar?hash=…`). An upstream that gave none is asked under the `url` resolveNar passes,
 * the standard `nar/<FileHash nix32>.nar<ext>`. Every other property is the backend's own.
 */
export function perUpstreamUrls<T extends NarBackend>(backend: T, upstream: string, index: NarIndex): T {
  const wrapper: T = Object.create(backend) as T
  wrapper.fetch = (hash: NarHash, options: NarFetchOptions): Promise<NarSource> => {
    const own = index.upstreamUrls(hash).get(upstream)
    return backend.fetch(hash, own === undefined ? options : { ...options, url: own })
  }
  return wrapper
}
