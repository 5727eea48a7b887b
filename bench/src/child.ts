import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
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

/** A child process that answers requests: `call` sends one and resolves with its reply. */
export interface ChildRpc<Request> {
  /** What the child sent first, once it was ready. */
  readonly ready: unknown
  call<T>(request: Request): Promise<T>
  close(): Promise<void>
}

/**
 * Forks `name` and talks to it by request and reply, each with an id. The child sends `{ ready }` first,
 * then `{ id, result }` or `{ id, error }` for each request (see {@link answerParent}).
 */
export async function spawnRpc<Request extends object>(name: string, args: string[] = []): Promise<ChildRpc<Request>> {
  const child = forkEntry(name, args)
  const pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>()
  let next = 0
  child.on('message', (message: { id: number; result?: unknown; error?: string } | { ready: unknown }) => {
    if ('ready' in message) return
    const waiter = pending.get(message.id)
    pending.delete(message.id)
    if (message.error !== undefined) waiter?.reject(new Error(message.error))
    else waiter?.resolve(message.result)
  })
  child.once('exit', (code) => {
    for (const waiter of pending.values()) waiter.reject(new Error(`bench ${name} exited with ${code}`))
    pending.clear()
  })
  const [ready] = (await once(child, 'message')) as [{ ready: unknown }]
  return {
    ready: ready.ready,
    call: <T>(request: Request): Promise<T> =>
      new Promise<T>((resolve, reject) => {
        const id = next++
        pending.set(id, { resolve: resolve as (value: unknown) => void, reject })
        child.send({ ...request, id })
      }),
    async close() {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      await exited
    },
  }
}

/**
 * The child's side of {@link spawnRpc}: answers each request with `handle`, exits when the parent goes,
 * and runs `close` before it exits on SIGTERM.
 */
export function answerParent<Request extends { id: number }>(
  ready: unknown,
  handle: (request: Request) => Promise<unknown>,
  close: () => Promise<unknown>,
): void {
  process.on('message', (request: Request) => {
    handle(request).then(
      (result) => process.send!({ id: request.id, result }),
      (error: unknown) => process.send!({ id: request.id, error: String(error) }),
    )
  })
  // An orphan (the bench crashed) must not keep running.
  process.once('disconnect', () => process.exit(0))
  process.once('SIGTERM', () => {
    close().finally(() => process.exit(0))
  })
  process.send!({ ready })
}
