import { setTimeout as delay } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import {
  NarBackendError,
  NarHashMismatchError,
  NarraceError,
  NarNotFoundError,
  NarSizeMismatchError,
  NarStallError,
  NarUnavailableError,
  isNarMismatch,
  resolveNar,
  type NarBackend,
  type NarEvent,
} from '../src/index.js'
import { getEventListeners } from 'node:events'
import { chunked, collect, handles, hashOf, sample, scripted, split, trackTimers, untilAborted, within } from './backends.js'

const { data, hash } = sample(64 * 1024)

describe('resolveNar: the race', () => {
  it('picks the first backend to yield a byte, not the first fetch() to resolve', async () => {
    const quickFetchSlowByte = scripted('quick-fetch', data, { chunkDelayMs: 200 })
    const slowFetchQuickByte = scripted('quick-byte', data, { latencyMs: 30 })
    const stream = await resolveNar(hash, { backends: [quickFetchSlowByte, slowFetchQuickByte] })
    expect(stream.winner).toBe('quick-byte')
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(stream.sources).toEqual(['quick-byte'])
    expect(stream.bytesRead).toBe(data.length)
  })

  it('aborts the losers at the moment of the win and closes their bodies', async () => {
    const winner = scripted('winner', data, { chunkDelayMs: 1 })
    const slowStart = scripted('slow-start', data, { latencyMs: 500 })
    const slowBody = scripted('slow-body', data, { chunkDelayMs: 300 })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [slowStart, winner, slowBody],
      onEvent: (e) => events.push(e),
    })
    expect(slowStart.calls[0]!.signal.aborted).toBe(true)
    expect(slowBody.calls[0]!.signal.aborted).toBe(true)
    expect(winner.calls[0]!.signal.aborted).toBe(false)
    await collect(stream)
    expect(winner.calls[0]!.signal.aborted).toBe(false)
    const types = events.map((e) => `${e.type}:${e.backend}`)
    expect(types.slice(0, 3).sort()).toEqual(['start:slow-body', 'start:slow-start', 'start:winner'])
    expect(types).toContain('first-byte:winner')
    expect(types).toContain('win:winner')
    expect(types).toContain('abort:slow-start')
    expect(types).toContain('abort:slow-body')
    expect(types.at(-1)).toBe('done:winner')
    expect(events.at(-1)!.bytes).toBe(data.length)
    for (const e of events) expect(e.ms).toBeGreaterThanOrEqual(0)
  })

  it('resolves at the first byte, before the body is read', async () => {
    const slow = scripted('slow', data, { chunkDelayMs: 5, chunkSize: 4096 })
    const stream = await resolveNar(hash, { backends: [slow] })
    expect(slow.yielded).toBeLessThan(data.length)
    expect(stream.bytesRead).toBe(0)
    await collect(stream)
  })

  it('accepts the hash in any form Nix writes it', async () => {
    const stream = await resolveNar(hash.sri, { backends: [scripted('a', data)] })
    expect(stream.hash.equals(hash)).toBe(true)
    await collect(stream)
  })

  it('delays a backend by its hedge, and never starts it when the race is already won', async () => {
    const primary = scripted('primary', data, { latencyMs: 20 })
    const hedged = scripted('hedged', data)
    const stream = await resolveNar(hash, { backends: [primary, hedged], hedge: { hedged: 300 } })
    expect(stream.winner).toBe('primary')
    await collect(stream)
    expect(hedged.calls).toHaveLength(0)
  })

  it('starts a hedged backend once its delay is over', async () => {
    const dead = scripted('dead', data, { missing: true })
    const hedged = scripted('hedged', data)
    const stream = await resolveNar(hash, { backends: [dead, hedged], hedge: { hedged: 30 } })
    expect(stream.winner).toBe('hedged')
    await collect(stream)
  })

  it('ends a hedge delay early once every started backend has failed', async () => {
    const dead = scripted('dead', data, { fail: new NarBackendError('refused') })
    const hedged = scripted('hedged', data)
    const started = Date.now()
    const stream = await resolveNar(hash, { backends: [dead, hedged], hedge: { hedged: 5000 } })
    expect(stream.winner).toBe('hedged')
    expect(Date.now() - started).toBeLessThan(2500)
    await collect(stream)
  })

  it('rejects with NarNotFoundError only when every backend said it has no copy', async () => {
    const backends = [scripted('a', data, { missing: true }), scripted('b', data, { missing: true })]
    const error = await resolveNar(hash, { backends }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarNotFoundError)
    expect(error).toMatchObject({ code: 'NARRACE_NOT_FOUND', name: 'NarNotFoundError' })
    expect((error as NarNotFoundError).errors).toHaveLength(2)
    expect(isNarMismatch(error)).toBe(false)
  })

  it('rejects with NarUnavailableError listing every backend error when one failed for another reason', async () => {
    const reset = new NarBackendError('connection refused')
    const backends = [scripted('a', data, { missing: true }), scripted('b', data, { fail: reset })]
    const error = await resolveNar(hash, { backends }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    expect(error).not.toBeInstanceOf(NarNotFoundError)
    expect(error).toMatchObject({ code: 'NARRACE_UNAVAILABLE', name: 'NarUnavailableError' })
    const errors = (error as NarUnavailableError).errors
    expect(errors).toHaveLength(2)
    expect(errors[0]).toBeInstanceOf(NarNotFoundError)
    expect(errors[1]).toBe(reset)
    expect((error as Error).message).toMatch(/a: a has no copy; b: connection refused/)
  })

  it('rejects with NarNotFoundError when there is no backend at all', async () => {
    await expect(resolveNar(hash, { backends: [] })).rejects.toBeInstanceOf(NarNotFoundError)
  })

  it('counts a backend that throws, returns junk or is absent as failed, without crashing the race', async () => {
    const throwsSync: NarBackend = {
      name: 'throws',
      fetch() {
        throw new Error('boom')
      },
    }
    const junk: NarBackend = { name: 'junk', fetch: async () => ({}) as never }
    const badChunks: NarBackend = {
      name: 'bad-chunks',
      fetch: async () => ({
        offset: 0,
        body: (async function* () {
          yield 'text' as unknown as Uint8Array
        })(),
      }),
    }
    const badOffset: NarBackend = { name: 'bad-offset', fetch: async () => ({ offset: 7, body: [] as never }) }
    const good = scripted('good', data, { latencyMs: 20 })
    const backends = [throwsSync, junk, badChunks, badOffset, undefined as unknown as NarBackend, good]
    const stream = await resolveNar(hash, { backends })
    expect(stream.winner).toBe('good')
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)

    const error = await resolveNar(hash, { backends: backends.slice(0, 5) }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    expect((error as NarUnavailableError).errors).toHaveLength(5)
    expect((error as Error).message).toMatch(/junk: backend junk returned junk/)
  })

  it('drops a backend whose announced size disagrees with the narinfo FileSize', async () => {
    const liar = scripted('liar', data, { announceSize: data.length + 1 })
    const honest = scripted('honest', data, { latencyMs: 20, announceSize: data.length })
    const stream = await resolveNar(hash, { backends: [liar, honest], size: data.length })
    expect(stream.winner).toBe('honest')
    await collect(stream)
  })

  it('passes size and url to every backend', async () => {
    const seen: unknown[] = []
    const backend: NarBackend = {
      name: 'spy',
      async fetch(_h, options) {
        seen.push({ size: options.size, url: options.url, offset: options.offset })
        return scripted('inner', data).fetch(hash, options)
      },
    }
    await collect(await resolveNar(hash, { backends: [backend], size: data.length, url: 'nar/x.nar.xz' }))
    expect(seen).toEqual([{ size: data.length, url: 'nar/x.nar.xz', offset: 0 }])
  })
})

