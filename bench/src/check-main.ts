import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { checkFloors, describeFloor, type Floor } from './check.js'
import { BENCH_DIR, readResults } from './results.js'

/** `pnpm bench:check`: exits 1 when a ratio in bench/results is below its floor in bench/floors.json, or missing. */
const floors = JSON.parse(await readFile(join(BENCH_DIR, 'floors.json'), 'utf8')) as Record<string, Floor>
const verdicts = checkFloors(await readResults(), floors)
for (const v of verdicts) {
  console.log(`${v.ok ? 'ok  ' : 'FAIL'}  ${v.id}  ${v.value ?? '–'}  (floor ${describeFloor(v.floor)})${v.ok ? '' : `  ${v.why}`}`)
}
const failed = verdicts.filter((v) => !v.ok).length
console.log(`${verdicts.length - failed} within floors, ${failed} below or missing`)
process.exitCode = failed > 0 ? 1 : 0
