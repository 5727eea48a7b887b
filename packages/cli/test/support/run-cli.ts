import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** The built `narrace` binary; tests that spawn it need `pnpm build` first. */
export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url))

export interface CliRun {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Fails with the command to run when the CLI has not been built, rather than with a confusing spawn error. */
export function requireBuiltCli(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`pnpm build\` (or \`pnpm --filter narrace... build\`) first`)
}

/** Starts the built CLI with this Node (24 under `pnpm exec vitest`). */
export function startCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  stdin: 'ignore' | 'pipe' = 'ignore',
): ChildProcess & { done: Promise<CliRun> } {
  requireBuiltCli()
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...env },
    stdio: [stdin, 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d))
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d))
  const done = new Promise<CliRun>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
  return Object.assign(child, { done })
}

/** Runs the built CLI to the end; a run longer than `timeoutMs` is killed and fails the test. */
export async function runCli(args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliRun> {
  const child = startCli(args, options.env)
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000)
  try {
    const run = await child.done
    if (run.signal === 'SIGKILL') throw new Error(`narrace ${args.join(' ')} did not finish in time:\n${run.stderr}`)
    return run
  } finally {
    clearTimeout(timer)
  }
}