describe('resolveNar: verification', () => {
  it('throws NarHashMismatchError at the end of corrupt bytes, never ending normally', async () => {
    const stream = await resolveNar(hash, { backends: [scripted('bad', data, { corruptAt: 1000 })] })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarHashMismatchError)
    expect(error).toMatchObject({
      code: 'NARRACE_HASH_MISMATCH',
      expected: hash.toString(),
      sources: ['bad'],
    })
    expect((error as NarHashMismatchError).actual).toMatch(/^sha256:[0-9a-z]{52}$/)
    expect((error as NarHashMismatchError).actual).not.toBe(hash.toString())
  })

  it('throws NarSizeMismatchError at once on a byte past the FileSize', async () => {
    const stream = await resolveNar(hash, { backends: [scripted('long', data)], size: data.length - 10 })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarSizeMismatchError)
    expect(error).toMatchObject({ code: 'NARRACE_SIZE_MISMATCH', expected: data.length - 10, hash: hash.toString() })
    // a file of the wrong length can't hash to the FileHash
    expect(error).toBeInstanceOf(NarHashMismatchError)
  })

  it('throws NarSizeMismatchError on a short end with no other source to take over', async () => {
    const stream = await resolveNar(hash, {
      backends: [scripted('short', data, { truncateAt: 5000 })],
      size: data.length,
    })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarSizeMismatchError)
    expect(error).toMatchObject({ expected: data.length, actual: 5000, sources: ['short'] })
  })

  it('rejects with the size mismatch when every backend announces the wrong size', async () => {
    const liar = scripted('liar', data, { announceSize: data.length + 1 })
    const error = await resolveNar(hash, { backends: [liar], size: data.length }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarSizeMismatchError)
    expect(error).toMatchObject({ expected: data.length, actual: data.length + 1 })
  })

  it('without a FileSize, a truncated body fails the hash check', async () => {
    const stream = await resolveNar(hash, { backends: [scripted('short', data, { truncateAt: 5000 })] })
    await expect(collect(stream)).rejects.toBeInstanceOf(NarHashMismatchError)
  })
})

