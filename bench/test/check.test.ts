import { execFile } from 'node:child_process'
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkFloors, type Floor } from '../src/check.js'
import { BENCH_DIR, RESULTS_DIR, machineInfo, type ScenarioResult } from '../src/results.js'

function result(scenario: string, ratios: ScenarioResult['ratios']): ScenarioResult {
  return {
    scenario,
    title: scenario,
    date: '2026-01-01T00:00:00.000Z',
    commit: null,
    machine: machineInfo(),
    assumptions: [],
    ratios,
    tables: [],
    notMeasured: [],
    samples: [],
    durationMs: 1,
  }
}

/** Runs `pnpm bench:check <dir>` as pnpm would: the script's own file, from bench/, with tsx. */
function runCheck(dir: string): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'src/check-main.ts', dir], { cwd: BENCH_DIR }, (error, stdout) => {
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout })
    })
  })
}

describe('checkFloors', () => {
  const results = [result('race', [{ id: 'race/race-vs-sequential-dead-first', label: 'race / sequential', value: 0.01 }])]

  it('passes within the floors and fails below them or when a ratio is missing', () => {
    const verdicts = checkFloors(results, {
      'race/race-vs-sequential-dead-first': { max: 0.1 },
      'http/narrace-vs-undici-inline-hash': { min: 0.9 },
    })
    expect(verdicts.map((v) => [v.id, v.ok, v.why])).toEqual([
      ['race/race-vs-sequential-dead-first', true, ''],
      ['http/narrace-vs-undici-inline-hash', false, 'not measured'],
    ])
    const below = checkFloors(results, { 'race/race-vs-sequential-dead-first': { max: 0.001 } })
    expect(below[0]).toMatchObject({ ok: false, why: '0.01 > 0.001' })
  })
})

describe('bench:check', () => {
  let floors: Record<string, Floor>
  let doctored: string
  let atBounds: string

  beforeAll(async () => {
    floors = JSON.parse(await readFile(join(BENCH_DIR, 'floors.json'), 'utf8')) as Record<string, Floor>
    // A copy of the real results with the dead-first race made slower than its floor allows.
    doctored = await mkdtemp(join(tmpdir(), 'narrace-bench-check-'))
    await cp(RESULTS_DIR, doctored, { recursive: true })
    const racePath = join(doctored, 'race.json')
    const race = JSON.parse(await readFile(racePath, 'utf8')) as ScenarioResult
    race.ratios = race.ratios.map((r) => (r.id === 'race/race-vs-sequential-dead-first' ? { ...r, value: 0.5 } : r))
    await writeFile(racePath, JSON.stringify(race))
    // Every floor met exactly at its bound.
    atBounds = await mkdtemp(join(tmpdir(), 'narrace-bench-check-'))
    const ratios = Object.entries(floors).map(([id, floor]) => ({ id, label: id, value: floor.min ?? floor.max! }))
    await writeFile(join(atBounds, 'all.json'), JSON.stringify(result('all', ratios)))
  })
  afterAll(async () => {
    await Promise.all([doctored, atBounds].filter(Boolean).map((dir) => rm(dir, { recursive: true, force: true })))
  })

  it('floors.json holds the bounds the issues set', () => {
    expect(floors).toMatchObject({
      'core-overhead/throughput-vs-hash': { min: 0.9 },
      'http/narrace-vs-undici-inline-hash': { min: 0.9 },
      'race/race-vs-sequential-dead-first': { max: 0.1 },
    })
  })

  it('exits 0 when every ratio is within its floor, and 1 when one is past it', async () => {
    const [pass, fail] = await Promise.all([runCheck(atBounds), runCheck(doctored)])
    expect(pass.code).toBe(0)
    expect(pass.stdout).toContain(`${Object.keys(floors).length} within floors, 0 below or missing`)
    expect(fail.code).toBe(1)
    expect(fail.stdout).toMatch(/FAIL {2}race\/race-vs-sequential-dead-first {2}0\.5 .*0\.5 > 0\.1/)
  })
})
