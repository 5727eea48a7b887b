import { setTimeout as delay } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { NarHashMismatchError, NarStallError, resolveNar, type NarBackend, type NarEvent } from '../src/index.js'
import { chunked, collect, distinctBytes, handles, sample, scripted, split, trackTimers, within, type Scripted } from './backends.js'

/** The byte ranges each backend was asked for, after the first (open-ended) race request. */
function ranges(backend: Scripted): [number, number | undefined][] {
  return backend.calls.map((c) => [c.offset, c.end])
}

/** Checks that the ranged requests never overlap and never ask for nothing. */
function expectDisjoint(backends: Scripted[], size: number): void {
  const asked = backends.flatMap((b) => ranges(b)).filter(([, end]) => end !== undefined) as [number, number][]
  for (const [start, end] of asked) {
    expect(end).toBeGreaterThan(start)
    expect(end).toBeLessThanOrEqual(size)
  }
}

describe('resolveNar: striping', () => {
  it('spreads a large file over every source that serves ranges, byte-exact at every boundary', async () => {
    // 1 MiB + 3 bytes in 64 KiB segments: the last one is short, and none is empty.
    const { data, hash } = sample((1 << 20) + 3)
    const backends = ['a', 'b', 'c'].map((name, i) => scripted(name, data, { ranged: true, chunkSize: 4096, chunkDelayMs: i === 0 ? 0 : 1 }))
    const stream = await resolveNar(hash, {
      backends,
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 128 * 1024,
    })
    expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
    expect([...stream.sources].sort()).toEqual(['a', 'b', 'c'])
    expectDisjoint(backends, data.length)
    for (const b of backends) expect(b.calls.slice(1).every((c) => c.end !== undefined)).toBe(true)
  })

  it('cuts exact multiples of the segment size without an empty tail, and odd sizes without a lost byte', async () => {
    for (const size of [256 * 1024, 256 * 1024 + 1, 256 * 1024 - 1, 65_537]) {
      const { data, hash } = sample(size)
      const backends = ['a', 'b'].map((name) => scripted(name, data, { ranged: true, chunkSize: 1000 }))
      const stream = await resolveNar(hash, { backends, size, stripeAbove: 0, maxBufferBytes: 64 * 1024 })
      expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
      expectDisjoint(backends, size)
      // Nothing fetched twice: what the backends yielded is the file, give or take the opening race's loser.
      const ends = backends.flatMap((b) => b.calls.filter((c) => c.offset > 0).map((c) => c.end)).filter((e) => e !== undefined)
      expect(new Set(ends).size).toBe(ends.length)
    }
  })

  it('opens with a race for the first span only, and goes on from the same source when no other is left', async () => {
    const { data, hash } = sample(1 << 20)
    const only = scripted('only', data, { ranged: true, chunkSize: 4096 })
    const gone = scripted('gone', data, { ranged: true, missing: true })
    const stream = await resolveNar(hash, { backends: [gone, only], size: data.length, stripeAbove: 0, maxBufferBytes: 256 * 1024 })
    expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
    // The opening request stopped at an eighth of the file; the rest came over a second one, from there.
    expect(only.calls.map((c) => [c.offset, c.end])).toEqual([
      [0, data.length / 8],
      [data.length / 8, undefined],
    ])
    expect(gone.calls).toHaveLength(1)
  })

  it('starts the other connections of each source with the opening race, not a round trip after the win', async () => {
    const { data, hash } = sample(1 << 20)
    const backends = ['a', 'b'].map((name) => scripted(name, data, { ranged: true, latencyMs: 200, chunkSize: 4096 }))
    const asked: Record<string, number[]> = { a: [], b: [] }
    const t0 = performance.now()
    const timed = backends.map((b): NarBackend => ({
      name: b.name,
      fetch: (h, o) => {
        asked[b.name]!.push(performance.now() - t0)
        return b.fetch(h, o)
      },
    }))
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: timed,
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 1 << 20,
      onEvent: (e) => events.push(e),
    })
    // The race is won after 200 ms; long before, each source was asked for the opening span and for a later segment.
    const win = events.find((e) => e.type === 'win')!.ms
    expect(win).toBeGreaterThanOrEqual(150)
    for (const b of backends) {
      expect(b.calls[0]).toMatchObject({ offset: 0, end: data.length / 8 })
      expect(b.calls[1]!.offset).toBeGreaterThanOrEqual(data.length / 8)
      expect(asked[b.name]![1]).toBeLessThan(win - 100)
    }
    expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
    expectDisjoint(backends, data.length)
    // Only the race reports on a source before the win: one start each, and no failure.
    expect(events.filter((e) => e.type === 'start').map((e) => e.backend).sort()).toEqual(['a', 'b'])
    expect(events.filter((e) => e.type === 'fail')).toEqual([])
  })

  it('reports a source without the file once, though its early connection was asked too', async () => {
    const { data, hash } = sample(1 << 20)
    const gone = scripted('gone', data, { ranged: true, missing: true, latencyMs: 40 })
    const slow = scripted('slow', data, { ranged: true, latencyMs: 80, chunkSize: 4096 })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [gone, slow],
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 256 * 1024,
      onEvent: (e) => events.push(e),
    })
    expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
    expect(gone.calls.length).toBe(2)
    expect(events.filter((e) => e.type === 'fail').map((e) => e.backend)).toEqual(['gone'])
  })

  it('stays off with one source, with a small file, and with sources that do not serve ranges', async () => {
    const { data, hash } = sample(512 * 1024)
    const one = scripted('one', data, { ranged: true })
    await collect(await resolveNar(hash, { backends: [one], size: data.length, stripeAbove: 0 }))
    expect(one.calls).toHaveLength(1)

    const small = [scripted('a', data, { ranged: true }), scripted('b', data, { ranged: true, latencyMs: 20 })]
    await collect(await resolveNar(hash, { backends: small, size: data.length }))
    expect(small.map((b) => b.calls.length)).toEqual([1, 1])

    // A backend that says nothing of ranges is asked at most once for one, then used whole as before.
    const plain = [scripted('a', data, { chunkDelayMs: 1 }), scripted('b', data, { latencyMs: 20 })]
    const stream = await resolveNar(hash, { backends: plain, size: data.length, stripeAbove: 0, maxBufferBytes: 64 * 1024 })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    expect(stream.sources).toEqual(['a'])
    expect(plain[1]!.calls.length).toBeLessThanOrEqual(3)
  })

  it('hands the segments of a source that fails to the others, from the bytes already received', async () => {
    const { data, hash } = sample(1 << 20)
    const dies = scripted('dies', data, { ranged: true, chunkSize: 4096, failAt: 300_000 })
    const good = scripted('good', data, { ranged: true, chunkSize: 4096, chunkDelayMs: 1 })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [dies, good],
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 256 * 1024,
      onEvent: (e) => events.push(e),
    })
    expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
    expect(events.some((e) => e.type === 'fail' && e.backend === 'dies')).toBe(true)
    // Every failed request resumed from where it got to: beyond the race loser's first chunk, and what
    // a hedge may duplicate, no byte came twice.
    const twice = dies.yielded + good.yielded - distinctBytes([dies, good])
    expect(twice).toBeLessThanOrEqual(4096 + 128 * 1024)
  })

  it('goes on with a source whose connections were cut once, from the bytes already received', async () => {
    const { data, hash } = sample(1 << 20)
    let ranged = 0
    const inner = scripted('flaky', data, { ranged: true, chunkSize: 4096, chunkDelayMs: 1 })
    // Its first two ranged requests after the opening race are cut after 8 KiB; later ones go through.
    const flaky: NarBackend = {
      name: 'flaky',
      async fetch(h, o) {
        const source = await inner.fetch(h, o)
        if (o.end === undefined || o.offset === 0 || ++ranged > 2) return source
        const body = source.body
        source.body = (async function* () {
          let sent = 0
          for await (const chunk of body) {
            if (sent >= 8192) throw new Error('connection reset')
            sent += chunk.length
            yield chunk
          }
        })()
        return source
      },
    }
    const good = scripted('good', data, { ranged: true, chunkSize: 4096, chunkDelayMs: 1, latencyMs: 10 })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [flaky, good],
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 256 * 1024,
      onEvent: (e) => events.push(e),
    })
    expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
    expect(events.filter((e) => e.type === 'fail' && e.backend === 'flaky')).toHaveLength(2)
    expect(ranged).toBeGreaterThan(2)
    // What the cut requests received stays: each resumes where the cut one got to, 8 KiB further, and
    // no start is ever asked for again.
    const calls = [...inner.calls, ...good.calls].filter((c) => c.end !== undefined && c.offset > 0)
    const resumed = calls.filter((c) => c.offset % (128 * 1024) !== 0)
    expect(resumed).toHaveLength(2)
    for (const r of resumed) expect(calls.filter((c) => c.offset === r.offset - 8192)).toHaveLength(1)
  })

  it('hands the segment of a source that stalls to the others', async () => {
    const { data, hash } = sample(1 << 20)
    const stalls = scripted('stalls', data, { ranged: true, chunkSize: 4096, stallAt: 600_000 })
    const good = scripted('good', data, { ranged: true, chunkSize: 4096, chunkDelayMs: 1, latencyMs: 10 })
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [stalls, good],
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 256 * 1024,
      stallTimeoutMs: 100,
      onEvent: (e) => events.push(e),
    })
    expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
    expect(events.some((e) => e.type === 'fail' && e.backend === 'stalls' && e.error instanceof NarStallError)).toBe(true)
  })

  it('never lets the buffer grow past maxBufferBytes while the consumer does not read', async () => {
    const { data, hash } = sample(2 << 20)
    const backends = ['a', 'b', 'c'].map((name) => scripted(name, data, { ranged: true, chunkSize: 8192 }))
    const max = 256 * 1024
    const stream = await resolveNar(hash, { backends, size: data.length, stripeAbove: 0, maxBufferBytes: max })
    const iterator = stream[Symbol.asyncIterator]()
    const first = await iterator.next()
    await delay(300)
    // What arrived and was not read fits in the buffer (a hedge duplicates, but keeps one copy).
    expect(distinctBytes(backends) - (first.value as Uint8Array).length).toBeLessThanOrEqual(max)
    const rest = await within(10_000, collect({ [Symbol.asyncIterator]: () => iterator }))
    expect(Buffer.concat([first.value as Uint8Array, rest]).equals(data)).toBe(true)
  })

  it('leaves no socket, timer or body behind when aborted mid-stripe', async () => {
    using timers = trackTimers()
    const before = handles()
    const { data, hash } = sample(2 << 20)
    const backends = ['a', 'b'].map((name) => scripted(name, data, { ranged: true, chunkSize: 8192, chunkDelayMs: 1 }))
    const controller = new AbortController()
    const stream = await resolveNar(hash, {
      backends,
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 512 * 1024,
      signal: controller.signal,
      stallTimeoutMs: 5000,
    })
    const reason = new Error('caller left')
    const read = (async () => {
      for await (const _ of stream) if (stream.bytesRead > 300_000) controller.abort(reason)
    })()
    await expect(read).rejects.toBe(reason)
    await delay(30)
    for (const b of backends) for (const c of b.calls) expect(c.signal.aborted || b.closed >= 0).toBe(true)
    const open = backends.flatMap((b) => b.calls).filter((c) => !c.signal.aborted)
    // Only bodies that ended on their own may keep an unaborted signal.
    expect(open.every((c) => c.end !== undefined)).toBe(true)
    expect(timers.live()).toBe(0)
    expect(handles()).toBe(before)
  })

  it('blames the one lying mirror among three, strikes it, and delivers the right bytes', async () => {
    const { data, hash } = sample(1 << 20)
    // The liar wins the race, so the bad byte in the first segment surely comes from it.
    const liar = scripted('liar', data, { ranged: true, chunkSize: 4096, corruptAt: 10 })
    const honest = ['a', 'b'].map((name) => scripted(name, data, { ranged: true, chunkSize: 4096, latencyMs: 20 }))
    const events: NarEvent[] = []
    const stream = await resolveNar(hash, {
      backends: [honest[0]!, liar, honest[1]!],
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 128 * 1024,
      verifyFirstBelow: data.length,
      onEvent: (e) => events.push(e),
    })
    expect(Buffer.from(await collect(stream)).equals(data)).toBe(true)
    const blamed = events.filter((e) => e.type === 'fail' && e.error instanceof NarHashMismatchError)
    expect(blamed.map((e) => e.backend)).toEqual(['liar'])
    expect((blamed[0]!.error as NarHashMismatchError).sources).toEqual(['liar'])
    expect(events.some((e) => e.type === 'restart')).toBe(true)
  })

  it('names only the liar when a streamed striped copy fails', async () => {
    const { data, hash } = sample(1 << 20)
    const liar = scripted('liar', data, { ranged: true, chunkSize: 4096, corruptAt: 10 })
    const honest = ['a', 'b'].map((name) => scripted(name, data, { ranged: true, chunkSize: 4096, latencyMs: 20 }))
    const stream = await resolveNar(hash, {
      backends: [honest[0]!, liar, honest[1]!],
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 128 * 1024,
    })
    const error = await collect(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarHashMismatchError)
    expect((error as NarHashMismatchError).sources).toEqual(['liar'])
    expect(stream.winner).toBe('liar')
  })

  it('hedges the segment that holds up the front when its source is much slower', async () => {
    const { data, hash } = sample(1 << 20)
    const slow = chunked('slow', split(data, 4096), { chunkMs: 40 })
    const fast = scripted('fast', data, { ranged: true, chunkSize: 16 * 1024, latencyMs: 60 })
    // `slow` wins the race but serves no ranges: fast takes the rest, and hedges what slow holds.
    const started = Date.now()
    const stream = await resolveNar(hash, {
      backends: [slow, fast],
      size: data.length,
      stripeAbove: 0,
      maxBufferBytes: 256 * 1024,
    })
    expect(Buffer.from(await within(10_000, collect(stream))).equals(data)).toBe(true)
    // At 4 KiB per 40 ms alone, slow would take over 10 s.
    expect(Date.now() - started).toBeLessThan(5000)
    expect(stream.sources).toContain('fast')
    // The hedge asked for the rest of the first segment from where slow had got to, not for all of it.
    expect(fast.calls.some((c) => c.offset > 0 && c.offset < 128 * 1024 && c.end === 128 * 1024)).toBe(true)
  })
})
