import type { ScenarioResult } from './results.js'

/** What a scenario gets from the runner. */
export interface ScenarioContext {
  signal: AbortSignal
  /** Progress lines go to stderr, so stdout stays for the summary. */
  log(line: string): void
}

/** What a scenario returns; the runner adds the machine, the date and the duration. */
export type ScenarioOutput = Pick<ScenarioResult, 'assumptions' | 'ratios' | 'tables' | 'notMeasured' | 'samples'>

/** One `pnpm bench <name>`. */
export interface Scenario {
  name: string
  title: string
  run(context: ScenarioContext): Promise<ScenarioOutput>
}
