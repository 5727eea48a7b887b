import { describe, expect, it } from 'vitest'
import { buildReport, table } from '../src/report.js'
import type { ScenarioResult } from '../src/results.js'

const machine = { cpu: 'test cpu', cores: 2, memoryGiB: 4, platform: 'linux', release: '6', node: 'v24.0.0' }

function result(scenario: string, partial: Partial<ScenarioResult>): ScenarioResult {
  return {
    scenario,
    title: `${scenario}: a title`,
    date: '2026-01-01T00:00:00.000Z',
    commit: null,
    machine,
    assumptions: [],
    ratios: [],
    tables: [],
    notMeasured: [],
    samples: [],
    durationMs: 1000,
    ...partial,
  }
}

const results: ScenarioResult[] = [
  result('backends', {
    tables: [
      {
        caption: 'Each backend alone',
        rows: [
          { backend: 'http', profile: 'lan', size: '100 KiB', 'TTFB ms p50': 3 },
          { backend: 'http', profile: 'far-cache', size: '100 KiB', 'TTFB ms p50': 510 },
        ],
      },
    ],
    notMeasured: ['IPFS: package not available'],
  }),
  result('race', {
    ratios: [{ id: 'race/race-vs-sequential-dead-first', label: 'race / sequential, dead first', value: 0.01 }],
    tables: [
      {
        caption: 'race',
        rows: [
          { 'first listed': 'dead', strategy: 'race', 'ms p50': 120 },
          { 'first listed': 'dead', strategy: 'sequential (Nix order)', 'ms p50': 15_100 },
        ],
      },
    ],
  }),
]

describe('report', () => {
  it('writes a table per scenario, the headline ratios and SVG charts', async () => {
    const report = await buildReport(results, { 'race/race-vs-sequential-dead-first': { max: 0.1 } })
    expect(report.markdown).toContain('## Headline ratios')
    expect(report.markdown).toContain('| race / sequential, dead first | 0.01 | ≤ 0.1 |')
    expect(report.markdown).toContain('| http | far-cache | 100 KiB | 510 |')
    expect(report.markdown).toContain('- Not measured: IPFS: package not available')
    expect(report.markdown).toContain('![ttfb.svg](charts/ttfb.svg)')
    expect(Object.keys(report.charts).sort()).toEqual(['race.svg', 'ttfb.svg'])
    for (const svg of Object.values(report.charts)) {
      expect(svg.startsWith('<svg')).toBe(true)
      expect(svg).toContain('</svg>')
    }
    expect(report.charts['race.svg']).toContain('sequential (Nix order)')
  })

  it('escapes pipes and shows missing values as a dash', () => {
    expect(table([{ a: 'x|y', b: null }])).toBe('| a | b |\n| --- | --- |\n| x\\|y | – |\n')
  })
})
