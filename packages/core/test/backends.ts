import { createHash, randomBytes } from 'node:crypto'
import { setTimeout as delay } from 'node:timers/promises'
import { NarBackendError, NarNotFoundError, parseNarHash, type NarBackend, type NarHash, type NarSource } from '../src/index.js'

/** A scripted in-memory backend: a test double of the NarBackend interface. */
export interface ScriptedOptions {
  /** Delay before fetch() resolves. */
  latencyMs?: number
  /** Delay before each chunk. */
  chunkDelayMs?: number
  chunkSize?: number
  /** Resolve fetch() with NarNotFoundError. */
  missing?: boolean
  /** Reject fetch() with this error. */
  fail?: Error
  /** Throw mid-stream once this many bytes of the body were yielded. */
  failAt?: number
  /** Stop yielding (hang until aborted) at this byte. */
  stallAt?: number
  /** End cleanly at this byte. */
  truncateAt?: number
  /** Flip the byte at this position. */
  corruptAt?: number
  /** Answer from 0 whatever the requested offset is. */
  ignoreOffset?: boolean
  /** The size announced in NarSource.size. */
  announceSize?: number
  /** Serve ranges: honour `end` and say so in NarSource.ranges. */
  ranged?: boolean
}

export interface Scripted extends NarBackend {
  /** Each fetch() call: what it asked for, and how many bytes its body yielded. */
  calls: { offset: number; end?: number | undefined; signal: AbortSignal; yielded: number }[]
  /** How many bodies were closed (return() or abort) before their end. */
  closed: number
  /** How many fetch signals fired. */
  aborted: number
  /** Bytes yielded over all calls. */
  yielded: number
}

export function scripted(name: string, data: Uint8Array, o: ScriptedOptions = {}): Scripted {
  const backend: Scripted = {
    name,
    calls: [],
    closed: 0,
    aborted: 0,
    yielded: 0,
    async fetch(_hash: NarHash, options): Promise<NarSource> {
      const { signal } = options
      const call = { offset: options.offset ?? 0, end: options.end, signal, yielded: 0 }
      backend.calls.push(call)
      signal.addEventListener('abort', () => backend.aborted++, { once: true })
      if (o.latencyMs) await delay(o.latencyMs, undefined, { signal })
      if (o.missing) throw new NarNotFoundError(`${name} has no copy`)
      if (o.fail) throw o.fail
      const offset = o.ignoreOffset ? 0 : (options.offset ?? 0)
      const bytes = Uint8Array.from(data)
      if (o.corruptAt !== undefined) bytes[o.corruptAt]! ^= 0xff
      const chunkSize = o.chunkSize ?? 1024
      const stop = o.ranged && options.end !== undefined ? Math.min(options.end, bytes.length) : bytes.length
      async function* body(): AsyncGenerator<Uint8Array> {
        let finished = false
        try {
          for (let at = offset; at < stop; ) {
            if (o.chunkDelayMs) await delay(o.chunkDelayMs, undefined, { signal })
            if (o.truncateAt !== undefined && at >= o.truncateAt) break
            if (o.failAt !== undefined && at >= o.failAt) throw new NarBackendError(`${name} connection reset`)
            if (o.stallAt !== undefined && at >= o.stallAt) await delay(3_600_000, undefined, { signal })
            let end = Math.min(at + chunkSize, stop)
            for (const limit of [o.failAt, o.stallAt, o.truncateAt]) {
              if (limit !== undefined && at < limit) end = Math.min(end, limit)
            }
            const chunk = bytes.subarray(at, end)
            at = end
            backend.yielded += chunk.length
            call.yielded += chunk.length
            yield chunk
          }
          finished = true
        } finally {
          if (!finished) backend.closed++
        }
      }
      const source: NarSource = { body: body(), offset }
      if (o.announceSize !== undefined) source.size = o.announceSize
      if (o.ranged) source.ranges = true
      return source
    },
  }
  return backend
}

export function sample(size: number): { data: Uint8Array; hash: NarHash } {
  const data = new Uint8Array(randomBytes(size))
  return { data, hash: hashOf(data) }
}

export function hashOf(data: Uint8Array): NarHash {
  return parseNarHash(`sha256:${createHash('sha256').update(data).digest('hex')}`)
}

export async function collect(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const chunk of stream) parts.push(chunk)
  return Buffer.concat(parts)
}

