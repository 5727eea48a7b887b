import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { resolveNar, type NarBackend, type NarSource } from '@narrace/core'
import { Closer } from '../caches.js'
import { makeNar } from '../data.js'
import { loadHttp, loadIndex, loadTorrent } from '../optional.js'
import type { Ratio, Row, Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer } from '../server.js'
import { spawnShapers, type RemoteShaper } from '../shaper-child.js'
import { MiB, formatSize, median, round } from '../stats.js'
import { startIpfsRig, startTracker } from './p2p.js'

const SIZE = 64 * MiB
/** Interleaved runs per variant: the two-mirror time moves by up to 40 ms from run to run on a shared machine. */
const RUNS = 5
const SEED = 1515
/** The stall timeout for the cut mirror: its connections are reset, so it matters little. */
const STALL_TIMEOUT_MS = 1000

/** One fetch() call of a recorded backend, and when its body was over. */
interface Call {
  backend: string
  offset: number
  end: number | undefined
  t0: number
  t1: number
}

/** One chunk a body yielded, in the order chunks arrived over every backend. */
interface Chunk {
  call: Call
  start: number
  length: number
}

/** A backend that records its calls and every chunk its bodies yield, for the bytes-fetched-twice count. */
function recorded(backend: NarBackend, calls: Call[], chunks: Chunk[]): NarBackend {
  return {
    name: backend.name,
    async fetch(hash, options) {
      const call: Call = { backend: backend.name, offset: options.offset ?? 0, end: options.end, t0: performance.now(), t1: Infinity }
      calls.push(call)
      let source: NarSource
      try {
        source = await backend.fetch(hash, options)
      } catch (error) {
        call.t1 = performance.now()
        throw error
      }
      const iterable = source.body
      async function* body(): AsyncGenerator<Uint8Array> {
        let at = source.offset
        try {
          for await (const chunk of iterable) {
            chunks.push({ call, start: at, length: chunk.length })
            at += chunk.length
            yield chunk
          }
        } finally {
          call.t1 = performance.now()
        }
      }
      return { ...source, body: body() }
    },
  }
}

/**
 * Bytes that arrived more than once, split by why: a hedge (a request started over a range another live
 * request still covered, and that request's bytes after it), the opening race (losers' first chunks), or
 * anything else, which striping must keep at 0.
 */
function fetchedTwice(calls: Call[], chunks: Chunk[], size: number): { total: number; hedge: number; race: number; other: number } {
  const covered: [number, number][] = []
  const overlap = (s: number, e: number): number => {
    let n = 0
    for (const [a, b] of covered) n += Math.max(0, Math.min(b, e) - Math.max(a, s))
    return n
  }
  const add = (s: number, e: number): void => {
    covered.push([s, e])
    covered.sort((x, y) => x[0] - y[0])
    const merged: [number, number][] = []
    for (const [a, b] of covered) {
      const last = merged.at(-1)
      if (last && a <= last[1]) last[1] = Math.max(last[1], b)
      else merged.push([a, b])
    }
    covered.splice(0, covered.length, ...merged)
  }
  const hedges = calls.filter((c) =>
    calls.some((d) => d !== c && d.t0 < c.t0 && c.t0 < d.t1 && d.offset <= c.offset && c.offset < (d.end ?? size)),
  )
  const firstRace = new Set(calls.filter((c) => c.offset === 0 && c.end === undefined && c.t0 - calls[0]!.t0 < 5))
  const result = { total: 0, hedge: 0, race: 0, other: 0 }
  for (const chunk of chunks) {
    const end = chunk.start + chunk.length
    const twice = overlap(chunk.start, end)
    add(chunk.start, end)
    if (twice === 0) continue
    result.total += twice
    const hedged =
      hedges.includes(chunk.call) ||
      hedges.some((h) => h.offset <= chunk.start && chunk.start < (h.end ?? size) && h.t0 < chunk.call.t1 && h.backend !== chunk.call.backend)
    if (hedged) result.hedge += twice
    else if (firstRace.has(chunk.call)) result.race += twice
    else result.other += twice
  }
  return result
}

