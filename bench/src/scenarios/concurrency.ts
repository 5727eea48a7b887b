import { resolveNar } from '@narrace/core'
import { Closer, openCache } from '../caches.js'
import { loadHttp } from '../optional.js'
import type { Ratio, Row, Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer, type ServedNar } from '../server.js'
import { MiB, formatSize, median, p99, round } from '../stats.js'

const SIZE = 256 * 1024
const LEVELS = [64, 256]

/** Issue 7, scenario 5: many parallel resolves of distinct NARs through one backend. */
export const concurrency: Scenario = {
  name: 'concurrency',
  title: 'concurrency: 64 and 256 parallel resolves',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const rows: Row[] = []
    const ratios: Ratio[] = []
    const loaded = await loadHttp()
    if (!loaded.ok) {
      return { assumptions: [], ratios: [], tables: [], notMeasured: [`every row: ${loaded.why}`], samples }
    }
    const closer = new Closer()
    try {
      const server = closer.add(await spawnNarServer())
      const cache = closer.add(await openCache(server, 'fast-cdn'))
      const nars: ServedNar[] = []
      for (let i = 0; i < Math.max(...LEVELS); i++) nars.push(await server.add(SIZE, 1000 + i))
      for (const level of LEVELS) {
        const backend = loaded.module.httpBackend({ url: cache.url, name: 'http' })
        let peakRss = process.memoryUsage().rss
        const rssBefore = peakRss
        const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 10)
        const t0 = performance.now()
        try {
          const outcomes = await Promise.allSettled(
            nars.slice(0, level).map(async (nar) => {
              const start = performance.now()
              let bytes = 0
              for await (const chunk of await resolveNar(nar.hash, { backends: [backend], size: SIZE, url: nar.url, signal })) bytes += chunk.length
              if (bytes !== SIZE) throw new Error(`${bytes} of ${SIZE} bytes`)
              return performance.now() - start
            }),
          )
          const wall = performance.now() - t0
          const times = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []))
          const errors = outcomes.filter((o) => o.status === 'rejected')
          for (const [run, o] of outcomes.entries()) {
            samples.push({ variant: `${level} parallel`, run, ms: o.status === 'fulfilled' ? o.value : null, error: o.status === 'rejected' ? String(o.reason) : null })
          }
          rows.push({
            parallel: level,
            'ms p50': round(median(times)),
            'ms p99': round(p99(times)),
            'wall ms': round(wall),
            errors: errors.length,
            'peak RSS MiB': round(peakRss / MiB),
            'RSS added MiB': round((peakRss - rssBefore) / MiB),
          })
          ratios.push({ id: `concurrency/errors-${level}`, label: `errors at ${level} parallel (must be 0)`, value: errors.length })
          log(`${level} parallel: p50 ${round(median(times))} ms, p99 ${round(p99(times))} ms, ${errors.length} errors`)
        } finally {
          clearInterval(sampler)
          await backend.close()
        }
      }
    } finally {
      await closer.close()
    }
    return {
      assumptions: [
        `Distinct ${formatSize(SIZE)} NARs, all started at once through one httpBackend (one undici pool) behind a fast-cdn link (20 ms RTT, 50 MiB/s shared by all).`,
        'Latency is from each call to its verified end. RSS is sampled every 10 ms in the bench process.',
      ],
      ratios,
      tables: [{ caption: 'Parallel resolves', rows }],
      notMeasured: [],
      samples,
    }
  },
}
