import type { NarBackend } from '@narrace/core'
import { httpBackend } from '@narrace/http'

/**
 * `--peer URL`: another narrace proxy raced as an HTTP NAR source. Its store is a binary cache that
 * serves every NAR it holds under `nar/<FileHash>.nar.xz`, so the peer is asked by FileHash, never by
 * an upstream's URL. Its bytes are verified like any other; its narinfo is not used here at all.
 */
export function peerBackend(url: string): NarBackend {
  const backend = httpBackend({ url, name: `peer:${url}` })
  return {
    name: backend.name,
    fetch(hash, options) {
      // The URL an upstream's narinfo gave means nothing to the peer.
      const { url: _upstreamUrl, ...rest } = options as typeof options & { url?: string }
      void _upstreamUrl
      return backend.fetch(hash, rest)
    },
    close: () => backend.close?.() ?? Promise.resolve(),
  }
}
