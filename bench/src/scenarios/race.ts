import type { NarBackend } from '@narrace/core'
import { Closer, openCache } from '../caches.js'
import { makeNar } from '../data.js'
import { timeResolve, type Timing } from '../measure.js'
import { loadHttp, type HttpModule } from '../optional.js'
import type { Ratio, Row, Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer, type ServedNar } from '../server.js'
import { MiB, formatSize, median, round } from '../stats.js'
import { startIpfsRig } from './p2p.js'

const SIZE = 4 * MiB
/**
 * The connect timeout the sequential baseline gives a dead cache. Nix 2.x ships `connect-timeout = 0`,
 * which leaves curl's own default of 300 s; the issue fixes 15 s, which favours the baseline.
 */
export const NIX_CONNECT_TIMEOUT_MS = 15_000

/**
 * Nix's order: try each substituter in turn, moving on only when one fails. Each attempt is resolveNar
 * over that one backend, so both sides use the same backends and the same verification.
 */
async function sequential(
  backends: NarBackend[],
  nar: ServedNar,
  signal: AbortSignal,
): Promise<Timing> {
  const t0 = performance.now()
  for (const [i, backend] of backends.entries()) {
    try {
      const t = await timeResolve(nar.hash, { backends: [backend], size: nar.size, url: nar.url, signal })
      const before = performance.now() - t0 - t.ms
      return { ...t, ttfbMs: before + t.ttfbMs, ms: before + t.ms }
    } catch (error) {
      if (signal.aborted || i === backends.length - 1) throw error
    }
  }
  throw new Error('no backend')
}

