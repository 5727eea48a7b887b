import type { ServerResponse } from 'node:http'
import { parseNarHash, TurnPacer, type NarHash } from '@narrace/core'
import { formatLocation, type NarIndex } from '@narrace/index'
import { clientGone, DEFAULT_TURN_BYTES, sendBody, WRITE_SLICE_BYTES, type SendOptions } from './send.js'

/** Where a proxy serves its mappings to peers. */
export const MAPPINGS_PATH = '/narrace/v1/mappings'
/** Lines one `?since=` answer holds at most; a peer asks again from the last `updatedAt` for more. @default 10000 */
export const MAX_MAPPINGS_PER_ANSWER = 10_000
const NDJSON_TYPE = 'application/x-ndjson'
/** How long a `?since=` answer waits for queued index writes before it answers without them. @default 1000 */
const FLUSH_WAIT_MS = 1000

export type MappingsRoute =
  | { kind: 'mapping'; fileHash: NarHash }
  | { kind: 'mappings'; since: string }
  | { kind: 'reject'; status: 400 | 404; reason: string }

/**
 * Routes `GET /narrace/v1/mappings/<FileHash>` (nix32, `sha256:<nix32>` or hex) and
 * `GET /narrace/v1/mappings?since=<ISO 8601 time>`; undefined for any other path.
 */
export function routeMappings(pathname: string, query: string): MappingsRoute | undefined {
  if (pathname === MAPPINGS_PATH) {
    // Not URLSearchParams: it reads '+' as a space, and '+01:00' is a time zone here.
    const match = /^since=([^&=]+)$/.exec(query)
    let since: string
    try {
      since = decodeURIComponent(match?.[1] ?? '')
    } catch {
      since = ''
    }
    if (since === '') return { kind: 'reject', status: 400, reason: 'mappings needs ?since=<ISO time>' }
    const time = Date.parse(since)
    if (!/^\d{4}-\d\d-\d\d/.test(since) || Number.isNaN(time)) return { kind: 'reject', status: 400, reason: `'${since}' is not an ISO time` }
    return { kind: 'mappings', since: new Date(time).toISOString() }
  }
  if (!pathname.startsWith(`${MAPPINGS_PATH}/`)) return undefined
  if (query !== '') return { kind: 'reject', status: 404, reason: 'no such resource' }
  try {
    return { kind: 'mapping', fileHash: parseNarHash(pathname.slice(MAPPINGS_PATH.length + 1)) }
  } catch {
    return { kind: 'reject', status: 400, reason: 'not a FileHash' }
  }
}

/** One mapping as one NDJSON line (the `narrace index export` format), or 404. Gone mappings are served too: peers learn it. */
export function serveMapping(index: NarIndex, fileHash: NarHash, res: ServerResponse, head: boolean): void {
  const location = index.get(fileHash)
  if (!location) {
    const body = 'no mapping\n'
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) })
    res.end(head ? undefined : body)
    return
  }
  const body = `${formatLocation(location)}\n`
  res.writeHead(200, { 'content-type': NDJSON_TYPE, 'content-length': Buffer.byteLength(body) })
  res.end(head ? undefined : body)
}

/**
 * Up to `MAX_MAPPINGS_PER_ANSWER` lines of `lines`, joined into chunks of whole lines that each fit one
 * write slice (a longer line is a chunk of its own): a cut answer ends at a line's end more often.
 */
async function* batched(lines: AsyncIterable<string>): AsyncGenerator<Uint8Array> {
  let count = 0
  let batch = ''
  for await (const line of lines) {
    if (count++ >= MAX_MAPPINGS_PER_ANSWER) break
    if (batch && Buffer.byteLength(batch) + Buffer.byteLength(line) + 1 > WRITE_SLICE_BYTES) {
      yield Buffer.from(batch)
      batch = ''
    }
    batch += `${line}\n`
  }
  if (batch) yield Buffer.from(batch)
}

/**
 * Every mapping changed at or after `since`, oldest first, as NDJSON, at most `MAX_MAPPINGS_PER_ANSWER`
 * lines. Written at the client's pace: a client that does not read holds one socket buffer, not the
 * index, and one whose socket does not drain for the client timeout is cut, as is one that goes away:
 * a cut answer never ends as if complete.
 */
export async function serveMappingsSince(
  index: NarIndex,
  since: string,
  res: ServerResponse,
  head: boolean,
  signal: AbortSignal,
  send: { pacer?: TurnPacer } & Pick<SendOptions, 'clientTimeoutMs'> = {},
): Promise<void> {
  const headers = { 'content-type': NDJSON_TYPE }
  if (head) {
    res.writeHead(200, headers)
    res.end()
    return
  }
  // Writes the index still queues would be missing from the export; a locked index makes the answer late, never stuck.
  await index.flush({ signal: AbortSignal.any([signal, AbortSignal.timeout(FLUSH_WAIT_MS)]) }).catch(() => {})
  const pacer = send.pacer ?? new TurnPacer(DEFAULT_TURN_BYTES)
  try {
    await sendBody(res, headers, batched(index.exportSince(since)), pacer, signal, { clientTimeoutMs: send.clientTimeoutMs })
  } catch (error) {
    res.destroy()
    // A client that went away or stopped reading is no fault of the index; anything else is logged above.
    if (clientGone(error, signal)) return
    throw error
  }
}
