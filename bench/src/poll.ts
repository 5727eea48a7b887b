import { request as httpRequest } from 'node:http'
import { answerParent, spawnRpc } from './child.js'
import { quantile } from './stats.js'

/** One answer: when it was asked (ms since the epoch, comparable between processes) and its time in ms. */
export interface Poll {
  at: number
  ms: number
}

/** What a poller saw: how many answers, and their times in ms. */
export interface PollResult {
  count: number
  failed: number
  worstMs: number
  p50Ms: number
  p99Ms: number
  polls: Poll[]
}

/** The slowest of the answers asked in `[from, to)` (ms since the epoch); 0 with none. */
export function worstBetween(polls: Poll[], from: number, to = Infinity): number {
  let worst = 0
  for (const poll of polls) if (poll.at >= from && poll.at < to) worst = Math.max(worst, poll.ms)
  return worst
}

/** Now, in ms since the epoch, at sub-millisecond resolution: what {@link Poll.at} is measured in. */
export const epochNow = (): number => performance.timeOrigin + performance.now()

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

function timeOne(url: string): Promise<{ at: number; ms: number; ok: boolean }> {
  return new Promise((resolve) => {
    const at = epochNow()
    const t0 = performance.now()
    const req = httpRequest(url, { agent: false, timeout: 60_000 })
    req.once('timeout', () => req.destroy())
    req.once('error', () => resolve({ at, ms: performance.now() - t0, ok: false }))
    req.once('response', (res) => {
      res.resume()
      res.once('close', () => resolve({ at, ms: performance.now() - t0, ok: res.statusCode === 200 && res.complete }))
    })
    req.end()
  })
}

/** The body of the child process started by {@link spawnPoller}. */
export async function pollFromChild(): Promise<void> {
  const url = process.argv[2]!
  const everyMs = Number(process.argv[3] ?? 20)
  const polls: Poll[] = []
  let failed = 0
  let stopped = false
  // One untimed request first, before the parent hears it is ready: a new process's first one also times
  // its own loading of the client, and it must not take the place of the first timed one in a burst.
  await timeOne(url)
  const loop = (async () => {
    while (!stopped) {
      const { at, ms, ok } = await timeOne(url)
      polls.push({ at, ms })
      if (!ok) failed++
      await new Promise((resolve) => setTimeout(resolve, everyMs))
    }
  })()
  answerParent<Call & { id: number }>(
    url,
    async () => {
      stopped = true
      await loop
      const times = polls.map((poll) => poll.ms)
      return {
        count: times.length,
        failed,
        worstMs: Math.max(0, ...times),
        p50Ms: times.length > 0 ? quantile(times, 0.5) : 0,
        p99Ms: times.length > 0 ? quantile(times, 0.99) : 0,
        polls,
      } satisfies PollResult
    },
    async () => {
      stopped = true
      await loop
    },
  )
}
