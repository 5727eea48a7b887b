import { describe, expect, it } from 'vitest'
import { formatSize, pairedRatio, quantile } from '../src/stats.js'

describe('stats', () => {
  it('takes quantiles by nearest rank', () => {
    expect(quantile([5, 1, 3, 2, 4], 0.5)).toBe(3)
    expect(quantile([5, 1, 3, 2, 4], 0.95)).toBe(5)
    expect(quantile([], 0.5)).toBeNaN()
  })

  it('pairs runs before taking the median of their ratios', () => {
    // Round 1 ran under load for both variants; a ratio of medians would mix rounds, pairing does not.
    const samples = [
      { variant: 'a', run: 0, rate: 90 },
      { variant: 'b', run: 0, rate: 100 },
      { variant: 'a', run: 1, rate: 45 },
      { variant: 'b', run: 1, rate: 50 },
      { variant: 'a', run: 2, rate: 95 },
      { variant: 'b', run: 2, rate: 100 },
    ]
    expect(pairedRatio(samples, 'a', 'b', 'rate')).toBe(0.9)
    expect(pairedRatio(samples, 'a', 'c', 'rate')).toBeNull()
  })

  it('names sizes the way the tables do', () => {
    expect([100 * 1024, 4 * 2 ** 20, 2 ** 30, 1000].map(formatSize)).toEqual(['100 KiB', '4 MiB', '1 GiB', '1000 B'])
  })
})