/** Reads a whole stream, timing it; what each source sent comes from `stream.sources` and the records. */
async function timeStriped(
  hash: string,
  backends: NarBackend[],
  signal: AbortSignal,
): Promise<{ ms: number; sources: readonly string[]; calls: Call[]; chunks: Chunk[] }> {
  const calls: Call[] = []
  const chunks: Chunk[] = []
  const t0 = performance.now()
  const stream = await resolveNar(hash, {
    backends: backends.map((b) => recorded(b, calls, chunks)),
    size: SIZE,
    signal,
    stallTimeoutMs: STALL_TIMEOUT_MS,
  })
  let bytes = 0
  for await (const chunk of stream) bytes += chunk.length
  if (bytes !== SIZE) throw new Error(`read ${bytes} bytes of ${SIZE}`)
  return { ms: performance.now() - t0, sources: stream.sources, calls, chunks }
}

/** Sums what each backend's bodies yielded. */
function perSource(chunks: Chunk[]): Record<string, number> {
  const sums: Record<string, number> = {}
  for (const c of chunks) sums[c.call.backend] = (sums[c.call.backend] ?? 0) + c.length
  return sums
}

/** aria2c with the flags the issue names, over both mirrors, into a temporary directory; its own wall time. */
function aria2c(urls: string[], dir: string, signal: AbortSignal): Promise<number> {
  const t0 = performance.now()
  const args = [
    '--split=4',
    '--max-connection-per-server=2',
    '--dir',
    dir,
    '--out',
    'nar',
    '--allow-overwrite=true',
    '--auto-file-renaming=false',
    '--file-allocation=none',
    '--console-log-level=error',
    '--summary-interval=0',
    '--quiet=true',
    ...urls,
  ]
  return new Promise((resolve, reject) => {
    execFile('aria2c', args, { signal }, (error) => (error ? reject(error) : resolve(performance.now() - t0)))
  })
}

function aria2cAvailable(): Promise<boolean> {
  return new Promise((resolve) => execFile('aria2c', ['--version'], (error) => resolve(!error)))
}