describe('resolveNar: fail-over', () => {
  it('continues from bytesRead on a source that honours the offset', async () => {
    const dies = scripted('dies', data, { failAt: 30_000 })
    const backup = scripted('backup', data, { latencyMs: 50 })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, { backends: [dies, backup], onEvent: (e) => events.push(e) })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(stream.winner).toBe('dies')
    expect(stream.sources).toEqual(['dies', 'backup'])
    expect(backup.calls.at(-1)!.offset).toBe(30_000)
    expect(backup.yielded).toBe(data.length - 30_000)
    const failover = events.find((e) => e.type === 'failover')
    expect(failover).toMatchObject({ backend: 'backup', bytes: 30_000 })
    expect(events.find((e) => e.type === 'fail' && e.backend === 'dies')?.error).toBeInstanceOf(NarBackendError)
  })

  it('skips the bytes already delivered on a source that answers from 0', async () => {
    const dies = scripted('dies', data, { failAt: 30_000 })
    const fromZero = scripted('from-zero', data, { latencyMs: 50, ignoreOffset: true })
    const stream = await resolveNar(hash, { backends: [dies, fromZero], size: data.length })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(fromZero.calls.at(-1)!.offset).toBe(30_000)
    expect(fromZero.yielded).toBe(data.length)
  })

  it('gives a source that ignores the offset the stall time per chunk it skips, not for the whole skip', async () => {
    const dies = scripted('dies', data, { failAt: 60_000 })
    // The skip takes 60 chunks of 10 ms, twice the stall timeout, which still leaves room for a busy machine.
    const slowFromZero = scripted('slow-from-zero', data, { latencyMs: 20, ignoreOffset: true, chunkDelayMs: 10 })
    const stream = await resolveNar(hash, { backends: [dies, slowFromZero], stallTimeoutMs: 300 })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(stream.sources).toEqual(['dies', 'slow-from-zero'])
  })

  it('fails over after a stall of stallTimeoutMs', async () => {
    const stalls = scripted('stalls', data, { stallAt: 20_000 })
    const backup = scripted('backup', data, { latencyMs: 50 })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [stalls, backup],
      stallTimeoutMs: 100,
      onEvent: (e) => events.push(e),
    })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(backup.calls.at(-1)!.offset).toBe(20_000)
    expect(stalls.calls[0]!.signal.aborted).toBe(true)
    expect(events.find((e) => e.type === 'fail' && e.backend === 'stalls')?.error).toBeInstanceOf(NarStallError)
  })

  it('never takes a slow consumer for a stalled source', async () => {
    const only = scripted('only', data, { chunkSize: 16 * 1024 })
    const stream = await resolveNar(hash, { backends: [only], stallTimeoutMs: 40 })
    const parts: Uint8Array[] = []
    for await (const chunk of stream) {
      parts.push(chunk)
      await delay(70)
    }
    expect(Buffer.concat(parts).equals(data)).toBe(true)
    expect(only.calls).toHaveLength(1)
  })

  it('stops the stall watchdog while a backend says its request waits in a queue of its own', async () => {
    const queuedFor = (name: string, waitMs: number, sends: boolean): NarBackend => ({
      name,
      async fetch(_hash, options) {
        options.queued?.(true)
        await delay(waitMs)
        options.queued?.(false)
        if (!sends) await untilAborted(options.signal)
        return { offset: 0, body: (async function* () { yield data })() }
      },
    })
    // Three times the stall timeout in the queue, then an answer: served.
    const stream = await resolveNar(hash, { backends: [queuedFor('queued', 300, true)], stallTimeoutMs: 100 })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    // Out of the queue, the clock runs again: a source that then sends nothing stalls.
    const error = await resolveNar(hash, { backends: [queuedFor('silent', 200, false)], stallTimeoutMs: 100 }).catch((e: unknown) => e)
    expect((error as NarUnavailableError).errors[0]).toBeInstanceOf(NarStallError)
  })

  it('gives a request at most four stall timeouts in a backend queue, over every hop, then fails over', async () => {
    // A backend that says its request waits and never says it went out.
    const stuck: NarBackend = {
      name: 'stuck',
      async fetch(_hash, options) {
        options.queued?.(true)
        return untilAborted(options.signal)
      },
    }
    const error = await resolveNar(hash, { backends: [stuck], stallTimeoutMs: 50 }).catch((e: unknown) => e)
    const stall = (error as NarUnavailableError).errors[0]
    expect(stall).toBeInstanceOf(NarStallError)
    expect((stall as Error).message).toMatch(/waited 200 ms in its own queue/)
    // Two hops of 150 ms each in the queue are 300 ms in all: over the limit, though each is under it.
    const hops: NarBackend = {
      name: 'hops',
      async fetch(_hash, options) {
        options.queued?.(true)
        await delay(150)
        options.queued?.(false)
        options.queued?.(true)
        return untilAborted(options.signal)
      },
    }
    const again = await resolveNar(hash, { backends: [hops], stallTimeoutMs: 50 }).catch((e: unknown) => e)
    expect((again as NarUnavailableError).errors[0]).toBeInstanceOf(NarStallError)
    // With another source, started only after the limit, the file comes from it.
    const stream = await resolveNar(hash, { backends: [stuck, scripted('other', data)], hedge: { other: 300 }, stallTimeoutMs: 50 })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
  })

  it('ends the queue with connect, for a backend that never says its request left it', async () => {
    const slow: NarBackend = {
      name: 'slow',
      async fetch(_hash, options) {
        options.queued?.(true)
        return {
          offset: 0,
          // 16 pieces 20 ms apart: longer than four stall timeouts, and never still for one.
          body: (async function* () {
            for (let at = 0; at < data.length; at += data.length / 16) {
              yield data.subarray(at, at + data.length / 16)
              await delay(20)
            }
          })(),
        }
      },
    }
    const stream = await resolveNar(hash, { backends: [slow], stallTimeoutMs: 50, minBytesPerSecond: 0 })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
  })

  it('keeps the stall clock of a request whose timer fired while it waited in the queue', async () => {
    let outAt = 0
    let stalledAt = 0
    const backend: NarBackend = {
      name: 'late',
      async fetch(_hash, options) {
        // 300 ms out on a connection without a byte, then 500 ms queued for the next hop (the 400 ms timer
        // fires in there), then silence: 100 ms of the stall timeout are left.
        await delay(300)
        options.queued?.(true)
        await delay(500)
        options.queued?.(false)
        outAt = performance.now()
        return new Promise((_, reject) =>
          options.signal.addEventListener('abort', () => {
            stalledAt = performance.now()
            reject(options.signal.reason)
          }),
        )
      },
    }
    const error = await resolveNar(hash, { backends: [backend], stallTimeoutMs: 400 }).catch((e: unknown) => e)
    expect((error as NarUnavailableError).errors[0]).toBeInstanceOf(NarStallError)
    // Before, a fresh 400 ms started when the request left the queue.
    expect(stalledAt - outAt).toBeLessThan(300)
  })

  it('treats a source that sends no byte within stallTimeoutMs as failed', async () => {
    const silent = scripted('silent', data, { stallAt: 0 })
    const error = await resolveNar(hash, { backends: [silent], stallTimeoutMs: 50 }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    expect((error as NarUnavailableError).errors[0]).toBeInstanceOf(NarStallError)
  })

  it('resumes a short end from another source', async () => {
    const short = scripted('short', data, { truncateAt: 10_000 })
    const backup = scripted('backup', data, { latencyMs: 50 })
    const stream = await resolveNar(hash, { backends: [short, backup], size: data.length })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(backup.calls.at(-1)!.offset).toBe(10_000)
  })

  it('retries the same source once from bytesRead when it is the only one', async () => {
    let calls = 0
    const flaky: NarBackend = {
      name: 'flaky',
      fetch(h, options) {
        calls++
        return scripted('flaky', data, calls === 1 ? { failAt: 8192 } : {}).fetch(h, options)
      },
    }
    const stream = await resolveNar(hash, { backends: [flaky] })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(calls).toBe(2)
  })

  it('throws NarUnavailableError with the cause among its errors when no source is left', async () => {
    const stream = await resolveNar(hash, { backends: [scripted('stalls', data, { stallAt: 8192 })], stallTimeoutMs: 50 })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toMatchObject({ name: 'NarUnavailableError', code: 'NARRACE_UNAVAILABLE' })
    // The cause, then the same source asked once more (it was struck, not dead), which stalled again.
    const errors = (error as NarUnavailableError).errors
    expect(errors.length).toBeGreaterThan(0)
    expect(errors.every((e) => e instanceof NarStallError)).toBe(true)
    expect((error as Error).message).toMatch(/from byte 8192 \(stalls: /)
  })

  it('names each source by its own error when the last race left returns a mismatch alone', async () => {
    const a = scripted('a', data, { failAt: 8192 })
    const liar = new NarSizeMismatchError('b announces one byte more', { expected: 1, actual: 2, hash: '', sources: ['b'] })
    const b = scripted('b', data, { latencyMs: 40, fail: liar })
    const c = scripted('c', data, { latencyMs: 40, missing: true })
    const error = await collect(await resolveNar(hash, { backends: [a, b, c] })).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    const [first, second, third] = (error as NarUnavailableError).errors
    expect(first).toBeInstanceOf(NarBackendError)
    expect(second).toBe(liar)
    expect(third).toBeInstanceOf(NarNotFoundError)
    expect((error as Error).message).toMatch(/\(a: .*; b: .*; c: /)
  })

  it('never says "not found" once bytes of the file came, and lists a race\'s errors flat', async () => {
    const big = sample(12 << 20)
    const ranged = scripted('a', big.data, { ranged: true })
    let calls = 0
    // The first 1 MiB comes; the rest, asked for next, is a 404 (a CDN edge that lost it).
    const a: NarBackend = {
      name: 'a',
      fetch: async (h, o) => {
        if (++calls >= 2) throw new NarNotFoundError('a: HTTP 404 for the rest')
        return ranged.fetch(h, o)
      },
    }
    const b = scripted('b', big.data, { missing: true })
    const stream = await resolveNar(big.hash, { backends: [a, b], size: big.data.length })
    let bytes = 0
    const error = await (async () => {
      for await (const chunk of stream) bytes += chunk.length
    })().catch((e: unknown) => e)
    expect(bytes).toBeGreaterThan(0)
    expect(error).toBeInstanceOf(NarUnavailableError)
    const errors = (error as NarUnavailableError).errors
    expect(errors.length).toBeGreaterThan(0)
    expect(errors.every((e) => e instanceof NarNotFoundError)).toBe(true)
    expect((error as Error).message).not.toMatch(/no backend could deliver .*no backend could deliver/)
  })

  it('names every striped source by its own last error when the stripe has none left', async () => {
    const big = sample(12 << 20)
    // Each source serves its first two requests, then fails every one after.
    const failing = (name: string): NarBackend => {
      const inner = scripted(name, big.data, { ranged: true })
      let calls = 0
      return {
        name,
        fetch: async (h, o) => {
          if (++calls > 2) throw new NarBackendError(`${name}: HTTP 500 on request ${calls}`)
          return inner.fetch(h, o)
        },
      }
    }
    const stream = await resolveNar(big.hash, { backends: [failing('a'), failing('b')], size: big.data.length })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    // In the order they failed last, which the stripe's timing decides.
    expect((error as NarUnavailableError).errors).toHaveLength(2)
    expect((error as Error).message).toMatch(/\ba: a: HTTP 500 on request \d+\b/)
    expect((error as Error).message).toMatch(/\bb: b: HTTP 500 on request \d+\b/)
  })

  it('names every source when the last one left fails mid-stream too', async () => {
    const a = scripted('a', data, { failAt: 8192 })
    const b = scripted('b', data, { failAt: 16384, latencyMs: 30 })
    const stream = await resolveNar(hash, { backends: [a, b] })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    const errors = (error as NarUnavailableError).errors
    expect(errors.every((e) => e instanceof NarBackendError)).toBe(true)
    // b failed last, after a's failure had handed it the stream; a, asked once more, failed again.
    expect((error as Error).message).toMatch(/from byte 16384 \(b: .*; a: /)
  })
})

describe('resolveNar: verify first', () => {
  it('falls over invisibly from a corrupt copy and resolves only with a verified one', async () => {
    const corrupt = scripted('corrupt', data, { corruptAt: 10 })
    const good = scripted('good', data, { latencyMs: 50 })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [corrupt, good],
      size: data.length,
      verifyFirstBelow: 1024 * 1024,
      onEvent: (e) => events.push(e),
    })
    expect(stream.winner).toBe('good')
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(events.some((e) => e.type === 'fail' && e.error instanceof NarHashMismatchError)).toBe(true)
  })

  it('uses the size the winner announces when the FileSize is unknown', async () => {
    const corrupt = scripted('corrupt', data, { corruptAt: 10, announceSize: data.length })
    const good = scripted('good', data, { latencyMs: 50 })
    const stream = await resolveNar(hash, { backends: [corrupt, good], verifyFirstBelow: 1024 * 1024 })
    expect(stream.winner).toBe('good')
    await collect(stream)
  })

  it('starts over from byte 0 after a short copy, also when the next source failed once on the way', async () => {
    const short = scripted('short', data, { truncateAt: 50_000 })
    const good = scripted('good', data, { latencyMs: 20 })
    let calls = 0
    const flaky: NarBackend = {
      name: 'good',
      fetch: async (h, o) => {
        if (++calls === 2) throw new NarBackendError('good: HTTP 503, once')
        return good.fetch(h, o)
      },
    }
    const stream = await resolveNar(hash, { backends: [short, flaky], size: data.length, verifyFirstBelow: 1 << 20 })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
  })

  it('keeps the outage when a short copy leaves no source to start over from, as when streaming', async () => {
    for (const verifyFirstBelow of [0, 1 << 20]) {
      const first = scripted('a', data, { failAt: 8192 })
      let calls = 0
      // a resets at 8 KiB and answers 503 from then on; b, taking over, ends short.
      const a: NarBackend = {
        name: 'a',
        fetch: async (h, o) => {
          if (++calls > 1) throw new NarBackendError('a: HTTP 503')
          return first.fetch(h, o)
        },
      }
      const b = scripted('b', data, { latencyMs: 30, truncateAt: 50_000 })
      const error = await resolveNar(hash, { backends: [a, b], size: data.length, verifyFirstBelow })
        .then((stream) => collect(stream))
        .catch((e: unknown) => e)
      expect(error, `verifyFirstBelow ${verifyFirstBelow}`).toBeInstanceOf(NarUnavailableError)
      const errors = (error as NarUnavailableError).errors
      expect(errors.some((e) => e instanceof NarSizeMismatchError)).toBe(true)
      expect(errors.some((e) => e instanceof NarBackendError)).toBe(true)
    }
  })

  it('rejects with NarHashMismatchError when every source fails verification', async () => {
    const backends = [scripted('a', data, { corruptAt: 1 }), scripted('b', data, { corruptAt: 2, latencyMs: 20 })]
    await expect(
      resolveNar(hash, { backends, size: data.length, verifyFirstBelow: data.length }),
    ).rejects.toBeInstanceOf(NarHashMismatchError)
  })

  it('streams larger files without waiting for the end', async () => {
    const slow = scripted('slow', data, { chunkDelayMs: 5, chunkSize: 4096 })
    const stream = await resolveNar(hash, { backends: [slow], size: data.length, verifyFirstBelow: data.length - 1 })
    expect(slow.yielded).toBeLessThan(data.length)
    await collect(stream)
  })
})

