import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { InvalidNarHashError, NarNotFoundError } from '@narrace/core'
import { Agent } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startCacheServer, type CacheServer } from '../../../test/support/cache-server.js'
import { fixtures } from '../../../test/fixtures/index.js'
import { walkClosure, type ClosureEntry, type ClosureMiss } from '../src/index.js'

const trustedKeys = [fixtures.publicKey]
const diamond = ['diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom'].map((n) => fixtures.path(n))
const cyclePath = (name: string) => fixtures.cycle.paths.find((p) => p.name === name)!

async function collect(walk: AsyncIterable<ClosureEntry>): Promise<string[]> {
  const seen: string[] = []
  for await (const entry of walk) seen.push(entry.storePath)
  return seen
}

describe('walkClosure', () => {
  let main: CacheServer
  let cycle: CacheServer
  let dispatcher: Agent

  beforeAll(async () => {
    main = await startCacheServer({ root: fixtures.cacheDir })
    cycle = await startCacheServer({ root: fixtures.cycle.cacheDir })
    dispatcher = new Agent()
  })
  afterEach(() => {
    for (const s of [main, cycle]) {
      s.clearFaults()
      s.requests.length = 0
      s.resetMaxInFlight()
    }
  })
  afterAll(async () => {
    await dispatcher.close()
    await Promise.all([main.close(), cycle.close()])
  })

  it('visits each path of a diamond once, breadth-first, asking for each narinfo once', async () => {
    const entries: ClosureEntry[] = []
    for await (const entry of walkClosure([diamond[0]!.storePath], { caches: [main.url], trustedKeys, dispatcher })) {
      entries.push(entry)
    }
    expect(entries.map((e) => e.storePath)).toHaveLength(4)
    expect(entries[0]!.storePath).toBe(diamond[0]!.storePath)
    expect(entries.at(-1)!.storePath).toBe(diamond[3]!.storePath)
    expect(new Set(entries.map((e) => e.storePath))).toEqual(new Set(diamond.map((p) => p.storePath)))
    expect(entries.every((e) => e.cache === main.url && e.narInfo.storePath === e.storePath)).toBe(true)
    expect(main.requests.map((r) => r.path).sort()).toEqual(diamond.map((p) => `/${p.hashPart}.narinfo`).sort())
  })

  it('takes hash parts and basenames, and a path named twice is walked once', async () => {
    const [top, left] = diamond
    const seen = await collect(
      walkClosure([top!.hashPart, `${left!.hashPart}-diamond-left`, top!.storePath], { caches: [main.url], dispatcher }),
    )
    expect(seen.sort()).toEqual(diamond.map((p) => p.storePath).sort())
    expect(main.requests).toHaveLength(4)
  })

  it('rejects input that is not a store path or hash part before any request', async () => {
    for (const bad of ['/usr/bin/hello', 'nope', '/nix/store/short-x']) {
      await expect(collect(walkClosure([bad], { caches: [main.url], dispatcher }))).rejects.toBeInstanceOf(
        InvalidNarHashError,
      )
    }
    expect(main.requests).toHaveLength(0)
  })

  it('keeps at most `concurrency` lookups in flight', async () => {
    const root = fixtures.path('closure-root')
    main.setFaults({ firstByteDelayMs: 20 })
    const seen = await collect(walkClosure([root.storePath], { caches: [main.url], dispatcher, concurrency: 4 }))
    expect(seen).toHaveLength(1 + root.references.length)
    expect(new Set(seen).size).toBe(seen.length)
    expect(main.maxInFlight).toBeGreaterThan(1)
    expect(main.maxInFlight).toBeLessThanOrEqual(4)
  })

  it('loses no path when lookups settle while the consumer is busy', async () => {
    const root = fixtures.path('closure-root')
    const seen: string[] = []
    for await (const entry of walkClosure([root.storePath], { caches: [main.url], dispatcher })) {
      seen.push(entry.storePath)
      // Every lookup in flight settles during this pause, so they are all ready at once.
      await new Promise((resolve) => setTimeout(resolve, 30))
    }
    expect(new Set(seen).size).toBe(1 + root.references.length)
    expect(seen).toHaveLength(1 + root.references.length)
  })

  it('is safe with cycles and self-references', async () => {
    const closure = ['cycle-root', 'cycle-a', 'cycle-b', 'cycle-self'].map((n) => cyclePath(n).storePath)
    const seen = await collect(
      walkClosure([cyclePath('cycle-root').storePath], { caches: [cycle.url], trustedKeys, dispatcher }),
    )
    expect(seen.sort()).toEqual(closure.sort())
    expect(cycle.requests).toHaveLength(4)
  })

  it('reports a path no cache has to onMissing and walks on', async () => {
    const misses: ClosureMiss[] = []
    const seen = await collect(
      walkClosure([cyclePath('cycle-dangling').storePath, cyclePath('cycle-a').storePath], {
        caches: [cycle.url, main.url],
        dispatcher,
        onMissing: (miss) => misses.push(miss),
      }),
    )
    expect(seen.sort()).toEqual(['cycle-dangling', 'cycle-a', 'cycle-b'].map((n) => cyclePath(n).storePath).sort())
    expect(misses.map((m) => m.storePath)).toEqual([fixtures.cycle.missing.storePath])
    expect(misses[0]!.error).toBeInstanceOf(NarNotFoundError)
  })

  it('without onMissing, yields the rest, ends normally and lists the missing paths in `missing`', async () => {
    main.setFaults({ status: 404 }, `${diamond[1]!.hashPart}.narinfo`)
    const seen: string[] = []
    const walk = walkClosure([diamond[0]!.storePath], { caches: [main.url], dispatcher })
    for await (const entry of walk) seen.push(entry.storePath)
    expect(seen.sort()).toEqual([diamond[0], diamond[2], diamond[3]].map((p) => p!.storePath).sort())
    expect(walk.missing).toMatchObject([{ storePath: diamond[1]!.storePath }])
    expect(walk.missing[0]!.error).toBeInstanceOf(NarNotFoundError)
  })

  it('reads a file with one store path or hash part a line', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'narrace-list-'))
    try {
      const list = join(dir, 'subscription.txt')
      await writeFile(list, `# my closures\n${diamond[1]!.storePath}\n\n${diamond[2]!.hashPart}  # right\n`)
      const seen = await collect(walkClosure([list], { caches: [main.url], dispatcher }))
      expect(seen.sort()).toEqual([diamond[1], diamond[2], diamond[3]].map((p) => p!.storePath).sort())
      await writeFile(list, `${diamond[1]!.storePath}\nnot-a-path\n`)
      await expect(collect(walkClosure([list], { caches: [main.url], dispatcher }))).rejects.toThrow(/subscription.txt:2/)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('a path whose only narinfo has a bad signature is reported like a missing one', async () => {
    const bottom = diamond[3]!
    const text = fixtures.narinfoText('diamond-bottom').replace(/^NarSize: .*$/m, 'NarSize: 1')
    main.setFaults({ body: text }, `${bottom.hashPart}.narinfo`)
    const misses: ClosureMiss[] = []
    const seen = await collect(
      walkClosure([diamond[0]!.storePath], { caches: [main.url], trustedKeys, dispatcher, onMissing: (m) => misses.push(m) }),
    )
    expect(seen).toHaveLength(3)
    expect(misses.map((m) => m.storePath)).toEqual([bottom.storePath])
  })

  it('stops on abort with the signal reason, and leaving the loop early cancels the lookups', async () => {
    main.setFaults({ firstByteDelayMs: 5000 })
    const controller = new AbortController()
    const walk = collect(walkClosure([diamond[0]!.storePath], { caches: [main.url], dispatcher, signal: controller.signal }))
    await expect.poll(() => main.requests.length).toBe(1)
    controller.abort(new Error('enough'))
    await expect(walk).rejects.toThrow('enough')

    const late = new AbortController()
    const entries = walkClosure([diamond[3]!.storePath], { caches: [main.url], dispatcher, signal: late.signal })
    main.clearFaults()
    await expect(
      (async () => {
        for await (const _ of entries) late.abort(new Error('too late'))
      })(),
    ).rejects.toThrow('too late')

    main.requests.length = 0
    const [top, left] = diamond
    main.setFaults({ firstByteDelayMs: 5000 }, `${left!.hashPart}.narinfo`)
    for await (const entry of walkClosure([top!.storePath, left!.storePath], { caches: [main.url], dispatcher })) {
      expect(entry.storePath).toBe(top!.storePath)
      break
    }
    // Both lookups start at once, on two connections: they may reach the server in either order.
    const byPath = (a: [string, boolean | undefined], b: [string, boolean | undefined]): number => a[0].localeCompare(b[0])
    const expected: [string, boolean][] = [
      [`/${top!.hashPart}.narinfo`, true],
      [`/${left!.hashPart}.narinfo`, false],
    ]
    await expect
      .poll(() => main.requests.map((r): [string, boolean | undefined] => [r.path, r.completed]).sort(byPath))
      .toEqual(expected.sort(byPath))
  })
})
