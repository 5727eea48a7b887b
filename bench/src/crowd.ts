import { request as httpRequest } from 'node:http'
import { answerParent, spawnRpc } from './child.js'
import { epochNow } from './poll.js'

/** Every client waits at most this long; a load never runs unbounded. */
export const CLIENT_TIMEOUT_MS = 120_000

/** What a client got: the status, the bytes read, whether the body was whole, and when its head came (ms since the epoch; null with none). */
export interface Fetched {
  status: number
  bytes: number
  complete: boolean
  headAt: number | null
}

/** GETs a URL over its own connection and reads it all; with `hangUpAfter`, hangs up once that many bytes came. */
export function fetchAll(url: string, hangUpAfter?: number): Promise<Fetched> {
  return new Promise((resolve) => {
    const req = httpRequest(url, { agent: false, timeout: CLIENT_TIMEOUT_MS })
    let bytes = 0
    let headAt: number | null = null
    req.once('error', () => resolve({ status: 0, bytes, complete: false, headAt }))
    req.once('timeout', () => req.destroy())
    req.once('response', (res) => {
      headAt = epochNow()
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length
        if (hangUpAfter !== undefined && bytes >= hangUpAfter) req.destroy()
      })
      res.once('close', () => resolve({ status: res.statusCode ?? 0, bytes, complete: res.complete, headAt }))
    })
    req.end()
  })
}

/**
 * Clients in a process of their own, at the bench's priority: its small heap and event loop carry only
 * them, not the bench's results, its children's channels nor the poller's timing.
 */
export interface Crowd {
  /** `clients` GETs of `url` at once, each over its own connection, read whole. */
  fetch(url: string, clients: number): Promise<Fetched[]>
  close(): Promise<void>
}

type Call = { op: 'fetch'; url: string; clients: number }

export async function spawnCrowd(): Promise<Crowd> {
  const child = await spawnRpc<Call>('crowd-main')
  return {
    fetch: (url, clients) => child.call<Fetched[]>({ op: 'fetch', url, clients }),
    close: () => child.close(),
  }
}

/** The body of the child process started by {@link spawnCrowd}. */
export function crowdFromChild(): void {
  answerParent<Call & { id: number }>(
    true,
    ({ url, clients }) => Promise.all(Array.from({ length: clients }, () => fetchAll(url))),
    async () => undefined,
  )
}
