import type { NarBackend } from '@narrace/core'
import { Closer, openCache } from '../caches.js'
import { counted, timeResolve } from '../measure.js'
import { loadHttp } from '../optional.js'
import type { Ratio, Row, Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer } from '../server.js'
import { MiB, formatSize, median, round } from '../stats.js'

const SIZE = 64 * MiB
const RUNS = 3
const STALL_TIMEOUT_MS = 1000

/** Issue 7, scenario 3: the winner dies at 50 %; what the fail-over costs in time and in bytes fetched twice. */
export const failover: Scenario = {
  name: 'failover',
  title: 'failover: the winner dies halfway',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const rows: Row[] = []
    const ratios: Ratio[] = []
    const loaded = await loadHttp()
    if (!loaded.ok) {
      return {
        assumptions: [],
        ratios: [{ id: 'failover/cut-vs-undisturbed', label: 'winner cut at 50 % / undisturbed, time', value: null }],
        tables: [],
        notMeasured: [`every row: ${loaded.why}`],
        samples,
      }
    }
    const http = loaded.module
    const closer = new Closer()
    try {
      const server = closer.add(await spawnNarServer())
      const noRange = closer.add(await spawnNarServer({ noRange: true }))
      const nar = await server.add(SIZE, 21)
      await noRange.add(SIZE, 21)
      const winner = closer.add(await openCache(server, 'lan'))
      const ranged = closer.add(await openCache(server, 'lan'))
      const whole = closer.add(await openCache(noRange, 'lan'))
      // The shaper counts the response head too; a few hundred bytes past the middle of the body is still "at 50 %".
      const half = { cutAfterBytes: SIZE / 2 }
      const variants = [
        { variant: 'undisturbed', faults: {}, next: ranged },
        { variant: 'cut at 50 %, next source honours Range', faults: half, next: ranged },
        { variant: 'cut at 50 %, next source ignores Range', faults: half, next: whole },
        { variant: `stall at 50 % (stallTimeoutMs ${STALL_TIMEOUT_MS}), next honours Range`, faults: { stallAfterBytes: SIZE / 2 }, next: ranged },
      ]
      const medians = new Map<string, { ms: number; twice: number }>()
      const warm = http.httpBackend({ url: winner.url, name: 'warm-up' })
      await timeResolve(nar.hash, { backends: [warm], size: SIZE, url: nar.url, signal }).finally(() => warm.close())
      for (const v of variants) {
        winner.shaper!.setFaults(v.faults)
        const times: number[] = []
        const twice: number[] = []
        for (let run = 0; run < RUNS; run++) {
          const first = counted(http.httpBackend({ url: winner.url, name: 'winner' }))
          const second = counted(http.httpBackend({ url: v.next.url, name: 'next' }))
          const backends: NarBackend[] = [first, second]
          try {
            // The next source starts late, so the first one wins the opening race every time.
            const t = await timeResolve(nar.hash, {
              backends,
              size: SIZE,
              url: nar.url,
              signal,
              stallTimeoutMs: STALL_TIMEOUT_MS,
              hedge: { next: 200 },
            })
            const fetched = first.yielded + second.yielded
            times.push(t.ms)
            twice.push(fetched - SIZE)
            samples.push({ variant: v.variant, run, ms: t.ms, ttfbMs: t.ttfbMs, fetched, twice: fetched - SIZE, firstBytes: first.yielded, secondBytes: second.yielded })
          } finally {
            await Promise.all(backends.map((b) => b.close?.()))
          }
        }
        medians.set(v.variant, { ms: median(times), twice: median(twice) })
        rows.push({
          variant: v.variant,
          runs: RUNS,
          'ms p50': round(median(times)),
          'bytes fetched twice (p50)': median(twice),
          'MiB fetched twice': round(median(twice) / MiB),
        })
        log(`${v.variant}: ${round(median(times))} ms, ${round(median(twice) / MiB)} MiB twice`)
      }
      const base = medians.get('undisturbed')!.ms
      ratios.push(
        { id: 'failover/cut-vs-undisturbed', label: 'cut at 50 %, Range resume / undisturbed, time', value: round(medians.get(variants[1]!.variant)!.ms / base) },
        { id: 'failover/cut-twice-mib', label: 'cut at 50 %, Range resume: MiB fetched twice', value: round(medians.get(variants[1]!.variant)!.twice / MiB) },
        { id: 'failover/cut-no-range-vs-undisturbed', label: 'cut at 50 %, no Range / undisturbed, time', value: round(medians.get(variants[2]!.variant)!.ms / base) },
      )
    } finally {
      await closer.close()
    }
    return {
      assumptions: [
        `One ${formatSize(SIZE)} NAR from two lan caches (1 ms RTT, 125 MB/s). The second starts 200 ms late (hedge), so the first wins; the shaper then cuts or stalls it after half the file.`,
        'Bytes fetched twice = every byte the backends yielded − the file size: what a resume re-downloads. A source that ignores Range sends from byte 0 and narrace skips what it already has.',
      ],
      ratios,
      tables: [{ caption: `Fail-over at 50 %, ${formatSize(SIZE)}`, rows }],
      notMeasured: [],
      samples,
    }
  },
}
