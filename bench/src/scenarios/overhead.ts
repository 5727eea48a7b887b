import { createHash } from 'node:crypto'
import { Pool } from 'undici'
import { undiciRead } from '../http-client.js'
import { makeNar } from '../data.js'
import { timeResolve } from '../measure.js'
import { loadHttp } from '../optional.js'
import type { Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer } from '../server.js'
import { MiB, formatSize, median, mibPerSecond, pairedRatio, round } from '../stats.js'

const SIZE = 64 * MiB
const RUNS = 7
const SEED = 31

/** Issue 7, scenario 4: resolveNar over HTTP against raw undici on the same server, and against hashing alone. */
export const overhead: Scenario = {
  name: 'overhead',
  title: 'overhead: resolveNar against raw undici and hashing alone',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const loaded = await loadHttp()
    const notMeasured = loaded.ok ? [] : [`resolveNar + httpBackend: ${loaded.why}`]
    const server = await spawnNarServer()
    const pool = new Pool(server.url)
    const backend = loaded.ok ? loaded.module.httpBackend({ url: server.url, name: 'http' }) : undefined
    try {
      const nar = await server.add(SIZE, SEED)
      const local = makeNar(SIZE, SEED)
      const url = `${server.url}/${nar.url}`
      const variants: [string, () => Promise<number>][] = [
        ['undici read, no hash', () => undiciRead(url, { dispatcher: pool, hash: 'none', signal })],
        [
          'sha256 alone, in memory',
          async () => {
            createHash('sha256').update(local).digest()
            return SIZE
          },
        ],
      ]
      if (backend) {
        variants.unshift([
          'resolveNar + httpBackend',
          async () => (await timeResolve(nar.hash, { backends: [backend], size: SIZE, url: nar.url, signal })).bytes,
        ])
      }
      for (const [, fn] of variants) await fn()
      for (let run = 0; run < RUNS; run++) {
        for (const [variant, fn] of variants) {
          const t0 = performance.now()
          const bytes = await fn()
          const ms = performance.now() - t0
          samples.push({ variant, run, bytes, ms, mibps: mibPerSecond(bytes, ms) })
        }
      }
      const rate = (variant: string): number | undefined => {
        const values = samples.filter((s) => s.variant === variant).map((s) => s.mibps as number)
        return values.length ? median(values) : undefined
      }
      const ratio = (a: string, b: string): number | null => pairedRatio(samples, a, b, 'mibps')
      const rows = variants.map(([variant]) => ({ variant, 'MiB/s p50': round(rate(variant)!) }))
      log(rows.map((r) => `${r.variant} ${r['MiB/s p50']} MiB/s`).join(', '))
      return {
        assumptions: [
          `${formatSize(SIZE)} from a node:http server in a separate process, no shaping; ${RUNS} interleaved rounds after a warm-up. Tables give medians; ratios are the median over rounds of the ratio within a round.`,
          'resolveNar must read and hash every byte, so its ceiling is the slower of the two baselines.',
        ],
        ratios: [
          { id: 'overhead/narrace-vs-undici-raw', label: 'resolveNar + httpBackend / raw undici read', value: ratio('resolveNar + httpBackend', 'undici read, no hash') },
          { id: 'overhead/narrace-vs-hash-alone', label: 'resolveNar + httpBackend / sha256 alone', value: ratio('resolveNar + httpBackend', 'sha256 alone, in memory') },
        ],
        tables: [{ caption: `Throughput, ${formatSize(SIZE)}`, rows }],
        notMeasured,
        samples,
      }
    } finally {
      await backend?.close()
      await pool.close()
      await server.close()
    }
  },
}
