import { describe, expect, it } from 'vitest'
import { formatBytes, formatMs, formatPercent, formatRate, formatTable } from '../src/format.js'

describe('format', () => {
  it('prints sizes in binary units', () => {
    expect(formatBytes(0)).toBe('0 B')
    expect(formatBytes(1023)).toBe('1023 B')
    expect(formatBytes(1536)).toBe('1.50 KiB')
    expect(formatBytes(5 * 1024 * 1024)).toBe('5.00 MiB')
    expect(formatBytes(300 * 1024 * 1024)).toBe('300.0 MiB')
  })

  it('prints rates, times and shares', () => {
    expect(formatRate(2 * 1024 * 1024, 1000)).toBe('2.00 MiB/s')
    expect(formatRate(1, 0)).toBe('-')
    expect(formatMs(12.4)).toBe('12 ms')
    expect(formatMs(2500)).toBe('2.50 s')
    expect(formatPercent(1, 4)).toBe('25%')
    expect(formatPercent(1, 0)).toBe('-')
  })

  it('pads table columns and right-aligns numbers', () => {
    const table = formatTable(['backend', 'NARs'], [
      ['http://a', '3'],
      ['ipfs', '12'],
    ])
    expect(table).toBe('backend   NARs\n--------  ----\nhttp://a     3\nipfs        12\n')
  })
})
