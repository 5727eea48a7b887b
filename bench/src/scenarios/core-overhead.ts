import { once } from 'node:events'
import { createHash } from 'node:crypto'
import { resolveNar } from '@narrace/core'
import { forkEntry } from '../child.js'
import { RSS_SEED, fileHash, makeNar, repeatedChunks } from '../data.js'
import { memoryBackend, split } from '../memory-backend.js'
import type { Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { MiB, formatSize, median, mibPerSecond, p95, pairedRatio, quantile, round } from '../stats.js'

const SIZE = 256 * MiB
const CHUNK = 64 * 1024
const RUNS = 7
const LATENCY_RUNS = 200
/** The small file sets the baseline; the large one shows what streaming 1 GiB adds. */
const RSS_SIZES = [64 * MiB, 1024 * MiB]

/** Issue 2: what resolveNar costs over hashing the same bytes, how fast a chunk gets through, and its memory. */
export const coreOverhead: Scenario = {
  name: 'core-overhead',
  title: 'core: resolveNar against hashing alone',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const file = makeNar(SIZE, 1)
    const chunks = split(file, CHUNK)
    const hash = fileHash(file)
    const backend = memoryBackend(chunks)

    const hashAlone = (): number => {
      const t0 = performance.now()
      const h = createHash('sha256')
      for (const chunk of chunks) h.update(chunk)
      h.digest()
      return performance.now() - t0
    }
    const throughResolve = async (): Promise<number> => {
      const t0 = performance.now()
      let bytes = 0
      for await (const chunk of await resolveNar(hash, { backends: [backend], size: SIZE, signal })) bytes += chunk.length
      if (bytes !== SIZE) throw new Error(`resolveNar delivered ${bytes} of ${SIZE} bytes`)
      return performance.now() - t0
    }
    // One warm-up each, then alternate so that drift in machine load hits both sides alike.
    hashAlone()
    await throughResolve()
    for (let run = 0; run < RUNS; run++) {
      signal.throwIfAborted()
      const hashMs = hashAlone()
      const resolveMs = await throughResolve()
      samples.push({ variant: 'hash alone', run, bytes: SIZE, ms: hashMs, mibps: mibPerSecond(SIZE, hashMs) })
      samples.push({ variant: 'resolveNar', run, bytes: SIZE, ms: resolveMs, mibps: mibPerSecond(SIZE, resolveMs) })
      log(`run ${run}: hash ${hashMs.toFixed(0)} ms, resolveNar ${resolveMs.toFixed(0)} ms`)
    }
    const rate = (variant: string): number => median(samples.filter((s) => s.variant === variant).map((s) => s.mibps as number))

    // First chunk: from the moment the backend yields it to the moment the consumer holds it.
    const small = split(file.subarray(0, 256 * 1024), CHUNK)
    const smallHash = fileHash(file.subarray(0, 256 * 1024))
    const latencies: number[] = []
    for (let run = 0; run < LATENCY_RUNS; run++) {
      let yieldedAt = 0
      const timed = memoryBackend(small, { onFirstChunk: () => (yieldedAt = performance.now()) })
      const stream = await resolveNar(smallHash, { backends: [timed], signal })
      const iterator = stream[Symbol.asyncIterator]()
      await iterator.next()
      latencies.push(performance.now() - yieldedAt)
      await iterator.return?.()
    }
    for (const [run, ms] of latencies.entries()) samples.push({ variant: 'first chunk', run, ms })

    // RSS growth of a fresh process streaming a small file and a large one: flat means independent of size.
    const rss: { what: string; size: number; bytes: number; ms: number; rssStart: number; peak: number }[] = []
    // The hash-only run shows what making the data costs by itself, without resolveNar.
    for (const [what, size] of [['resolveNar', RSS_SIZES[0]!], ['resolveNar', RSS_SIZES[1]!], ['hash only', RSS_SIZES[1]!]] as const) {
      log(`peak RSS: ${what}, ${formatSize(size)} in a fresh process`)
      const args = [String(size), fileHash(repeatedChunks(size, RSS_SEED, 64 * 1024)), what === 'hash only' ? 'hash' : 'resolve']
      const child = forkEntry('core-rss-main', args)
      const exited = once(child, 'exit')
      const [report] = (await once(child, 'message', { signal })) as [Omit<(typeof rss)[number], 'size' | 'what'>]
      await exited
      rss.push({ what, size, ...report })
      samples.push({ variant: `peak rss, ${what}`, run: 0, size, bytes: report.bytes, ms: report.ms, rssStart: report.rssStart, peak: report.peak })
    }
    const growth = (r: (typeof rss)[number]): number => (r.peak - r.rssStart) / MiB
    const addedMiB = growth(rss[1]!)

    const hashRate = rate('hash alone')
    const resolveRate = rate('resolveNar')
    return {
      assumptions: [
        `${formatSize(SIZE)} in ${formatSize(CHUNK)} chunks from an in-memory backend, ${RUNS} alternating rounds after one warm-up. Tables give medians; the ratio is the median over rounds of the ratio within a round.`,
        'No network: this is the cost of racing, hashing and verifying in resolveNar itself.',
        `First-chunk latency over ${LATENCY_RUNS} resolves of a 256 KiB file. Peak RSS: one fresh process streams ${formatSize(RSS_SIZES[0]!)}, another ${formatSize(RSS_SIZES[1]!)}, of one 1 MiB block repeated as views (no allocation by the source); RSS is sampled every 1 MiB, and what it gains over its value at the start is what streaming adds.`,
      ],
      ratios: [
        { id: 'core-overhead/throughput-vs-hash', label: 'resolveNar throughput / hashing alone (goal ≥ 0.9)', value: pairedRatio(samples, 'resolveNar', 'hash alone', 'mibps') },
        { id: 'core-overhead/first-chunk-p95-ms', label: 'first chunk, backend → consumer, p95 ms (goal < 1)', value: round(p95(latencies)) },
        { id: 'core-overhead/rss-added-mib', label: `RSS added while streaming ${formatSize(RSS_SIZES[1]!)} through resolveNar, MiB (goal < 64)`, value: round(addedMiB) },
        { id: 'core-overhead/rss-vs-hash-only-mib', label: `RSS added, resolveNar − hash only, ${formatSize(RSS_SIZES[1]!)}, MiB`, value: round(addedMiB - growth(rss[2]!)) },
      ],
      tables: [
        {
          caption: `Throughput, ${formatSize(SIZE)}`,
          rows: [
            { variant: 'sha256 alone (node:crypto)', 'MiB/s median': round(hashRate), 'ms median': round(median(samples.filter((s) => s.variant === 'hash alone').map((s) => s.ms as number))) },
            { variant: 'resolveNar (memory backend)', 'MiB/s median': round(resolveRate), 'ms median': round(median(samples.filter((s) => s.variant === 'resolveNar').map((s) => s.ms as number))) },
          ],
        },
        {
          caption: 'First chunk, backend yield → consumer (ms)',
          rows: [{ p50: round(median(latencies)), p95: round(p95(latencies)), max: round(quantile(latencies, 1)) }],
        },
        {
          caption: 'Peak RSS of a fresh process streaming one generated file',
          rows: rss.map((r) => ({
            what: r.what,
            size: formatSize(r.size),
            'RSS at start (MiB)': round(r.rssStart / MiB),
            'peak RSS (MiB)': round(r.peak / MiB),
            'added (MiB)': round(growth(r)),
            'MiB/s': round(mibPerSecond(r.bytes, r.ms)),
          })),
        },
      ],
      notMeasured: [],
      samples,
    }
  },
}