/** Issue 15: one NAR from several sources at once, against one mirror and against aria2c. */
export const stripe: Scenario = {
  name: 'stripe',
  title: 'stripe: one NAR from every source at once',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const rows: Row[] = []
    const ratios: Ratio[] = []
    const notMeasured: string[] = []
    const http = await loadHttp()
    if (!http.ok) {
      return { assumptions: [], ratios: [], tables: [], notMeasured: [`every row: ${http.why}`], samples }
    }
    const closer = new Closer()
    const medians = new Map<string, number>()
    const mixedRatios: Ratio[] = []
    try {
      const server = closer.add(await spawnNarServer())
      const nar = await server.add(SIZE, SEED)
      const shapers = closer.add(await spawnShapers())
      const [a, b, far] = await Promise.all([
        shapers.open(server.url, 'fast-cdn'),
        shapers.open(server.url, 'fast-cdn'),
        shapers.open(server.url, 'far-cache'),
      ])
      const dir = await mkdtemp(join(process.platform === 'linux' ? '/dev/shm' : tmpdir(), 'narrace-bench-aria2-'))
      closer.add({ close: () => rm(dir, { recursive: true, force: true }) })
      const haveAria2 = await aria2cAvailable()
      if (!haveAria2) notMeasured.push('aria2c: skipped, aria2c is not installed (Debian: apt-get install aria2)')

      const mirror = (shaper: RemoteShaper, name: string): NarBackend =>
        http.module.httpBackend({ url: shaper.url, name }) as NarBackend
      const narrace = async (variant: string, run: number, make: () => NarBackend[], before?: () => Promise<void>) => {
        const backends = make()
        try {
          await before?.()
          const t = await timeStriped(nar.hash, backends, signal)
          const twice = fetchedTwice(t.calls, t.chunks, SIZE)
          const sent = perSource(t.chunks)
          samples.push({
            variant,
            run,
            ms: t.ms,
            sources: t.sources.join(', '),
            twice: twice.total,
            twiceHedge: twice.hedge,
            twiceRace: twice.race,
            twiceOther: twice.other,
            ...Object.fromEntries(Object.entries(sent).map(([k, v]) => [`bytes:${k}`, v])),
          })
        } finally {
          await Promise.all(backends.map((x) => x.close?.()))
          await Promise.all([a, b, far].map((s) => s.setFaults({})))
        }
      }
      const variants: { variant: string; run: (run: number) => Promise<void> }[] = [
        { variant: 'narrace, one fast-cdn mirror', run: (run) => narrace('narrace, one fast-cdn mirror', run, () => [mirror(a, 'a')]) },
        { variant: 'narrace, two fast-cdn mirrors', run: (run) => narrace('narrace, two fast-cdn mirrors', run, () => [mirror(a, 'a'), mirror(b, 'b')]) },
        {
          variant: 'narrace, fast-cdn + far-cache',
          run: (run) => narrace('narrace, fast-cdn + far-cache', run, () => [mirror(a, 'a'), mirror(far, 'far')]),
        },
        {
          variant: 'narrace, two fast-cdn mirrors, one cut at 50 %',
          // Mirror b carries about half the file: every connection to it is cut once a quarter of the file went through it.
          run: (run) =>
            narrace('narrace, two fast-cdn mirrors, one cut at 50 %', run, () => [mirror(a, 'a'), mirror(b, 'b')], () =>
              b.setFaults({ cutAllAfterBytes: SIZE / 4 }),
            ),
        },
      ]
      if (haveAria2) {
        variants.push({
          variant: 'aria2c --split=4 --max-connection-per-server=2, both mirrors',
          run: async (run) => {
            const urls = [a, b].map((s) => new URL(nar.url, `${s.url}/`).href)
            const ms = await aria2c(urls, dir, signal)
            samples.push({ variant: 'aria2c --split=4 --max-connection-per-server=2, both mirrors', run, ms })
          },
        })
      }
      // A warm-up, then the variants interleaved run by run, so that a change in the machine's load
      // falls on all of them alike.
      await narrace('warm-up', 0, () => [mirror(a, 'a'), mirror(b, 'b')])
      samples.pop()
      for (let run = 0; run < RUNS; run++) {
        for (const v of variants) {
          signal.throwIfAborted()
          await v.run(run)
        }
      }
      for (const v of variants) {
        const mine = samples.filter((s) => s.variant === v.variant)
        const ms = median(mine.map((s) => s.ms as number))
        medians.set(v.variant, ms)
        const other = median(mine.map((s) => (s.twiceOther as number | undefined) ?? 0))
        rows.push({
          variant: v.variant,
          runs: mine.length,
          'ms p50': round(ms),
          'MiB/s p50': round(SIZE / MiB / (ms / 1000)),
          'MiB twice, hedges (p50)': mine[0]?.twice === undefined ? null : round(median(mine.map((s) => s.twiceHedge as number)) / MiB),
          'MiB twice, race (p50)': mine[0]?.twice === undefined ? null : round(median(mine.map((s) => s.twiceRace as number)) / MiB),
          'MiB twice, other (p50)': mine[0]?.twice === undefined ? null : round(other / MiB),
          sources: (mine.at(-1)?.sources as string | undefined) ?? 'aria2c',
        })
        log(`${v.variant}: ${round(ms)} ms`)
      }

      const mixed = await measureMixed(closer, signal, log)
      rows.push(...mixed.rows)
      samples.push(...mixed.samples)
      mixedRatios.push(...mixed.ratios)
      notMeasured.push(...mixed.notMeasured)
    } finally {
      await closer.close()
    }
    const one = medians.get('narrace, one fast-cdn mirror')
    const ratio = (variant: string, base: number | undefined): number | null => {
      const ms = medians.get(variant)
      return ms === undefined || base === undefined ? null : round(ms / base)
    }
    const aria = medians.get('aria2c --split=4 --max-connection-per-server=2, both mirrors')
    ratios.push(
      { id: 'stripe/two-mirrors-vs-one', label: 'two fast-cdn mirrors / one, 64 MiB (goal ≤ 0.55)', value: ratio('narrace, two fast-cdn mirrors', one) },
      { id: 'stripe/two-mirrors-vs-aria2c', label: 'narrace / aria2c --split=4 --max-connection-per-server=2, both mirrors (goal ≤ 1)', value: ratio('narrace, two fast-cdn mirrors', aria) },
      { id: 'stripe/unequal-vs-best-alone', label: 'fast-cdn + far-cache / fast-cdn alone (goal ≤ 1.03)', value: ratio('narrace, fast-cdn + far-cache', one) },
      {
        id: 'stripe/aria2c-vs-one',
        label: 'aria2c --split=4 --max-connection-per-server=2, both mirrors / narrace, one mirror (for scale: no goal)',
        value: ratio('aria2c --split=4 --max-connection-per-server=2, both mirrors', one),
      },
      {
        id: 'stripe/cut-vs-undisturbed',
        label: 'one mirror cut at 50 % / undisturbed, striped (goal ≤ 1.1)',
        value: ratio('narrace, two fast-cdn mirrors, one cut at 50 %', medians.get('narrace, two fast-cdn mirrors')),
      },
      {
        id: 'stripe/cut-twice-other-mib',
        label: 'one mirror cut at 50 %: MiB fetched twice beyond hedges and the race (goal 0)',
        value: (() => {
          const mine = samples.filter((s) => s.variant === 'narrace, two fast-cdn mirrors, one cut at 50 %')
          return mine.length === 0 ? null : round(median(mine.map((s) => s.twiceOther as number)) / MiB)
        })(),
      },
    )
    ratios.push(...mixedRatios)
    const [load] = loadavg()
    return {
      assumptions: [
        `Load average at the end of the run: ${round(load!)} on ${availableParallelism()} cores. Striping needs CPU for two streams at once; on a busy machine its times suffer first.`,
        `One ${formatSize(SIZE)} NAR from one bench server (its own process) behind shapers in another process: two fast-cdn links (20 ms RTT, 50 MiB/s each) and a far-cache link (250 ms, 2 MiB/s). narrace runs with its defaults (stripeAbove 8 MiB, connectionsPerSource 2, maxBufferBytes 32 MiB) and new backends, so cold connections, each run.`,
        'Variants take turns run by run after one warm-up. Times are from the call to resolveNar to the verified end; aria2c is its own wall time as a process, writing to a tmpfs, with the flags the issue names and no checksum.',
        'The cut: mirror b resets every connection open once it has forwarded a quarter of the file in that run (about half of its share), counted from when the fault is set for the run; later connections go through.',
        'Bytes fetched twice come from every chunk each backend yielded: a hedge duplicates by design (a request started over a range another live request still covered, and what that request sent after it); the opening race can let a loser send a chunk before its abort. Anything else must be 0.',
        'The mixed rows: one fast-cdn HTTP mirror, a webtorrent seeder on unshaped loopback (peers take the ports the tracker hands out), and a Helia peer, either on loopback too or behind a fast-cdn shaper, read by a new Helia node each run (an empty blockstore, a new connection); they show what each source sent in each run. Their runs alternate. Every peer runs in the bench\'s own process (the seeder, the IPFS publisher and its reader): behind fast-cdn, where IPFS sends nothing, their CPU (Helia\'s encryption and muxing at both ends) still competes with the download for one event loop, and that row is slower than the mirror alone.',
      ],
      ratios,
      tables: [{ caption: `Striped downloads, ${formatSize(SIZE)}`, rows }],
      notMeasured,
      samples,
    }
  },
}

