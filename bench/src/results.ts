import { execFileSync } from 'node:child_process'
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** `bench/`, whether this runs from `src/` or from `dist/`. */
export const BENCH_DIR = fileURLToPath(new URL('..', import.meta.url))
/** `bench/results/`, one JSON file per scenario. */
export const RESULTS_DIR = join(BENCH_DIR, 'results')

/** A headline ratio, the number people read first and `bench:check` holds against the floors. */
export interface Ratio {
  /** Stable id, `<scenario>/<name>`, the key in floors.json. */
  id: string
  label: string
  /** null when one side could not be measured. */
  value: number | null
}

/** One measurement. Every sample is kept in the results file. */
export interface Sample {
  variant: string
  run: number
  [key: string]: string | number | boolean | null
}

/** A table row: column name → value. */
export type Row = Record<string, string | number | null>

/** The machine a result was measured on. */
export interface MachineInfo {
  cpu: string
  cores: number
  memoryGiB: number
  platform: string
  release: string
  node: string
}

/** What `bench/results/<scenario>.json` holds. */
export interface ScenarioResult {
  scenario: string
  title: string
  date: string
  commit: string | null
  machine: MachineInfo
  /** The network and defaults the numbers assume. */
  assumptions: string[]
  ratios: Ratio[]
  /** Tables, each with a caption. */
  tables: { caption: string; rows: Row[] }[]
  /** What could not be measured, and why. */
  notMeasured: string[]
  samples: Sample[]
  durationMs: number
}

/** Describes this machine and Node. */
export function machineInfo(): MachineInfo {
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    platform: os.platform(),
    release: os.release(),
    node: process.version,
  }
}

function commit(): string | null {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: BENCH_DIR, encoding: 'utf8' }).trim()
  } catch {
    return null
  }
}

/** Writes `bench/results/<scenario>.json` with the machine, the commit and the date; returns its path. */
export async function writeResult(result: Omit<ScenarioResult, 'machine' | 'commit' | 'date'>): Promise<string> {
  const full: ScenarioResult = {
    scenario: result.scenario,
    title: result.title,
    date: new Date().toISOString(),
    commit: commit(),
    machine: machineInfo(),
    assumptions: result.assumptions,
    ratios: result.ratios,
    tables: result.tables,
    notMeasured: result.notMeasured,
    samples: result.samples,
    durationMs: result.durationMs,
  }
  await mkdir(RESULTS_DIR, { recursive: true })
  const path = join(RESULTS_DIR, `${result.scenario}.json`)
  await writeFile(path, `${JSON.stringify(full, null, 1)}\n`)
  return path
}

/** Every results file in `dir`, in file-name order. */
export async function readResults(dir = RESULTS_DIR): Promise<ScenarioResult[]> {
  let names: string[]
  try {
    names = (await readdir(dir)).filter((name) => name.endsWith('.json')).sort()
  } catch {
    return []
  }
  return Promise.all(names.map(async (name) => JSON.parse(await readFile(join(dir, name), 'utf8')) as ScenarioResult))
}
