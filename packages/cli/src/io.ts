import type { ProgressOutput } from './progress.js'

/** Where a command writes: results to `stdout`, progress and errors to `stderr`. */
export interface CommandIO {
  stdout: ProgressOutput
  stderr: ProgressOutput
  /** Fires on Ctrl-C; every command stops promptly and cleans up. */
  signal?: AbortSignal
}
