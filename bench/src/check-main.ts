import { readFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { checkFloors, describeFloor, type Floor } from './check.js'
import { BENCH_DIR, RESULTS_DIR, readResults } from './results.js'

/**
 * `pnpm bench:check [results-dir]`: exits 1 when a ratio in bench/results (or in `results-dir`) is below
 * its floor in bench/floors.json, or missing.
 */
const arg = process.argv.slice(2).find((a) => a !== '--')
// pnpm runs the script in bench/, so a relative directory is taken from INIT_CWD, where pnpm was invoked.
const dir = arg === undefined ? RESULTS_DIR : resolve(process.env.INIT_CWD ?? process.cwd(), arg)
const floors = JSON.parse(await readFile(join(BENCH_DIR, 'floors.json'), 'utf8')) as Record<string, Floor>
const verdicts = checkFloors(await readResults(dir), floors)
for (const v of verdicts) {
  console.log(`${v.ok ? 'ok  ' : 'FAIL'}  ${v.id}  ${v.value ?? '–'}  (floor ${describeFloor(v.floor)})${v.ok ? '' : `  ${v.why}`}`)
}
const failed = verdicts.filter((v) => !v.ok).length
console.log(`${verdicts.length - failed} within floors, ${failed} below or missing`)
process.exitCode = failed > 0 ? 1 : 0
