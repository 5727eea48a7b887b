import { once } from 'node:events'
import { forkEntry } from './child.js'
import { writeResult } from './results.js'
import type { Scenario } from './scenario.js'
import { SCENARIOS } from './scenarios/index.js'

/**
 * `pnpm bench [scenario …]`: runs the named scenarios (all by default) and writes
 * `bench/results/<scenario>.json` for each. One scenario runs in this process; several run one after
 * another, each in a fresh child, so that none inherits another's heap, sockets or timers. Ctrl-C aborts.
 */
const names = process.argv.slice(2).filter((arg) => arg !== '--')
const unknown = names.filter((name) => !SCENARIOS.some((s) => s.name === name))
if (unknown.length > 0) {
  console.error(`unknown scenario: ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}`)
  process.exit(2)
}
const chosen: Scenario[] = names.length === 0 ? SCENARIOS : SCENARIOS.filter((s) => names.includes(s.name))
const controller = new AbortController()
process.once('SIGINT', () => controller.abort(new Error('interrupted')))

async function runHere(scenario: Scenario): Promise<boolean> {
  const started = performance.now()
  console.error(`\n== ${scenario.title}`)
  try {
    const output = await scenario.run({ signal: controller.signal, log: (line) => console.error(`  ${line}`) })
    const durationMs = performance.now() - started
    const path = await writeResult({ scenario: scenario.name, title: scenario.title, durationMs, ...output })
    for (const ratio of output.ratios) console.log(`${ratio.id}\t${ratio.value ?? 'not measured'}\t${ratio.label}`)
    for (const line of output.notMeasured) console.log(`${scenario.name}\tnot measured: ${line}`)
    console.error(`  ${(durationMs / 1000).toFixed(1)} s → bench/results/${path.split(/[\\/]/).pop()}`)
    return true
  } catch (error) {
    console.error(`  ${scenario.name} failed:`, error)
    return false
  }
}

async function runInChild(scenario: Scenario): Promise<boolean> {
  const child = forkEntry('main', [scenario.name])
  const onAbort = (): void => void child.kill('SIGINT')
  controller.signal.addEventListener('abort', onAbort, { once: true })
  try {
    const [code] = (await once(child, 'exit')) as [number | null]
    return code === 0
  } finally {
    controller.signal.removeEventListener('abort', onAbort)
  }
}

let failed = 0
const t0 = performance.now()
for (const scenario of chosen) {
  const ok = chosen.length === 1 ? await runHere(scenario) : await runInChild(scenario)
  if (!ok) failed++
  if (controller.signal.aborted) break
}
if (chosen.length > 1) {
  console.error(`\n${chosen.length - failed} scenario(s) done, ${failed} failed, ${((performance.now() - t0) / 1000).toFixed(0)} s`)
}
process.exitCode = failed > 0 ? 1 : 0
