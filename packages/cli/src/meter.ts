import type { NarBackend, NarFetchOptions, NarHash, NarSource } from '@narrace/core'

/** What a metered backend reports: the size a source announced, and each chunk the consumer took. */
export interface MeterListener {
  onSource?(backend: string, source: NarSource): void
  onBytes(backend: string, bytes: number): void
}

/**
 * Wraps a backend so that progress can be shown while `resolveNarToFile` writes. A chunk counts once the
 * consumer comes back for the next one, so the first chunk a losing source read during the race never counts.
 */
export function meterBackend(backend: NarBackend, listener: MeterListener): NarBackend {
  const name = backend.name
  const metered: NarBackend = {
    name,
    async fetch(hash: NarHash, options: NarFetchOptions): Promise<NarSource> {
      const source = await backend.fetch(hash, options)
      listener.onSource?.(name, source)
      return { ...source, body: meterBody(source.body, (n) => listener.onBytes(name, n)) }
    },
  }
  if (backend.close) metered.close = () => backend.close!()
  return metered
}

function meterBody(body: AsyncIterable<Uint8Array>, count: (bytes: number) => void): AsyncIterable<Uint8Array> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
      const inner = body[Symbol.asyncIterator]()
      let pending = 0
      return {
        async next(): Promise<IteratorResult<Uint8Array>> {
          if (pending > 0) count(pending)
          pending = 0
          const step = await inner.next()
          if (!step.done) pending = step.value.length
          return step
        },
        async return(): Promise<IteratorResult<Uint8Array>> {
          pending = 0
          return inner.return ? inner.return() : { done: true, value: undefined }
        },
      }
    },
  }
}