/** Issue 7, scenario 2: racing against the best single source and against Nix's sequential order. */
export const race: Scenario = {
  name: 'race',
  title: 'race: resolveNar against the best single source and sequential substitution',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const notMeasured: string[] = []
    const ratios: Ratio[] = []
    const rows: Row[] = []
    const loaded = await loadHttp()
    if (!loaded.ok) {
      return {
        assumptions: [],
        ratios: [
          { id: 'race/race-vs-best-far-first', label: 'race / best single source, far-cache listed first', value: null },
          { id: 'race/race-vs-sequential-dead-first', label: 'race / sequential, dead cache listed first (goal ≤ 0.1)', value: null },
        ],
        tables: [],
        notMeasured: [`every row: ${loaded.why}`],
        samples,
      }
    }
    const http: HttpModule = loaded.module
    const closer = new Closer()
    try {
      const server = closer.add(await spawnNarServer())
      const near = closer.add(await openCache(server, 'fast-cdn'))
      const ipfs = await startIpfsRig(closer, signal)
      if (!ipfs.ok) notMeasured.push(`IPFS in the race: ${ipfs.why}`)
      let seed = 0
      // A new file per run: no IPFS node may hold blocks of it from an earlier run.
      const fresh = async (): Promise<ServedNar> => {
        seed++
        const nar = await server.add(SIZE, 1100 + seed)
        if (ipfs.ok) await ipfs.module.publish(makeNar(SIZE, 1100 + seed))
        return nar
      }
      for (const first of ['far-cache', 'dead'] as const) {
        const front = closer.add(await openCache(server, first))
        // Fresh backends per run, so every run pays for its connects like a first NAR does.
        const frontBackend = (connectTimeoutMs?: number): NarBackend =>
          http.httpBackend({ url: front.url, name: first, ...(connectTimeoutMs ? { connectTimeoutMs } : {}) })
        const nearBackend = (): NarBackend => http.httpBackend({ url: near.url, name: 'fast-cdn' })
        const p2p = async (): Promise<NarBackend[]> => (ipfs.ok ? [await ipfs.module.backend('fast-cdn')] : [])
        const resolveWith = (backends: () => Promise<NarBackend[]>) => async (nar: ServedNar) =>
          withBackends(await backends(), (b) => timeResolve(nar.hash, { backends: b, size: SIZE, url: nar.url, signal }))
        const variants: { variant: string; runs: number; run(nar: ServedNar): Promise<Timing> }[] = [
          { variant: 'race', runs: 7, run: resolveWith(async () => [frontBackend(), nearBackend(), ...(await p2p())]) },
          { variant: 'fast-cdn alone', runs: 7, run: resolveWith(async () => [nearBackend()]) },
        ]
        if (ipfs.ok) variants.push({ variant: 'ipfs alone', runs: 3, run: resolveWith(p2p) })
        if (first === 'far-cache') variants.push({ variant: 'far-cache alone', runs: 3, run: resolveWith(async () => [frontBackend()]) })
        variants.push({
          variant: 'sequential (Nix order)',
          runs: first === 'dead' ? 2 : 3,
          run: async (nar) => withBackends([frontBackend(NIX_CONNECT_TIMEOUT_MS), nearBackend(), ...(await p2p())], (b) => sequential(b, nar, signal)),
        })
        const medians = new Map<string, number>()
        for (const v of variants) {
          const times: number[] = []
          for (let run = 0; run < v.runs; run++) {
            const t = await v.run(await fresh())
            times.push(t.ms)
            samples.push({ variant: v.variant, first, run, ttfbMs: t.ttfbMs, ms: t.ms, bytes: t.bytes, winner: t.winner })
          }
          medians.set(v.variant, median(times))
          rows.push({
            'first listed': first,
            strategy: v.variant,
            runs: v.runs,
            'ms p50': round(median(times)),
            'TTFB ms p50': round(median(samples.filter((s) => s.first === first && s.variant === v.variant).map((s) => s.ttfbMs as number))),
            winners: [...new Set(samples.filter((s) => s.first === first && s.variant === v.variant).map((s) => s.winner))].join(', '),
          })
          log(`${first} first, ${v.variant}: ${round(median(times))} ms`)
        }
        const best = Math.min(...[...medians].filter(([k]) => k.endsWith('alone')).map(([, v]) => v))
        ratios.push(
          { id: `race/race-vs-best-${first === 'dead' ? 'dead' : 'far'}-first`, label: `race / best single source, ${first} listed first`, value: round(medians.get('race')! / best) },
          { id: `race/race-vs-sequential-${first === 'dead' ? 'dead' : 'far'}-first`, label: `race / sequential, ${first} listed first${first === 'dead' ? ' (goal ≤ 0.1)' : ''}`, value: round(medians.get('race')! / medians.get('sequential (Nix order)')!) },
        )
      }
    } finally {
      await closer.close()
    }
    return {
      assumptions: [
        `A new ${formatSize(SIZE)} NAR each run. Two HTTP caches in front of one server: the first listed is far-cache (250 ms RTT, 2 MiB/s) or dead (a blackhole: its TCP connect never completes), the second is fast-cdn (20 ms RTT, 50 MiB/s). Third, IPFS: a Helia peer holding the NAR, reached over its own fast-cdn link.`,
        `Sequential is Nix's order with the same backends, one after another, moving on when one fails; a dead cache costs a ${NIX_CONNECT_TIMEOUT_MS / 1000} s connect timeout (Nix 2.x defaults to curl's 300 s, so this favours the baseline).`,
        'Times are from the call to the verified end. Every run makes new backends, so HTTP connects are cold; the IPFS node dials its peer once and stays connected, which favours IPFS.',
        'Torrent is left out of this race: its peers connect to the ports the tracker hands out, on unshaped loopback, which would hand it every race against shaped sources. The backends and torrent scenarios measure it alone.',
      ],
      ratios,
      tables: [{ caption: `Race against single sources and sequential order, ${formatSize(SIZE)}`, rows }],
      notMeasured,
      samples,
    }
  },
}

async function withBackends<T>(backends: NarBackend[], run: (backends: NarBackend[]) => Promise<T>): Promise<T> {
  try {
    return await run(backends)
  } finally {
    await Promise.all(backends.map((b) => b.close?.()))
  }
}
