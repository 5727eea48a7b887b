import type { Row, Sample } from '../results.js'
import { formatSize, median, mibPerSecond, p95, quantile, round } from '../stats.js'

/** Summarises samples of one backend, profile and size into a table row. */
export function summarise(backend: string, profile: string, size: number, samples: Sample[]): Row {
  const ttfb = samples.map((s) => s.ttfbMs as number)
  const rates = samples.map((s) => mibPerSecond(s.bytes as number, s.ms as number))
  return {
    backend,
    profile,
    size: formatSize(size),
    runs: samples.length,
    'TTFB ms p50': round(median(ttfb)),
    'TTFB ms p95': round(p95(ttfb)),
    'MiB/s p50': round(median(rates)),
    // The slow tail of a rate is its low end: the 5th percentile matches the p95 of times.
    'MiB/s p5': round(quantile(rates, 0.05)),
  }
}

