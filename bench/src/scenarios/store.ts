import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { Pool, request } from 'undici'
import { Closer, openCache } from '../caches.js'
import { undiciRead } from '../http-client.js'
import { narInfoText, randomHashPart } from '../narinfo-text.js'
import { loadProxy, loadStore, type ProxyModule, type StoreModule } from '../optional.js'
import type { Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer, type ServedNar } from '../server.js'
import { MiB, formatSize, median, mibPerSecond, pairedRatio, round } from '../stats.js'

const FILES = 6
const SIZE = 2 * MiB
/** Cold passes each start from an empty store and cost the far cache's whole transfer time. */
const COLD_RUNS = 2
const WARM_RUNS = 5
const SEED = 131

/** `cat FILE… > /dev/null`: the floor for reading the same bytes from the same disk (page cache). */
function cat(files: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    execFile('sh', ['-c', 'cat "$@" > /dev/null', 'sh', ...files], (error) => (error ? reject(error) : resolve(performance.now() - t0)))
  })
}

/** One pass as Nix makes it: each narinfo, then its NAR; the time of the whole pass and of the NAR bytes. */
async function pass(
  url: string,
  nars: { hashPart: string; nar: ServedNar }[],
  pool: Pool,
  signal: AbortSignal,
): Promise<{ ms: number; narMs: number; bytes: number }> {
  const t0 = performance.now()
  let narMs = 0
  let bytes = 0
  for (const { hashPart, nar } of nars) {
    const info = await request(`${url}/${hashPart}.narinfo`, { dispatcher: pool, signal })
    await info.body.text()
    if (info.statusCode !== 200) throw new Error(`${hashPart}.narinfo: HTTP ${info.statusCode}`)
    const t = performance.now()
    bytes += await undiciRead(`${url}/${nar.url}`, { dispatcher: pool, hash: 'none', signal })
    narMs += performance.now() - t
  }
  return { ms: performance.now() - t0, narMs, bytes }
}

/** Issue 13: the proxy's store, cold (every NAR over a far cache) against warm (every NAR from disk). */
export const store: Scenario = {
  name: 'store',
  title: 'store: the proxy with --store, cold against warm, and warm against cat',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const [proxyModule, storeModule] = await Promise.all([loadProxy(), loadStore()])
    if (!proxyModule.ok || !storeModule.ok) {
      const why = !proxyModule.ok ? proxyModule.why : (storeModule as { why: string }).why
      return { assumptions: [], ratios: [], tables: [], notMeasured: [`every row: ${why}`], samples }
    }
    const { createProxy, ProxyStore } = proxyModule.module as Required<ProxyModule>
    const { openStore } = storeModule.module as StoreModule
    const closer = new Closer()
    const server = closer.add(await spawnNarServer())
    const work = await mkdtemp(join(tmpdir(), 'narrace-bench-store-'))
    try {
      const far = closer.add(await openCache(server, 'far-cache'))
      const nars: { hashPart: string; nar: ServedNar }[] = []
      for (let i = 0; i < FILES; i++) {
        const nar = await server.add(SIZE, SEED + i)
        const hashPart = randomHashPart()
        await server.addNarInfo(hashPart, narInfoText(hashPart, nar))
        nars.push({ hashPart, nar })
      }
      const total = FILES * SIZE

      let kept = 0
      for (let run = 0; run < COLD_RUNS; run++) {
        signal.throwIfAborted()
        const dir = join(work, `store-${run}`)
        const opened = await openStore(dir, { maxBytes: 1024 * MiB })
        const logger = pino({ level: 'silent' })
        const proxy = createProxy({ upstreams: [far.url], logger, store: new ProxyStore(opened, { logger }) })
        await proxy.listen()
        const pool = new Pool(proxy.url)
        try {
          const cold = await pass(proxy.url, nars, pool, signal)
          samples.push({ variant: 'cold store, far cache', run, bytes: cold.bytes, ms: cold.ms, mibps: mibPerSecond(cold.bytes, cold.narMs) })
          log(`cold ${run}: ${Math.round(cold.ms)} ms`)
          if (run === COLD_RUNS - 1) {
            await pass(proxy.url, nars, pool, signal)
            for (let warmRun = 0; warmRun < WARM_RUNS; warmRun++) {
              const warm = await pass(proxy.url, nars, pool, signal)
              samples.push({ variant: 'warm store', run: warmRun, bytes: warm.bytes, ms: warm.ms, mibps: mibPerSecond(warm.bytes, warm.narMs) })
              const files = opened.entries().map((entry) => entry.path)
              const catMs = await cat(files)
              samples.push({ variant: 'cat FILE > /dev/null', run: warmRun, bytes: total, ms: catMs, mibps: mibPerSecond(total, catMs) })
            }
            kept = opened.entries().length
          }
        } finally {
          await pool.close()
          await proxy.close()
          await opened.close()
        }
      }
      if (kept !== FILES) throw new Error(`the store kept ${kept} of ${FILES} NARs`)

      const of = (variant: string, field: 'ms' | 'mibps'): number =>
        median(samples.filter((s) => s.variant === variant).map((s) => s[field] as number))
      const cold = of('cold store, far cache', 'ms')
      const warm = of('warm store', 'ms')
      const rows = ['cold store, far cache', 'warm store', 'cat FILE > /dev/null'].map((variant) => ({
        variant,
        'ms p50': round(of(variant, 'ms')),
        'MiB/s p50': round(of(variant, 'mibps')),
      }))
      log(rows.map((r) => `${r.variant} ${r['ms p50']} ms, ${r['MiB/s p50']} MiB/s`).join('; '))
      return {
        assumptions: [
          `${FILES} NARs of ${formatSize(SIZE)} (${formatSize(total)}), each asked for as Nix does: its narinfo, then the NAR, one after another.`,
          'Cold: the proxy with --store and an empty store, its one upstream behind the far-cache link (250 ms RTT, 2 MiB/s); every NAR is verified whole (under 8 MiB) and teed into the store. Warm: the same requests once the store holds everything (narinfo and NAR come from the store, no upstream request). Each cold pass starts from a new store.',
          'cat: `cat` of the same store files to /dev/null, interleaved with the warm passes, so both read from the page cache; its time includes starting `sh` and `cat`. Warm throughput counts only the time of the NAR requests, through HTTP on loopback, SHA-256 included.',
        ],
        ratios: [
          { id: 'store/warm-vs-cold-time', label: 'warm store / cold store (far cache), time of the whole pass', value: round(warm / cold) },
          { id: 'store/warm-vs-cat-throughput', label: 'warm store NAR throughput / cat FILE > /dev/null', value: pairedRatio(samples, 'warm store', 'cat FILE > /dev/null', 'mibps') },
        ],
        tables: [{ caption: `A pass over ${FILES} NARs, ${formatSize(total)}`, rows }],
        notMeasured: [],
        samples,
      }
    } finally {
      await closer.close()
      await rm(work, { recursive: true, force: true })
    }
  },
}
