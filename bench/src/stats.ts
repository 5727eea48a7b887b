/** The value at quantile `q` (0..1) by the nearest-rank method; NaN for no samples. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)))
  return sorted[rank - 1]!
}

/** The usual quantiles. */
export const median = (values: readonly number[]): number => quantile(values, 0.5)
export const p95 = (values: readonly number[]): number => quantile(values, 0.95)
export const p99 = (values: readonly number[]): number => quantile(values, 0.99)

/** 2^20 bytes. */
export const MiB = 1024 * 1024

/** MiB/s from bytes and milliseconds. */
export function mibPerSecond(bytes: number, ms: number): number {
  return bytes / MiB / (ms / 1000)
}

/** Rounds for a table: 3 significant digits, integers kept whole. */
export function round(value: number): number {
  if (!Number.isFinite(value)) return value
  if (Math.abs(value) >= 100) return Math.round(value)
  return Number(value.toPrecision(3))
}

/** A human size: 100 KiB, 4 MiB, 1 GiB. */
export function formatSize(bytes: number): string {
  if (bytes >= 1024 * MiB && bytes % (1024 * MiB) === 0) return `${bytes / (1024 * MiB)} GiB`
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB} MiB`
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`
  return `${bytes} B`
}

/**
 * The median over runs of `a`'s value divided by `b`'s in the same run. Variants run interleaved, so a
 * pair shares the machine's load at that moment; the median of paired ratios shrugs off load that drifts
 * between rounds, which a ratio of two medians does not.
 */
export function pairedRatio(
  samples: readonly { variant: string; run: number; [key: string]: unknown }[],
  a: string,
  b: string,
  field: string,
): number | null {
  const ratios: number[] = []
  for (const x of samples) {
    if (x.variant !== a) continue
    const y = samples.find((s) => s.variant === b && s.run === x.run)
    if (y && typeof x[field] === 'number' && typeof y[field] === 'number') ratios.push((x[field] as number) / (y[field] as number))
  }
  return ratios.length ? round(median(ratios)) : null
}
