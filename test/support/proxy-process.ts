/** The built proxy command, `node examples/proxy/dist/main.js`, run as a user runs it. */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export const main = fileURLToPath(new URL('../../examples/proxy/dist/main.js', import.meta.url))
/** Whether the proxy is built; the tests that run it skip, saying so, when it is not. */
export const built = existsSync(main)

/** Without --index the proxy keeps the CLI's default index file: never the real one of whoever runs the tests. */
const hermetic: NodeJS.ProcessEnv = { ...process.env, NARRACE_INDEX: ':memory:' }

export function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [main, ...args], { encoding: 'utf8', timeout: 20_000, env: hermetic })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

/** `run`, without blocking this process: for a proxy that must reach a server the test runs. */
export function runAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [main, ...args], { encoding: 'utf8', timeout: 20_000, env: hermetic }, (error, stdout, stderr) => {
      const code = (error as { code?: unknown } | null)?.code
      resolve({ status: error ? (typeof code === 'number' ? code : null) : 0, stdout, stderr })
    })
  })
}

/** A proxy process, and what it wrote to stdout so far, one string per line. */
export interface RunningProxy {
  child: ChildProcess
  url: string
  stdout: string[]
  /** Sends `signal` (SIGTERM by default) and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>
}

/** Where a proxy runs: a command it is started under (`ip netns exec NS`) and the address it listens on. */
export interface ProxyPlace {
  wrap?: string[]
  /** @default '127.0.0.1:0' */
  listen?: string
}

/** Starts the proxy and reads its address from the first line it writes, as a script would. */
export async function startProxy(args: string[], env: NodeJS.ProcessEnv = hermetic, place: ProxyPlace = {}): Promise<RunningProxy> {
  const [command, ...prefix] = [...(place.wrap ?? []), process.execPath]
  const child = spawn(command!, [...prefix, main, '--listen', place.listen ?? '127.0.0.1:0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
  })
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (data: Buffer) => (stdout += data.toString()))
  child.stderr!.on('data', (data: Buffer) => (stderr += data.toString()))
  const exited = once(child, 'exit')
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no address within 20 s:\n${stdout}${stderr}`)), 20_000)
    const onData = (): void => {
      const match = /listening on (http:\/\/[\d.]+:\d+) /.exec(stdout)
      if (match) {
        clearTimeout(timer)
        child.stdout!.off('data', onData)
        resolve(match[1]!)
      }
    }
    child.stdout!.on('data', onData)
    void exited.then(([code]) => {
      clearTimeout(timer)
      reject(new Error(`the proxy exited with ${code}:\n${stdout}${stderr}`))
    }, reject)
  })
  return {
    child,
    url,
    get stdout() {
      return stdout.split('\n').filter((line) => line !== '')
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null) child.kill(signal)
      const [code] = (await exited) as [number | null]
      return code
    },
  }
}