export interface ChunkedOptions {
  /** Delay before fetch() resolves. */
  fetchMs?: number
  /** Delay before each chunk. */
  chunkMs?: number
  /** Never settle fetch(), whatever the signal says. */
  deaf?: boolean
  /** Where to start for a requested offset: `() => 0` ignores it; by default it is honoured. */
  startAt?: (asked: number) => number
  /** The size announced in NarSource.size. */
  size?: number
}

export interface Chunked extends NarBackend {
  /** The signal and offset of each fetch() call. */
  calls: { offset: number; signal: AbortSignal }[]
  /** How many times return() was called on a body. */
  returned: number
}

/**
 * A backend over fixed chunks with a hand-written iterator rather than a generator, so that return() is
 * seen even while a next() is pending.
 */
export function chunked(name: string, chunks: Uint8Array[], o: ChunkedOptions = {}): Chunked {
  const backend: Chunked = {
    name,
    calls: [],
    returned: 0,
    async fetch(_hash, options) {
      const { signal } = options
      const asked = options.offset ?? 0
      backend.calls.push({ offset: asked, signal })
      if (o.deaf) await new Promise<never>(() => {})
      if (o.fetchMs) await delay(o.fetchMs, undefined, { signal })
      const offset = o.startAt ? o.startAt(asked) : asked
      // Empty chunks stay wherever they are, so that a test can check they never count as a byte.
      const pieces: Uint8Array[] = []
      let at = 0
      for (const chunk of chunks) {
        if (chunk.length === 0) pieces.push(chunk)
        else if (at + chunk.length > offset) pieces.push(chunk.subarray(Math.max(0, offset - at)))
        at += chunk.length
      }
      let i = 0
      const iterator: AsyncIterator<Uint8Array> = {
        async next() {
          if (o.chunkMs) await delay(o.chunkMs, undefined, { signal })
          return i < pieces.length ? { done: false, value: pieces[i++]! } : { done: true, value: undefined }
        },
        async return() {
          backend.returned++
          i = pieces.length
          return { done: true, value: undefined }
        },
      }
      const source: NarSource = { body: { [Symbol.asyncIterator]: () => iterator }, offset }
      if (o.size !== undefined) source.size = o.size
      return source
    },
  }
  return backend
}

/** Splits bytes into chunks of `size`. */
export function split(bytes: Uint8Array, size: number): Uint8Array[] {
  const chunks: Uint8Array[] = []
  for (let at = 0; at < bytes.length; at += size) chunks.push(bytes.subarray(at, at + size))
  return chunks
}

/** A backend's answer that never comes: it rejects with the abort reason once `signal` aborts. */
export function untilAborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
}

/** Rejects after `ms`, so that a hang fails its test instead of the whole suite. */
export function within<T>(ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/**
 * Counts the timers that code under test set with the global setTimeout and has neither cleared nor seen
 * fire. The test runner's own timers come and go during a test, so a global count would be flaky.
 */
export function trackTimers(): { live: () => number; [Symbol.dispose]: () => void } {
  const { setTimeout: set, clearTimeout: clear } = globalThis
  const live = new Set<unknown>()
  globalThis.setTimeout = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    const id = set((...a: unknown[]) => {
      live.delete(id)
      fn(...a)
    }, ms, ...args)
    live.add(id)
    return id
  }) as typeof setTimeout
  globalThis.clearTimeout = ((id: Parameters<typeof clearTimeout>[0]) => {
    live.delete(id)
    clear(id)
  }) as typeof clearTimeout
  return {
    live: () => live.size,
    [Symbol.dispose]: () => {
      globalThis.setTimeout = set
      globalThis.clearTimeout = clear
    },
  }
}

/** Sockets, file handles and the like: everything active but timers. */
export function handles(): number {
  return process.getActiveResourcesInfo().filter((r) => r !== 'Timeout' && r !== 'Immediate').length
}

/** How many distinct bytes of the file the backends' bodies yielded: what was fetched, not counting twice. */
export function distinctBytes(backends: Scripted[]): number {
  const spans = backends
    .flatMap((b) => b.calls.map((c) => [c.offset, c.offset + c.yielded] as const))
    .filter(([a, b]) => b > a)
    .sort((x, y) => x[0] - y[0])
  let total = 0
  let reach = -1
  for (const [a, b] of spans) {
    if (b <= reach) continue
    total += b - Math.max(a, reach)
    reach = b
  }
  return total
}
