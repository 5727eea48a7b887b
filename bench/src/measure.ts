import { resolveNar, type NarBackend } from '@narrace/core'

/** One timed download. */
export interface Timing {
  /** From the call to resolveNar to the first chunk in the consumer's hands. */
  ttfbMs: number
  /** From the call to the verified end. */
  ms: number
  bytes: number
  winner: string
}

/** Resolves one file through `backends`, reads it to its verified end, and times it. */
export async function timeResolve(
  hash: string,
  options: { backends: NarBackend[]; size: number; url?: string; signal: AbortSignal; stallTimeoutMs?: number; hedge?: Record<string, number> },
): Promise<Timing> {
  const t0 = performance.now()
  const stream = await resolveNar(hash, options)
  let ttfbMs = 0
  let bytes = 0
  for await (const chunk of stream) {
    if (bytes === 0) ttfbMs = performance.now() - t0
    bytes += chunk.length
  }
  return { ttfbMs, ms: performance.now() - t0, bytes, winner: stream.winner }
}

/** Wraps a backend to count the bytes its bodies yield, including any that narrace skips or drops. */
export function counted(backend: NarBackend): NarBackend & { readonly yielded: number } {
  let yielded = 0
  return {
    name: backend.name,
    get yielded() {
      return yielded
    },
    async fetch(hash, options) {
      const source = await backend.fetch(hash, options)
      async function* body(): AsyncGenerator<Uint8Array> {
        for await (const chunk of source.body) {
          yielded += chunk.length
          yield chunk
        }
      }
      return { ...source, body: body() }
    },
    close: backend.close ? () => backend.close!() : undefined,
  } as NarBackend & { readonly yielded: number }
}
