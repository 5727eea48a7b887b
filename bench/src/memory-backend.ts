import type { NarBackend, NarSource } from '@narrace/core'

/** A backend that streams chunks already in memory, honouring offsets; `onFirstChunk` fires just before the first yield. */
export function memoryBackend(
  chunks: readonly Uint8Array[],
  options: { name?: string; onFirstChunk?: () => void } = {},
): NarBackend {
  const size = chunks.reduce((sum, chunk) => sum + chunk.length, 0)
  return {
    name: options.name ?? 'memory',
    async fetch(_hash, { signal, offset = 0 }): Promise<NarSource> {
      signal.throwIfAborted()
      async function* body(): AsyncGenerator<Uint8Array> {
        let position = 0
        let first = true
        for (const chunk of chunks) {
          const end = position + chunk.length
          if (end > offset) {
            signal.throwIfAborted()
            if (first) {
              first = false
              options.onFirstChunk?.()
            }
            yield position >= offset ? chunk : chunk.subarray(offset - position)
          }
          position = end
        }
      }
      return { body: body(), offset, size }
    },
  }
}

/** Splits a buffer into views of `chunkSize` bytes, the way a socket hands over data. */
export function split(buffer: Uint8Array, chunkSize: number): Uint8Array[] {
  const chunks: Uint8Array[] = []
  for (let i = 0; i < buffer.length; i += chunkSize) chunks.push(buffer.subarray(i, i + chunkSize))
  return chunks
}
