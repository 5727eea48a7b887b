import { request as httpRequest } from 'node:http'
import { answerParent, spawnRpc } from './child.js'
import { quantile } from './stats.js'

/** What a poller saw: how many answers, and their times in ms. */
export interface PollResult {
  count: number
  failed: number
  worstMs: number
  p50Ms: number
  p99Ms: number
}

/** A poller in a process of its own: `stop()` ends the polling and resolves with what it saw. */
export interface Poller {
  stop(): Promise<PollResult>
}

type Call = { op: 'stop' }

/**
 * Asks `url` (a small route) every `everyMs`, each time over a new connection, from a child process,
 * until `stop()`. Its own process keeps the measure clear of the bench's event loop, which is busy
 * reading hundreds of bodies in the same run: an answer is timed as a client of its own (Nix) sees it.
 */
export async function spawnPoller(url: string, everyMs = 20): Promise<Poller> {
  const child = await spawnRpc<Call>('poll-main', [url, String(everyMs)])
  return {
    async stop() {
      const result = await child.call<PollResult>({ op: 'stop' })
      await child.close()
      return result
    },
  }
}

function timeOne(url: string): Promise<{ ms: number; ok: boolean }> {
  return new Promise((resolve) => {
    const t0 = performance.now()
    const req = httpRequest(url, { agent: false, timeout: 60_000 })
    req.once('timeout', () => req.destroy())
    req.once('error', () => resolve({ ms: performance.now() - t0, ok: false }))
    req.once('response', (res) => {
      res.resume()
      res.once('close', () => resolve({ ms: performance.now() - t0, ok: res.statusCode === 200 && res.complete }))
    })
    req.end()
  })
}

/** The body of the child process started by {@link spawnPoller}. */
export async function pollFromChild(): Promise<void> {
  const url = process.argv[2]!
  const everyMs = Number(process.argv[3] ?? 20)
  const times: number[] = []
  let failed = 0
  let stopped = false
  const loop = (async () => {
    // One untimed request first: a new process's first one also times its own loading of the client.
    await timeOne(url)
    while (!stopped) {
      const { ms, ok } = await timeOne(url)
      times.push(ms)
      if (!ok) failed++
      await new Promise((resolve) => setTimeout(resolve, everyMs))
    }
  })()
  answerParent<Call & { id: number }>(
    url,
    async () => {
      stopped = true
      await loop
      return {
        count: times.length,
        failed,
        worstMs: Math.max(0, ...times),
        p50Ms: times.length > 0 ? quantile(times, 0.5) : 0,
        p99Ms: times.length > 0 ? quantile(times, 0.99) : 0,
      } satisfies PollResult
    },
    async () => {
      stopped = true
      await loop
    },
  )
}
