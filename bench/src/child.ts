import { fork, type ChildProcess } from 'node:child_process'
import { extname } from 'node:path'

/**
 * Forks `bench/src/<name>.ts` (or `dist/<name>.js` when built) as a Node child with an IPC channel.
 * From sources the child needs the same TypeScript loader as the parent.
 */
export function forkEntry(name: string, args: string[] = []): ChildProcess {
  const here = new URL(import.meta.url)
  const ext = extname(here.pathname)
  const entry = new URL(`./${name}${ext}`, here)
  const execArgv = ext === '.ts' ? ['--import', import.meta.resolve('tsx')] : []
  return fork(entry, args, { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
}