describe('resolveNar: cancellation', () => {
  it('cancels every backend when the consumer leaves the loop early', async () => {
    using timers = trackTimers()
    const a = scripted('a', data, { chunkDelayMs: 2 })
    const b = scripted('b', data, { chunkDelayMs: 50 })
    const stream = await resolveNar(hash, { backends: [a, b] })
    for await (const chunk of stream) {
      expect(chunk.length).toBeGreaterThan(0)
      break
    }
    expect(a.calls[0]!.signal.aborted).toBe(true)
    expect(b.calls[0]!.signal.aborted).toBe(true)
    await delay(10)
    expect(a.closed + b.closed).toBe(2)
    expect(timers.live()).toBe(0)
  })

  it('rejects with signal.reason on an abort mid-stream and leaves no handle behind', async () => {
    using timers = trackTimers()
    const before = handles()
    const controller = new AbortController()
    const a = scripted('a', data, { chunkDelayMs: 5, chunkSize: 1024 })
    const b = scripted('b', data, { stallAt: 0 })
    const stream = await resolveNar(hash, { backends: [a, b], signal: controller.signal, stallTimeoutMs: 10_000 })
    const reason = new Error('user went away')
    const read = (async () => {
      for await (const _ of stream) {
        if (stream.bytesRead >= 8192) controller.abort(reason)
      }
    })()
    await expect(read).rejects.toBe(reason)
    expect(a.calls[0]!.signal.aborted).toBe(true)
    await delay(20)
    expect(a.closed).toBe(1)
    expect(timers.live()).toBe(0)
    expect(handles()).toBe(before)
  })

  it('rejects with signal.reason when aborted during the race', async () => {
    const controller = new AbortController()
    const slow = scripted('slow', data, { latencyMs: 1000 })
    const events: NarEvent[] = []
    const pending = resolveNar(hash, { backends: [slow], signal: controller.signal, onEvent: (e) => events.push(e) })
    const reason = new Error('stop')
    setTimeout(() => controller.abort(reason), 20)
    await expect(pending).rejects.toBe(reason)
    expect(slow.calls[0]!.signal.aborted).toBe(true)
    expect(events.map((e) => `${e.type}:${e.backend}`)).toEqual(['start:slow', 'abort:slow'])
  })

  it('rejects at once with an already aborted signal', async () => {
    const reason = new Error('already')
    const backend = scripted('a', data)
    await expect(resolveNar(hash, { backends: [backend], signal: AbortSignal.abort(reason) })).rejects.toBe(reason)
    expect(backend.calls).toHaveLength(0)
  })

  it('leaves no timers behind after a race with stall timers and hedges', async () => {
    using timers = trackTimers()
    const stream = await resolveNar(hash, {
      backends: [scripted('a', data), scripted('b', data, { latencyMs: 100 }), scripted('c', data)],
      hedge: { c: 500 },
      stallTimeoutMs: 5000,
    })
    await collect(stream)
    expect(timers.live()).toBe(0)
  })

  it('closes the body of a loser that answers only after it was aborted', async () => {
    let closed = false
    const deaf: NarBackend = {
      name: 'deaf',
      async fetch() {
        await delay(80)
        const body = (async function* () {
          try {
            yield new Uint8Array(1)
          } finally {
            closed = true
          }
        })()
        await body.next()
        return { offset: 0, body }
      },
    }
    const stream = await resolveNar(hash, { backends: [scripted('a', data), deaf] })
    await collect(stream)
    await delay(150)
    expect(closed).toBe(true)
  })

  it('raises no unhandled rejection when losers fail after the win', async () => {
    const unhandled: unknown[] = []
    const onUnhandled = (e: unknown): void => void unhandled.push(e)
    process.on('unhandledRejection', onUnhandled)
    try {
      const late = scripted('late', data, { latencyMs: 30, fail: new Error('late failure') })
      const stream = await resolveNar(hash, { backends: [scripted('a', data), late] })
      await collect(stream)
      await delay(60)
      expect(unhandled).toEqual([])
    } finally {
      process.off('unhandledRejection', onUnhandled)
    }
  })
})

