import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Floor } from './check.js'
import { buildReport } from './report.js'
import { BENCH_DIR, readResults } from './results.js'

/** `pnpm bench:report`: rewrites bench/README.md and bench/charts/*.svg from bench/results. */
const floors = JSON.parse(await readFile(join(BENCH_DIR, 'floors.json'), 'utf8')) as Record<string, Floor>
const report = await buildReport(await readResults(), floors)
await mkdir(join(BENCH_DIR, 'charts'), { recursive: true })
for (const [name, svg] of Object.entries(report.charts)) await writeFile(join(BENCH_DIR, 'charts', name), svg)
await writeFile(join(BENCH_DIR, 'README.md'), report.markdown)
console.log(`bench/README.md and ${Object.keys(report.charts).length} chart(s) written`)
