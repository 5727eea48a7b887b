import { Closer } from '../caches.js'
import type { Ratio } from '../results.js'
import type { Scenario } from '../scenario.js'
import { MiB } from '../stats.js'
import { cellOf, over } from './ipfs.js'
import { measureHttpLoopback, measureTorrent, merge } from './p2p.js'

const SIZES = [
  { size: 4 * MiB, runs: 5 },
  { size: 64 * MiB, runs: 3 },
]

/** Issue 5: BitTorrent from one and from three seeders against HTTP from a local server, in the same run. */
export const torrent: Scenario = {
  name: 'torrent',
  title: 'torrent: one and three loopback seeders against HTTP',
  async run({ signal, log }) {
    const closer = new Closer()
    try {
      // HTTP first, so that the p2p nodes' leftover work cannot slow the baseline.
      const http = await measureHttpLoopback({ signal, log, sizes: SIZES, closer }, 7)
      const m = merge(
        await measureTorrent({ signal, log, sizes: SIZES, closer }, [1, 3]),
        http,
      )
      const ratios: Ratio[] = ['4 MiB', '64 MiB'].flatMap((size) =>
        [1, 3].flatMap((n) => {
          const label = `torrent, ${n} seeder${n > 1 ? 's' : ''}`
          return [
            { id: `torrent/ttfb-vs-http-${n}-${size.replace(' ', '')}`, label: `${label} / HTTP, TTFB p50, ${size}`, value: over(cellOf(m.rows, label, size, 'TTFB ms p50'), cellOf(m.rows, 'http', size, 'TTFB ms p50')) },
            { id: `torrent/rate-vs-http-${n}-${size.replace(' ', '')}`, label: `${label} / HTTP, throughput p50, ${size}`, value: over(cellOf(m.rows, label, size, 'MiB/s p50'), cellOf(m.rows, 'http', size, 'MiB/s p50')) },
          ]
        }),
      )
      return {
        assumptions: [
          'A bittorrent-tracker HTTP tracker and webtorrent 3 seeders in this process, TCP only (no DHT, LSD, uTP or WebRTC), on loopback.',
          'All clients share this process and its event loop with the downloader, so three seeders add peers, not CPU.',
          'Every run makes a new torrentBackend with its own client, so the first byte includes the tracker announce, the peer handshakes and the metadata exchange.',
          'HTTP: httpBackend against a node:http server in a separate process, unshaped, a new backend per run. No fixed goal: the numbers record where torrent stands.',
        ],
        ratios,
        tables: [{ caption: 'Torrent and HTTP on loopback', rows: m.rows }],
        notMeasured: m.notMeasured,
        samples: m.samples,
      }
    } finally {
      await closer.close()
    }
  },
}