/** Collects the unhandled rejections raised while `run` runs and shortly after. */
async function unhandledDuring(run: () => Promise<void>): Promise<unknown[]> {
  const unhandled: unknown[] = []
  const onUnhandled = (e: unknown): void => void unhandled.push(e)
  process.on('unhandledRejection', onUnhandled)
  try {
    await run()
    await delay(30)
    return unhandled
  } finally {
    process.off('unhandledRejection', onUnhandled)
  }
}

describe('resolveNar: the race, with hand-written doubles', () => {
  const chunks = split(data, 8192)

  it('closes the losers iterators by the time it resolves, and leaves the winner alone', async () => {
    const loser = chunked('loser', [new Uint8Array(0), ...chunks], { chunkMs: 300 })
    const winner = chunked('winner', chunks)
    const stream = await resolveNar(hash, { backends: [loser, winner] })
    expect(loser.calls[0]!.signal.aborted).toBe(true)
    expect(loser.returned).toBe(1)
    expect(winner.calls[0]!.signal.aborted).toBe(false)
    expect(winner.returned).toBe(0)
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
  })

  it('never counts an empty chunk as the first byte', async () => {
    const empties = chunked('empties', [new Uint8Array(0), new Uint8Array(0), new Uint8Array(0)])
    const late = chunked('late', [new Uint8Array(0), ...chunks], { fetchMs: 30 })
    const stream = await resolveNar(hash, { backends: [empties, late] })
    expect(stream.winner).toBe('late')
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    const error = await resolveNar(hash, { backends: [empties] }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    expect((error as NarUnavailableError).errors[0]).toBeInstanceOf(NarBackendError)
  })

  it('takes a source that yields only empty chunks, without end, for a stall rather than hanging', async () => {
    const empties = (name: string, first?: Uint8Array): NarBackend => ({
      name,
      fetch: async () => ({
        offset: 0,
        body: (async function* () {
          if (first) yield first
          for (;;) yield new Uint8Array(0)
        })(),
      }),
    })
    const error = await resolveNar(hash, { backends: [empties('race')], stallTimeoutMs: 50 }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    expect((error as NarUnavailableError).errors[0]).toBeInstanceOf(NarStallError)

    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [empties('stream', data.subarray(0, 1000)), chunked('backup', chunks, { fetchMs: 5 })],
      stallTimeoutMs: 50,
      onEvent: (e) => events.push(e),
    })
    expect(stream.winner).toBe('stream')
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(stream.sources).toEqual(['stream', 'backup'])
    expect(events.find((e) => e.type === 'fail')?.error).toBeInstanceOf(NarStallError)
  })

  it('gives each backend its own signal, tied to options.signal', async () => {
    const controller = new AbortController()
    const a = chunked('a', chunks, { fetchMs: 1000 })
    const b = chunked('b', chunks, { fetchMs: 1000 })
    const pending = resolveNar(hash, { backends: [a, b], signal: controller.signal })
    await delay(10)
    const [sa, sb] = [a.calls[0]!.signal, b.calls[0]!.signal]
    expect(sa).not.toBe(sb)
    expect(sa).not.toBe(controller.signal)
    const reason = new Error('caller left')
    controller.abort(reason)
    await expect(pending).rejects.toBe(reason)
    expect(sa.reason).toBe(reason)
    expect(sb.reason).toBe(reason)
  })

  it('is not held up by a backend that ignores its signal, and an abort still rejects at once', async () => {
    using timers = trackTimers()
    const deaf = chunked('deaf', chunks, { deaf: true })
    const stream = await resolveNar(hash, { backends: [deaf, chunked('good', chunks, { fetchMs: 10 })] })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(deaf.calls[0]!.signal.aborted).toBe(true)

    const controller = new AbortController()
    const pending = resolveNar(hash, { backends: [deaf], signal: controller.signal })
    controller.abort()
    await expect(within(1000, pending)).rejects.toBe(controller.signal.reason)
    expect((controller.signal.reason as Error).name).toBe('AbortError')
    expect(timers.live()).toBe(0)
  })

  it('counts a fetch() answer of null, a body of null and a sync throw from next() as failures', async () => {
    const nothing: NarBackend = { name: 'nothing', fetch: async () => null as never }
    const noBody: NarBackend = { name: 'no-body', fetch: async () => ({ offset: 0, body: null }) as never }
    const throwingNext: NarBackend = {
      name: 'throwing-next',
      fetch: async () => ({
        offset: 0,
        body: {
          [Symbol.asyncIterator]: () => ({
            next(): Promise<IteratorResult<Uint8Array>> {
              throw new Error('sync throw')
            },
          }),
        },
      }),
    }
    // A fetch() that answers without a promise is odd but not wrong.
    const sync: NarBackend = {
      name: 'sync',
      fetch: (() => ({ offset: 0, body: (async function* () { yield* chunks })() })) as never,
    }
    const unhandled = await unhandledDuring(async () => {
      const error = await resolveNar(hash, { backends: [nothing, noBody, throwingNext] }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(NarUnavailableError)
      expect((error as NarUnavailableError).errors).toHaveLength(3)
      const stream = await resolveNar(hash, { backends: [nothing, noBody, throwingNext, sync] })
      expect(stream.winner).toBe('sync')
      expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    })
    expect(unhandled).toEqual([])
  })

  it('reports the events with type, backend, ms and bytes, from start to done', async () => {
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [
        chunked('a', chunks, { fetchMs: 60 }),
        chunked('b', chunks, { fetchMs: 300 }),
        chunked('h', chunks, { fetchMs: 300 }),
      ],
      hedge: { h: 20 },
      onEvent: (e) => events.push(e),
    })
    await collect(stream)
    for (const e of events) {
      expect(Object.keys(e).sort()).toEqual(['backend', 'bytes', 'ms', 'type'])
      expect(typeof e.ms).toBe('number')
    }
    const ms = events.map((e) => e.ms)
    expect(ms).toEqual([...ms].sort((x, y) => x - y))
    const seen = events.map((e) => `${e.type}:${e.backend}`)
    expect(seen.slice(0, 2)).toEqual(['start:a', 'start:b'])
    expect(seen).toContain('start:h')
    expect(events.find((e) => e.backend === 'h' && e.type === 'start')!.ms).toBeGreaterThanOrEqual(19)
    expect(seen.indexOf('first-byte:a')).toBeLessThan(seen.indexOf('win:a'))
    expect(seen).toContain('abort:b')
    expect(seen).toContain('abort:h')
    expect(seen.at(-1)).toBe('done:a')
    expect(events.at(-1)!.bytes).toBe(data.length)
    expect(events.find((e) => e.type === 'win')!.bytes).toBe(0)
  })

  it('leaves no abort listener on options.signal after many downloads', async () => {
    const controller = new AbortController()
    for (let i = 0; i < 5; i++) {
      const backends = [chunked('a', chunks), chunked('b', chunks, { fetchMs: 50 })]
      const stream = await resolveNar(hash, { backends, signal: controller.signal })
      for await (const _ of stream) break
      await collect(await resolveNar(hash, { backends: [chunked('a', chunks)], signal: controller.signal, stallTimeoutMs: 1000 }))
    }
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
  })
})

