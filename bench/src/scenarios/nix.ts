import { Closer, openCache } from '../caches.js'
import { FIXTURE_CACHE, fixtureClosure, nixAvailable, nixSandbox, serveCacheDir, type NixRun } from '../nix.js'
import { loadProxy } from '../optional.js'
import type { Ratio, Row, Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { PROFILES, startBlackhole } from '../shaper.js'
import { median, round } from '../stats.js'
import { NIX_CONNECT_TIMEOUT_MS } from './race.js'

const RUNS = 3
/** One Nix run with a dead cache in front takes about five connect timeouts; this bounds it. */
const NIX_TIMEOUT_MS = 240_000

/** Issue 7, scenario 6: a real Nix client, through the proxy and directly, with a dead cache in front. */
export const nix: Scenario = {
  name: 'nix',
  title: 'nix: a 20-path closure through the proxy and directly',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const nothing = (why: string) => ({ assumptions: [], ratios: [], tables: [], notMeasured: [why], samples })
    if (!nixAvailable()) return nothing('every row: no `nix` on PATH (Debian: apt-get install nix-bin)')
    const proxyModule = await loadProxy()
    if (!proxyModule.ok) return nothing(`every row: the proxy, ${proxyModule.why}`)
    const { pino } = await import('pino')
    const root = await fixtureClosure()
    if (typeof root === 'string') return nothing(`every row: ${root}`)
    const key = root.publicKey

    const closer = new Closer()
    const rows: Row[] = []
    const ratios: Ratio[] = []
    try {
      const origin = closer.add(await serveCacheDir(FIXTURE_CACHE))
      // The healthy cache is a fast CDN; the dead one never completes a TCP connect.
      const healthy = closer.add(await openCache(origin, 'fast-cdn'))
      const dead = closer.add(await startBlackhole())
      const sandbox = closer.add(await nixSandbox())
      const common = ['--option', 'trusted-public-keys', key, '--option', 'connect-timeout', String(NIX_CONNECT_TIMEOUT_MS / 1000)]
      const realise = (substituters: string) => (store: string) => [
        '--store', store, '--realise', root.storePath, '--option', 'substituters', substituters, ...common,
      ]
      const copy = (from: string) => (store: string) => ['copy', '--from', from, '--to', store, root.storePath, ...common]
      const withProxy = async (run: (url: string) => Promise<NixRun>): Promise<NixRun> => {
        const proxy = proxyModule.module.createProxy({ upstreams: [dead.url, healthy.url], trustedPublicKeys: [key], logger: pino({ level: 'silent' }) })
        await proxy.listen()
        try {
          return await run(proxy.url)
        } finally {
          await proxy.close()
        }
      }
      const options = { timeoutMs: NIX_TIMEOUT_MS, signal }
      const variants: { variant: string; runs: number; run(): Promise<NixRun> }[] = [
        { variant: 'nix-store -r, substituters = healthy cache alone', runs: RUNS, run: () => sandbox.run('nix-store', realise(healthy.url), options) },
        { variant: 'nix-store -r, substituters = the proxy (dead + healthy upstreams)', runs: RUNS, run: () => withProxy((url) => sandbox.run('nix-store', realise(url), options)) },
        { variant: 'nix-store -r, substituters = dead + healthy (Nix alone)', runs: 1, run: () => sandbox.run('nix-store', realise(`${dead.url} ${healthy.url}`), options) },
        { variant: 'nix copy --from the healthy cache alone', runs: RUNS, run: () => sandbox.run('nix', copy(healthy.url), options) },
        { variant: 'nix copy --from the proxy (dead + healthy upstreams)', runs: RUNS, run: () => withProxy((url) => sandbox.run('nix', copy(url), options)) },
      ]
      const medians = new Map<string, number>()
      for (const v of variants) {
        const times: number[] = []
        for (let run = 0; run < v.runs; run++) {
          const result = await v.run()
          if (result.code !== 0) throw new Error(`${v.variant} failed (${result.code}):\n${result.stderr.slice(-2000)}`)
          times.push(result.ms)
          samples.push({ variant: v.variant, run, ms: result.ms })
        }
        medians.set(v.variant, median(times))
        rows.push({ variant: v.variant, runs: v.runs, 'ms p50': round(median(times)) })
        log(`${v.variant}: ${round(median(times))} ms`)
      }
      const m = (i: number): number => medians.get(variants[i]!.variant)!
      ratios.push(
        { id: 'nix/proxy-vs-direct-dead-first', label: 'nix-store -r: proxy (dead + healthy) / dead + healthy listed directly', value: round(m(1) / m(2)) },
        { id: 'nix/proxy-vs-healthy-alone', label: 'nix-store -r: proxy (dead + healthy) / healthy cache alone', value: round(m(1) / m(0)) },
        { id: 'nix/copy-proxy-vs-healthy-alone', label: 'nix copy: proxy (dead + healthy) / healthy cache alone', value: round(m(4) / m(3)) },
      )
    } finally {
      await closer.close()
    }
    return {
      assumptions: [
        `Real Nix (nix-bin, no daemon, a fresh store and narinfo cache per run) substitutes closure-root and its 19 references from the checked-in Nix-made fixture cache, signatures checked.`,
        `The healthy cache is that folder served over HTTP behind a fast-cdn link (${PROFILES['fast-cdn'].rttMs} ms RTT); the dead cache is a blackhole. Every Nix run sets connect-timeout = ${NIX_CONNECT_TIMEOUT_MS / 1000} s; Nix's other settings are its defaults (download-attempts = 5, so a dead cache costs several timeouts).`,
        'The proxy (examples/proxy) is started fresh for each run with the dead and the healthy cache as upstreams. `nix copy --from` takes a single store, so the caches listed directly as substituters are compared with `nix-store --realise` and `--option substituters`, through the proxy and without it.',
      ],
      ratios,
      tables: [{ caption: 'nix, 20-path closure', rows }],
      notMeasured: [],
      samples,
    }
  },
}
