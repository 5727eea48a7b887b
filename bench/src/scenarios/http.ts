import { resolveNar } from '@narrace/core'
import { Pool } from 'undici'
import { HashWorker, curlRead, undiciRead } from '../http-client.js'
import { narInfoText, randomHashPart } from '../narinfo-text.js'
import { loadHttp } from '../optional.js'
import type { Ratio, Row, Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer, startNarServer } from '../server.js'
import { refusedPort } from '../shaper.js'
import { MiB, formatSize, median, mibPerSecond, p95, pairedRatio, round } from '../stats.js'

const SIZE = 256 * MiB
const RUNS = 7
const NARINFO_RUNS = 30
const SLOW_MS = 200

/** Issue 3: httpBackend through resolveNar against undici and curl on the same server, and the narinfo race. */
export const http: Scenario = {
  name: 'http',
  title: 'http: httpBackend against undici and curl, and the narinfo race',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const notMeasured: string[] = []
    const loaded = await loadHttp()
    if (!loaded.ok) notMeasured.push(`resolveNar + httpBackend and the narinfo race: ${loaded.why}`)
    const server = await spawnNarServer()
    const pool = new Pool(server.url)
    const worker = new HashWorker()
    const backend = loaded.ok ? loaded.module.httpBackend({ url: server.url, name: 'http' }) : undefined
    try {
      const nar = await server.add(SIZE, 2)
      const url = `${server.url}/${nar.url}`
      const variants: [string, () => Promise<number>][] = [
        ['undici, no hash', () => undiciRead(url, { dispatcher: pool, hash: 'none', signal })],
        ['undici + inline sha256', () => undiciRead(url, { dispatcher: pool, hash: 'inline', signal })],
        ['undici + sha256 on a worker', () => undiciRead(url, { dispatcher: pool, hash: worker, signal })],
      ]
      if (backend) {
        variants.push([
          'resolveNar + httpBackend',
          async () => {
            let bytes = 0
            const stream = await resolveNar(nar.hash, { backends: [backend], size: nar.size, url: nar.url, signal })
            for await (const chunk of stream) bytes += chunk.length
            return bytes
          },
        ])
      }
      const timed = async (run: () => Promise<number>): Promise<[number, number]> => {
        const t0 = performance.now()
        const bytes = await run()
        return [performance.now() - t0, bytes]
      }
      // Warm-up: page the file in on the server, open keep-alive connections, let the JIT settle.
      for (const [, run] of variants) await run()
      await curlRead(url, signal)
      for (let run = 0; run < RUNS; run++) {
        for (const [variant, fn] of variants) {
          const [ms, bytes] = await timed(fn)
          if (bytes !== SIZE) throw new Error(`${variant} read ${bytes} of ${SIZE} bytes`)
          samples.push({ variant, run, bytes, ms, mibps: mibPerSecond(bytes, ms) })
        }
        const curl = await curlRead(url, signal)
        samples.push({ variant: 'curl -o /dev/null', run, bytes: curl.bytes, ms: curl.ms, mibps: mibPerSecond(curl.bytes, curl.ms) })
        log(`run ${run}: ${samples.slice(-variants.length - 1).map((s) => `${s.variant} ${round(s.mibps as number)}`).join(', ')} MiB/s`)
      }
      const rate = (variant: string): number | undefined => {
        const values = samples.filter((s) => s.variant === variant).map((s) => s.mibps as number)
        return values.length ? median(values) : undefined
      }
      const ratio = (a: string, b: string): number | null => pairedRatio(samples, a, b, 'mibps')
      const throughputRows: Row[] = [...new Set(samples.map((s) => s.variant))].map((variant) => ({
        variant,
        'MiB/s median': round(rate(variant)!),
        'ms median': round(median(samples.filter((s) => s.variant === variant).map((s) => s.ms as number))),
      }))

      // The narinfo race: one refused, one slow, one healthy cache, against the healthy one alone.
      const narinfoRows: Row[] = []
      const ratios: Ratio[] = [
        { id: 'http/narrace-vs-undici-inline-hash', label: 'resolveNar + httpBackend / undici + inline sha256 (goal ≥ 0.9)', value: ratio('resolveNar + httpBackend', 'undici + inline sha256') },
        { id: 'http/narrace-vs-undici-raw', label: 'resolveNar + httpBackend / undici without hash', value: ratio('resolveNar + httpBackend', 'undici, no hash') },
        { id: 'http/narrace-vs-curl', label: 'resolveNar + httpBackend / curl -o /dev/null', value: ratio('resolveNar + httpBackend', 'curl -o /dev/null') },
        { id: 'http/worker-vs-inline-hash', label: 'undici + sha256 on a worker / undici + inline sha256', value: ratio('undici + sha256 on a worker', 'undici + inline sha256') },
      ]
      if (loaded.ok) {
        const healthy = await spawnNarServer()
        const slow = await startNarServer({ delayMs: SLOW_MS })
        const dead = `http://127.0.0.1:${await refusedPort()}`
        try {
          const small = await healthy.add(64 * 1024, 3)
          await slow.add(64 * 1024, 3)
          const parts: string[] = []
          for (let i = 0; i < NARINFO_RUNS + 1; i++) {
            const part = randomHashPart()
            parts.push(part)
            await healthy.addNarInfo(part, narInfoText(part, small))
            await slow.addNarInfo(part, narInfoText(part, small))
          }
          const ask = async (caches: string[], part: string): Promise<number> => {
            const t0 = performance.now()
            const got = await loaded.module.resolveNarInfo(part, { caches, signal })
            if (got.cache !== healthy.url) throw new Error(`the narinfo came from ${got.cache}`)
            return performance.now() - t0
          }
          const three = [dead, slow.url, healthy.url]
          await ask([healthy.url], parts[0]!)
          await ask(three, parts[0]!)
          const alone: number[] = []
          const raced: number[] = []
          for (let run = 0; run < NARINFO_RUNS; run++) {
            // A fresh hash part each time, so no cache in between can answer from memory.
            const part = parts[run + 1]!
            const a = await ask([healthy.url], part)
            const r = await ask(three, part)
            alone.push(a)
            raced.push(r)
            samples.push({ variant: 'narinfo: healthy alone', run, ms: a }, { variant: 'narinfo: dead + slow + healthy', run, ms: r })
          }
          narinfoRows.push(
            { caches: 'healthy alone', 'ms median': round(median(alone)), 'ms p95': round(p95(alone)) },
            { caches: `refused + slow (${SLOW_MS} ms) + healthy`, 'ms median': round(median(raced)), 'ms p95': round(p95(raced)) },
          )
          ratios.push({ id: 'http/narinfo-race-extra-ms', label: 'narinfo race − healthy alone, median ms (goal ≤ 5)', value: round(median(raced) - median(alone)) })
        } finally {
          await Promise.all([healthy.close(), slow.close()])
        }
      }
      return {
        assumptions: [
          `${formatSize(SIZE)} from a node:http server in a separate process on 127.0.0.1, no shaping; ${RUNS} interleaved rounds after one warm-up. Tables give medians; ratios are the median over rounds of the ratio within a round.`,
          'Every variant reads the same URL from the same server in the same run. curl reports its own transfer time (%{time_total}).',
          'The worker variant copies socket chunks into 1 MiB batches and transfers them to one hashing thread. On 2 cores the server holds one core, so no core is free for it.',
          `Narinfo race: ${NARINFO_RUNS} lookups of fresh hash parts, each cache a separate server; the dead cache is a refused port and the slow one answers after ${SLOW_MS} ms.`,
        ],
        ratios,
        tables: [
          { caption: `Throughput, ${formatSize(SIZE)}`, rows: throughputRows },
          ...(narinfoRows.length ? [{ caption: 'Narinfo race latency', rows: narinfoRows }] : []),
        ],
        notMeasured,
        samples,
      }
    } finally {
      await backend?.close()
      await worker.close()
      await pool.close()
      await server.close()
    }
  },
}