describe('resolveNar: verification and fail-over, with hand-written doubles', () => {
  const chunks = split(data, 4096)

  it('never hands out a byte past the FileSize', async () => {
    const stream = await resolveNar(hash, { backends: [chunked('long', chunks)], size: 10_000 })
    let delivered = 0
    const error = await (async () => {
      for await (const chunk of stream) delivered += chunk.length
    })().catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarSizeMismatchError)
    expect(delivered).toBeLessThanOrEqual(10_000)
    expect(stream.bytesRead).toBe(delivered)
  })

  it('continues from a source that starts below the offset it was asked for', async () => {
    let calls = 0
    const dies: NarBackend = {
      name: 'dies',
      async fetch(h, o) {
        calls++
        const source = await chunked('dies', chunks).fetch(h, o)
        const inner = source.body[Symbol.asyncIterator]()
        let sent = 0
        source.body = {
          [Symbol.asyncIterator]: () => ({
            async next() {
              if (sent >= 5) throw new Error('connection reset')
              sent++
              return inner.next()
            },
          }),
        }
        return source
      },
    }
    const aligned = chunked('aligned', split(data, 1000), { fetchMs: 20, startAt: (asked) => asked - (asked % 16_384) })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, { backends: [dies, aligned], size: data.length, onEvent: (e) => events.push(e) })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(calls).toBe(1)
    expect(aligned.calls.at(-1)!.offset).toBe(5 * 4096)
    expect(stream.winner).toBe('dies')
    expect(stream.sources).toEqual(['dies', 'aligned'])
    expect(stream.bytesRead).toBe(data.length)
    const failover = events.find((e) => e.type === 'failover')!
    expect(failover).toMatchObject({ backend: 'aligned', bytes: 5 * 4096 })
    const fail = events.find((e) => e.type === 'fail')!
    expect(fail.backend).toBe('dies')
    expect((fail.error as NarBackendError).cause).toMatchObject({ message: 'connection reset' })
  })

  it('skips many small chunks of a source that answers from 0', async () => {
    const dies = scripted('dies', data, { failAt: 40_000 })
    const fromZero = chunked('from-zero', split(data, 100), { fetchMs: 20, startAt: () => 0 })
    const stream = await resolveNar(hash, { backends: [dies, fromZero] })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(stream.sources).toEqual(['dies', 'from-zero'])
  })

  it('does not fail over to a source that announces another size, and throws the cause', async () => {
    const dies = scripted('dies', data, { failAt: 8192 })
    const liar = chunked('liar', chunks, { fetchMs: 20, size: data.length + 1 })
    const stream = await resolveNar(hash, { backends: [dies, liar], size: data.length })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    const [first, second] = (error as NarUnavailableError).errors
    expect(first).toBeInstanceOf(NarBackendError)
    expect((first as Error).message).toMatch(/connection reset/)
    expect(second).toBeInstanceOf(NarSizeMismatchError)
  })

  it('wraps a plain mid-stream error in NarBackendError with the error as cause, among the errors', async () => {
    const cause = new Error('socket hang up')
    const once: NarBackend = {
      name: 'once',
      fetch: async () => ({
        offset: 0,
        body: (async function* () {
          yield data.subarray(0, 100)
          throw cause
        })(),
      }),
    }
    const stream = await resolveNar(hash, { backends: [once] })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarUnavailableError)
    expect((error as NarUnavailableError).errors[0]).toMatchObject({ name: 'NarBackendError', code: 'NARRACE_BACKEND', cause })
  })
})

