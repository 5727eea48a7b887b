import type { NarBackend, NarFetchOptions, NarHash, NarSource } from '@narrace/core'
import type { NarStore } from './store.js'

export interface StoreBackendOptions {
  /** @default 'store' */
  name?: string
}

/**
 * A NarBackend over a store: answers at once from disk, with NarNotFoundError when the NAR is not there.
 * `resolveNar` verifies these bytes like any other source's, so a file damaged on disk fails over.
 */
export function storeBackend(store: NarStore, options: StoreBackendOptions = {}): NarBackend {
  return {
    name: options.name ?? 'store',
    async fetch(hash: NarHash, fetchOptions: NarFetchOptions): Promise<NarSource> {
      return store.read(hash, { signal: fetchOptions.signal, ...(fetchOptions.offset ? { offset: fetchOptions.offset } : {}) })
    },
  }
}
