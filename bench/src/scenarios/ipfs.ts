import { Closer } from '../caches.js'
import type { Ratio, Row } from '../results.js'
import type { Scenario } from '../scenario.js'
import { MiB } from '../stats.js'
import { measureHttpLoopback, measureIpfs, merge } from './p2p.js'

const SIZES = [
  { size: 200 * 1024, runs: 9 },
  { size: 4 * MiB, runs: 5 },
  { size: 64 * MiB, runs: 3 },
]

/** The p50 of one column in the row of `backend` (by prefix) and `size`, or null. */
export function cellOf(rows: Row[], backend: string, size: string, column: string): number | null {
  const row = rows.find((r) => String(r.backend).startsWith(backend) && r.size === size)
  return row && typeof row[column] === 'number' ? (row[column] as number) : null
}

/** `a / b`, or null when either is missing. */
export function over(a: number | null, b: number | null): number | null {
  return a === null || b === null || b === 0 ? null : Number((a / b).toPrecision(3))
}

/** Issue 4: IPFS between two loopback Helia nodes against HTTP from a local server, in the same run. */
export const ipfs: Scenario = {
  name: 'ipfs',
  title: 'ipfs: two loopback Helia nodes against HTTP',
  async run({ signal, log }) {
    const closer = new Closer()
    try {
      // HTTP first, so that the p2p nodes' leftover work cannot slow the baseline.
      const http = await measureHttpLoopback({ signal, log, sizes: SIZES, closer }, 6)
      const m = merge(
        await measureIpfs({ signal, log, sizes: SIZES, closer }),
        http,
      )
      const ratios: Ratio[] = ['200 KiB', '4 MiB', '64 MiB'].flatMap((size) => [
        { id: `ipfs/ttfb-vs-http-${size.replace(' ', '')}`, label: `IPFS / HTTP, TTFB p50, ${size}`, value: over(cellOf(m.rows, 'ipfs', size, 'TTFB ms p50'), cellOf(m.rows, 'http', size, 'TTFB ms p50')) },
        { id: `ipfs/rate-vs-http-${size.replace(' ', '')}`, label: `IPFS / HTTP, throughput p50, ${size}`, value: over(cellOf(m.rows, 'ipfs', size, 'MiB/s p50'), cellOf(m.rows, 'http', size, 'MiB/s p50')) },
      ])
      return {
        assumptions: [
          'Two Helia 7 nodes in this process, libp2p over loopback TCP with noise and yamux, dialled directly; no discovery or routing. One publishes (1 MiB raw-leaf chunks, CIDv1), the other backs ipfsBackend.',
          'Every run fetches a file not fetched before, so the fetching node has no block of it. 200 KiB is found by its raw CID, 4 and 64 MiB through the index. The fetching node dials the publisher once and stays connected, so its first bytes leave out the libp2p handshake, while each HTTP run includes its TCP connect.',
          'HTTP: httpBackend against a node:http server in a separate process, unshaped, a new backend per run. No fixed goal: the numbers record where IPFS stands.',
        ],
        ratios,
        tables: [{ caption: 'IPFS and HTTP on loopback', rows: m.rows }],
        notMeasured: m.notMeasured,
        samples: m.samples,
      }
    } finally {
      await closer.close()
    }
  },
}