describe('resolveNar: verify first, with hand-written doubles', () => {
  const chunks = split(data, 4096)

  it('rejects a FileSize smaller than the file instead of starting over without end', async () => {
    const a = chunked('a', chunks, { fetchMs: 1 })
    const b = chunked('b', chunks, { fetchMs: 1 })
    const error = await within(2000, resolveNar(hash, { backends: [a, b], size: 100, verifyFirstBelow: 1 << 20 })).catch(
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(NarSizeMismatchError)
    expect(a.calls.length + b.calls.length).toBeLessThanOrEqual(4)
  })

  it('rejects the iteration with signal.reason on an abort after it resolved', async () => {
    const controller = new AbortController()
    const stream = await resolveNar(hash, {
      backends: [chunked('a', chunks)],
      signal: controller.signal,
      size: data.length,
      verifyFirstBelow: data.length,
    })
    const reason = new Error('gone')
    controller.abort(reason)
    await expect(collect(stream)).rejects.toBe(reason)
  })

  it('has received the whole file before it resolves', async () => {
    const a = chunked('a', chunks, { chunkMs: 1 })
    let done = false
    const wrapped: NarBackend = {
      name: 'a',
      async fetch(h, o) {
        const source = await a.fetch(h, o)
        const inner = source.body[Symbol.asyncIterator]()
        source.body = {
          [Symbol.asyncIterator]: () => ({
            async next() {
              const step = await inner.next()
              if (step.done) done = true
              return step
            },
          }),
        }
        return source
      },
    }
    const stream = await resolveNar(hash, { backends: [wrapped], size: data.length, verifyFirstBelow: data.length })
    expect(done).toBe(true)
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
  })
})

describe('resolveNar: the consumer', () => {
  const chunks = split(data, 4096)

  it('serves next() calls made before the last one settled, in order', async () => {
    const stream = await resolveNar(hash, { backends: [chunked('a', chunks, { chunkMs: 1 })] })
    const iterator = stream[Symbol.asyncIterator]()
    const results = await within(2000, Promise.all([iterator.next(), iterator.next(), iterator.next()]))
    expect(Buffer.concat(results.map((r) => r.value as Uint8Array)).equals(data.subarray(0, 3 * 4096))).toBe(true)
    await iterator.return?.()
  })

  it('ends a pending next() when the consumer calls return(), even on a source that ignores its signal', async () => {
    const deafBody: NarBackend = {
      name: 'deaf-body',
      fetch: async () => ({
        offset: 0,
        body: (async function* () {
          yield data.subarray(0, 100)
          await new Promise<never>(() => {})
        })(),
      }),
    }
    const unhandled = await unhandledDuring(async () => {
      const stream = await resolveNar(hash, { backends: [deafBody] })
      const iterator = stream[Symbol.asyncIterator]()
      expect((await iterator.next()).done).toBe(false)
      const pending = iterator.next()
      await delay(5)
      expect(await iterator.return!()).toEqual({ done: true, value: undefined })
      expect(await within(1000, pending)).toEqual({ done: true, value: undefined })
      expect(await iterator.next()).toEqual({ done: true, value: undefined })
    })
    expect(unhandled).toEqual([])
  })

  it('leaves no timers behind after a stall fail-over, a verify-first restart or an abort during a hedge delay', async () => {
    using timers = trackTimers()
    const stalls = scripted('stalls', data, { stallAt: 20_000 })
    await collect(await resolveNar(hash, { backends: [stalls, chunked('backup', chunks, { fetchMs: 5 })], stallTimeoutMs: 50 }))
    const corrupt = scripted('corrupt', data, { corruptAt: 7 })
    await collect(
      await resolveNar(hash, {
        backends: [corrupt, chunked('good', chunks, { fetchMs: 5 })],
        size: data.length,
        verifyFirstBelow: data.length,
        stallTimeoutMs: 5000,
      }),
    )
    const controller = new AbortController()
    const pending = resolveNar(hash, {
      backends: [chunked('hedged', chunks)],
      hedge: { hedged: 5000 },
      signal: controller.signal,
    })
    await delay(10)
    controller.abort()
    await expect(pending).rejects.toBe(controller.signal.reason)
    expect(timers.live()).toBe(0)
  })

  it('can be iterated only once', async () => {
    const stream = await resolveNar(hash, { backends: [chunked('a', chunks)] })
    await collect(stream)
    expect(() => stream[Symbol.asyncIterator]()).toThrow(NarraceError)
  })

  it('leaves nothing behind when the consumer breaks on the first chunk', async () => {
    using timers = trackTimers()
    const before = handles()
    const events: NarEvent[] = []
    const a = chunked('a', chunks, { chunkMs: 1 })
    const b = scripted('b', data, { stallAt: 0 })
    const unhandled = await unhandledDuring(async () => {
      const stream = await resolveNar(hash, { backends: [a, b], stallTimeoutMs: 5000, onEvent: (e) => events.push(e) })
      for await (const _ of stream) break
      expect(stream.bytesRead).toBe(4096)
    })
    expect(unhandled).toEqual([])
    expect(a.calls[0]!.signal.aborted).toBe(true)
    expect(a.returned).toBe(1)
    expect(b.closed).toBe(1)
    expect(events.filter((e) => e.type === 'abort').map((e) => e.backend).sort()).toEqual(['a', 'b'])
    expect(events.some((e) => e.type === 'done')).toBe(false)
    expect(timers.live()).toBe(0)
    expect(handles()).toBe(before)
  })
})

describe('resolveNar: bounds on slow and endless sources', () => {
  /** A source that sends `bytes` bytes every `everyMs`, from `offset`, without end unless `data` runs out. */
  function trickle(name: string, bytes: number, everyMs: number, source: Uint8Array = data): NarBackend {
    return {
      name,
      fetch: async (_h, options) => {
        const offset = options.offset ?? 0
        return {
          offset,
          body: (async function* () {
            for (let at = offset; at < source.length; at += bytes) {
              yield source.subarray(at, at + bytes)
              await delay(everyMs, undefined, { signal: options.signal })
            }
          })(),
        }
      },
    }
  }

  it('fails over from a source under minBytesPerSecond, though it never goes stallTimeoutMs without a byte', async () => {
    const events: NarEvent[] = []
    const slow = trickle('trickle', 8, 20)
    const stream = await resolveNar(hash, {
      backends: [slow, chunked('backup', split(data, 4096), { fetchMs: 40 })],
      stallTimeoutMs: 200,
      minBytesPerSecond: 1024,
      onEvent: (e) => events.push(e),
    })
    expect(stream.winner).toBe('trickle')
    expect(Buffer.from(await within(5000, collect(stream))).equals(data)).toBe(true)
    expect(stream.sources).toEqual(['trickle', 'backup'])
    const fail = events.find((e) => e.type === 'fail' && e.backend === 'trickle')
    expect(fail?.error).toBeInstanceOf(NarStallError)
    expect((fail?.error as Error).message).toMatch(/minimum rate/)
  })

  it('keeps a slow source above minBytesPerSecond, and one of any rate with minBytesPerSecond 0', async () => {
    const small = data.subarray(0, 256)
    const steady = trickle('steady', 64, 10, data.subarray(0, 2048))
    const stream = await resolveNar(hashOf(data.subarray(0, 2048)), {
      backends: [steady],
      stallTimeoutMs: 100,
      minBytesPerSecond: 1024,
    })
    expect((await within(5000, collect(stream))).length).toBe(2048)
    // 800 bytes a second: under the default minimum.
    const slow = trickle('slow', 16, 20, small)
    const unbounded = await resolveNar(hashOf(small), { backends: [slow], stallTimeoutMs: 100, minBytesPerSecond: 0 })
    expect((await within(10_000, collect(unbounded))).length).toBe(small.length)
  })

  it('cuts a file of unknown size at maxNarBytes with NarSizeMismatchError', async () => {
    const endless: NarBackend = {
      name: 'endless',
      fetch: async () => ({
        offset: 0,
        body: (async function* () {
          for (;;) yield new Uint8Array(4096)
        })(),
      }),
    }
    const stream = await resolveNar(hash, { backends: [endless], maxNarBytes: 100_000 })
    let delivered = 0
    const error = await (async () => {
      for await (const chunk of stream) delivered += chunk.length
    })().catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarSizeMismatchError)
    expect(isNarMismatch(error)).toBe(true)
    expect(error).toMatchObject({ expected: 100_000, sources: ['endless'] })
    expect((error as Error).message).toMatch(/maxNarBytes/)
    expect(delivered).toBeLessThanOrEqual(100_000)
  })

  it('drops a source that announces more than maxNarBytes before it sends a byte', async () => {
    const big = scripted('big', data, { announceSize: 1 << 30 })
    const error = await resolveNar(hash, { backends: [big], maxNarBytes: 1 << 20 }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarSizeMismatchError)
    expect(error).toMatchObject({ expected: 1 << 20, actual: 1 << 30 })
  })

  it('reports a verify-first start over as restart, not failover', async () => {
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [scripted('corrupt', data, { corruptAt: 10 }), scripted('good', data, { latencyMs: 50 })],
      size: data.length,
      verifyFirstBelow: data.length,
      onEvent: (e) => events.push(e),
    })
    await collect(stream)
    expect(events.find((e) => e.type === 'restart')).toMatchObject({ backend: 'good', bytes: 0 })
    expect(events.some((e) => e.type === 'failover')).toBe(false)
  })
})