/** The sources of the mixed rows, as the bench names them. */
const SOURCES = ['http', 'torrent', 'ipfs']
/** Runs per mixed variant, each with a new IPFS node: three, so that the p50 is a middle run, not the faster of two. */
const MIXED_RUNS = 3

/** HTTP, a torrent seeder and an IPFS peer for one file: every one should send bytes. */
async function measureMixed(
  closer: Closer,
  signal: AbortSignal,
  log: (line: string) => void,
): Promise<{ rows: Row[]; samples: Sample[]; ratios: Ratio[]; notMeasured: string[] }> {
  const [http, torrent, index] = await Promise.all([loadHttp(), loadTorrent(), loadIndex()])
  const rig = await startIpfsRig(closer, signal)
  if (!http.ok || !torrent.ok || !index.ok || !rig.ok) {
    const why = [http, torrent, index, rig].filter((x) => !x.ok).map((x) => (x.ok ? '' : x.why))
    return { rows: [], samples: [], ratios: [], notMeasured: [`mixed sources: ${why.join('; ')}`] }
  }
  const server = closer.add(await spawnNarServer())
  const bytes = makeNar(SIZE, SEED + 1)
  const nar = await server.add(SIZE, SEED + 1)
  const shapers = closer.add(await spawnShapers())
  const link = await shapers.open(server.url, 'fast-cdn')
  const published = await rig.module.publish(bytes)
  if (published.fileHash !== nar.hash) throw new Error('the IPFS and HTTP copies differ')
  const announce = await startTracker(closer)
  const dir = await mkdtemp(join(tmpdir(), 'narrace-bench-stripe-'))
  closer.add({ close: () => rm(dir, { recursive: true, force: true }) })
  const path = join(dir, `${createHash('sha256').update(bytes).digest('hex')}.nar.xz`)
  await writeFile(path, bytes)
  const seeder = torrent.module.createClient()
  seeder.on('error', () => {})
  closer.add({ close: () => new Promise<void>((resolve) => (seeder.destroyed ? resolve() : seeder.destroy(() => resolve()))) })
  const mappings = closer.add(index.module.openIndex())
  await torrent.module.publishToTorrent(path, { index: mappings, client: seeder, announce })
  const rows: Row[] = []
  const samples: Sample[] = []
  // The IPFS peer on loopback like the torrent seeder, and behind fast-cdn like the mirror: a cold Helia
  // read's first byte then takes about 300 ms and it streams at about 8 MiB/s, so hedges hand its
  // segments to the 50 MiB/s mirror.
  const variants = [
    { variant: 'narrace, HTTP fast-cdn + torrent seeder + IPFS peer, peers on loopback', ipfs: 'loopback' as const },
    { variant: 'narrace, HTTP fast-cdn + torrent seeder + IPFS peer behind fast-cdn', ipfs: 'fast-cdn' as const },
  ]
  for (let run = 0; run < MIXED_RUNS; run++) {
    for (const { variant, ipfs } of variants) {
      const backends: NarBackend[] = [
        http.module.httpBackend({ url: link.url, name: 'http' }) as NarBackend,
        torrent.module.torrentBackend({ index: mappings, announce, name: 'torrent' }),
        // A node of its own each run: blocks that reached the last one after its requests lost would be read locally.
        await rig.module.backend(ipfs, 'ipfs', true),
      ]
      try {
        const t = await timeStriped(nar.hash, backends, signal)
        const sent = perSource(t.chunks)
        samples.push({ variant, run, ms: t.ms, sources: t.sources.join(', '), ...Object.fromEntries(Object.entries(sent).map(([k, v]) => [`bytes:${k}`, v])) })
        log(`${variant}: ${round(t.ms)} ms, ${Object.entries(sent).map(([k, v]) => `${k} ${round(v / MiB)} MiB`).join(', ')}`)
      } finally {
        await Promise.all(backends.map((x) => x.close?.()))
      }
    }
  }
  const sent = (sample: Sample, k: string): number => (sample[`bytes:${k}`] as number | undefined) ?? 0
  for (const { variant } of variants) {
    const mine = samples.filter((s) => s.variant === variant)
    const ms = median(mine.map((s) => s.ms as number))
    rows.push({
      variant,
      runs: mine.length,
      'ms p50': round(ms),
      'ms, each run': mine.map((sample) => round(sample.ms as number)).join(', '),
      'MiB/s p50': round(SIZE / MiB / (ms / 1000)),
      'MiB twice, hedges (p50)': null,
      'MiB twice, race (p50)': null,
      'MiB twice, other (p50)': null,
      // Every run's, not only the last: a source that sent nothing in one run shows as 0 there.
      sources: mine.map((sample) => SOURCES.map((k) => `${k} ${round(sent(sample, k) / MiB)} MiB`).join(', ')).join('; '),
    })
  }
  const loopback = samples.filter((s) => s.variant === variants[0]!.variant)
  const silent = SOURCES.filter((k) => loopback.some((sample) => sent(sample, k) === 0)).length
  const ratios: Ratio[] = [
    {
      id: 'stripe/mixed-silent-sources',
      label: `sources that sent no byte in a run, ${variants[0]!.variant.replace('narrace, ', '')} (goal 0)`,
      value: loopback.length === 0 ? null : silent,
    },
  ]
  return { rows, samples, ratios, notMeasured: [] }
}
