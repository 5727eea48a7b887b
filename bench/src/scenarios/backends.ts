import { Closer, openCache } from '../caches.js'
import { timeResolve } from '../measure.js'
import { loadHttp } from '../optional.js'
import type { Row, Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer } from '../server.js'
import type { ProfileName } from '../shaper.js'
import { MiB, formatSize } from '../stats.js'
import { FAR_MAX, measureIpfs, measureTorrent } from './p2p.js'
import { summarise } from './summary.js'

/** Sizes and how often each is fetched: enough runs for a p95 without a far cache taking minutes. */
export const SIZES = [
  { size: 100 * 1024, runs: 9 },
  { size: 4 * MiB, runs: 5 },
  { size: 64 * MiB, runs: 3 },
]
const PROFILES: Exclude<ProfileName, 'dead'>[] = ['lan', 'fast-cdn', 'far-cache']

/** Issue 7, scenario 1: each backend alone, time to first byte and throughput by size and network. */
export const backends: Scenario = {
  name: 'backends',
  title: 'backends: each source alone',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const rows: Row[] = []
    const notMeasured: string[] = []
    const closer = new Closer()
    try {
      const http = await loadHttp()
      if (!http.ok) notMeasured.push(`HTTP: ${http.why}`)
      else {
        const server = closer.add(await spawnNarServer())
        for (const { size, runs } of SIZES) {
          const nar = await server.add(size, 100 + size)
          for (const profile of PROFILES) {
            if (profile === 'far-cache' && size > FAR_MAX) continue
            const cache = closer.add(await openCache(server, profile))
            const mine: Sample[] = []
            for (let run = 0; run < runs; run++) {
              // A new backend each run: its first connect, and the handshake RTT, count as they do for a first NAR.
              const backend = http.module.httpBackend({ url: cache.url, name: 'http' })
              try {
                const t = await timeResolve(nar.hash, { backends: [backend], size, url: nar.url, signal })
                mine.push({ variant: 'http', run, profile, size, ttfbMs: t.ttfbMs, ms: t.ms, bytes: t.bytes })
              } finally {
                await backend.close()
              }
            }
            samples.push(...mine)
            rows.push(summarise('http', profile, size, mine))
            log(`http ${profile} ${formatSize(size)}: TTFB ${rows.at(-1)!['TTFB ms p50']} ms, ${rows.at(-1)!['MiB/s p50']} MiB/s`)
          }
        }
      }
      for (const p2p of [
        await measureIpfs({ signal, log, sizes: SIZES, closer }, PROFILES),
        await measureTorrent({ signal, log, sizes: SIZES, closer }, [1]),
      ]) {
        samples.push(...p2p.samples)
        rows.push(...p2p.rows)
        notMeasured.push(...p2p.notMeasured)
      }
    } finally {
      await closer.close()
    }
    const ttfbOf = (backend: string, profile: string, size: string): number | null => {
      const row = rows.find((r) => r.backend === backend && r.profile === profile && r.size === size)
      return row ? (row['TTFB ms p50'] as number) : null
    }
    return {
      assumptions: [
        'Every source on 127.0.0.1. HTTP goes through the shaper: lan (1 ms RTT, 125 MB/s), fast-cdn (20 ms, 50 MiB/s), far-cache (250 ms, 2 MiB/s; 100 KiB and 4 MiB only).',
        'The shaper adds one RTT for the TCP handshake and one for request and response, so a cold HTTP first byte costs about 2 RTT.',
        'Each run makes a new backend (a cold connection). TTFB is from the call to resolveNar to the first verified-so-far chunk; throughput is size over the whole verified download.',
        'IPFS: two Helia nodes in this process; the fetching node dials the publishing one through the shaper, so libp2p (noise, yamux, bitswap) crosses the same links as HTTP. It dials once per profile and stays connected, so unlike HTTP its runs start without a handshake, which favours IPFS.',
        'Torrent: a tracker and one webtorrent seeder in this process, on unshaped loopback: peers connect to the ports the tracker hands out, which the shaper cannot sit in front of.',
      ],
      ratios: [
        { id: 'backends/http-lan-ttfb-ms', label: 'HTTP lan, 100 KiB, TTFB p50 ms', value: ttfbOf('http', 'lan', '100 KiB') },
        { id: 'backends/http-far-cache-ttfb-ms', label: 'HTTP far-cache, 100 KiB, TTFB p50 ms', value: ttfbOf('http', 'far-cache', '100 KiB') },
      ],
      tables: [{ caption: 'Each backend alone', rows }],
      notMeasured,
      samples,
    }
  },
}
