import type { ServerResponse } from 'node:http'
import { performance } from 'node:perf_hooks'
import { NarBackendError, NarNotFoundError, parseNarHash, type NarBackend, type TurnPacer } from '@narrace/core'
import type { Logger } from 'pino'
import type { Counter } from 'prom-client'
import { clientGone, sendBody } from './send.js'
import type { ServedNarInfo } from './served-narinfo.js'

/**
 * A compressed file with no FileHash is cut past NarSize plus this share of it (and the fixed slack
 * below): no compressor Nix uses grows a NAR by more than a few bytes per block. @default 1/16
 */
export const UNVERIFIED_OVERHEAD_RATIO = 1 / 16
/** @default 64 KiB */
export const UNVERIFIED_OVERHEAD_BYTES = 64 * 1024

/** The most bytes a file with no FileHash may have: its FileSize, else NarSize plus compression overhead. */
export function unverifiedBound(served: ServedNarInfo): number {
  const { fileSize, narSize } = served.narInfo
  return fileSize ?? narSize + Math.ceil(narSize * UNVERIFIED_OVERHEAD_RATIO) + UNVERIFIED_OVERHEAD_BYTES
}

export interface UnverifiedContext {
  /** The backend of the upstream that served the narinfo. */
  backend: NarBackend
  logger: Logger
  /** `narrace_nar_requests_total`: counted with `outcome="unverified"`. */
  requests: Counter<'outcome'>
  /** The proxy's pacer of response bodies. */
  pacer: TurnPacer
  /** A client whose socket does not drain for this long is cut, and the upstream request with it. */
  clientTimeoutMs: number
}

/** The body, failing once it passes `bound` bytes, so that the client sees a cut transfer. */
async function* bounded(body: AsyncIterable<Uint8Array>, bound: number, name: string): AsyncGenerator<Uint8Array> {
  let bytes = 0
  for await (const chunk of body) {
    bytes += chunk.length
    if (bytes > bound) throw new NarBackendError(`${name}: more than the ${bound} bytes the narinfo allows`)
    yield chunk
  }
}

/**
 * Serves a compressed NAR whose narinfo gave no FileHash: narrace can't verify it, so it comes only from
 * the upstream that served that narinfo, under that upstream's URL, and goes through as it is (Nix checks
 * the NarHash when it unpacks it). Bounded by unverifiedBound; counted and logged as `unverified`.
 */
export async function serveUnverifiedNar(
  served: ServedNarInfo,
  res: ServerResponse,
  head: boolean,
  signal: AbortSignal,
  context: UnverifiedContext,
): Promise<void> {
  const { backend, logger, requests, pacer, clientTimeoutMs } = context
  const started = performance.now()
  const bound = unverifiedBound(served)
  const line = { storePath: served.narInfo.storePath, upstream: served.upstream, url: served.narInfo.url }
  let bytes = 0
  let outcome = 'unverified'
  let failure: unknown
  try {
    // The NarHash only names the request for the backend: the URL says where the file is.
    const source = await backend.fetch(parseNarHash(served.narInfo.narHash), {
      signal,
      url: served.narInfo.url,
      ...(served.narInfo.fileSize === undefined ? {} : { size: served.narInfo.fileSize }),
    })
    const headers: Record<string, string> = { 'content-type': 'application/x-nix-nar' }
    if (source.size !== undefined && source.size <= bound) headers['content-length'] = String(source.size)
    if (head) {
      res.writeHead(200, headers)
      await source.body[Symbol.asyncIterator]().return?.()
      res.end()
    } else {
      const progress = { bytes: 0 }
      try {
        await sendBody(res, headers, bounded(source.body, bound, backend.name), pacer, signal, { progress, clientTimeoutMs })
      } finally {
        bytes = progress.bytes
      }
    }
  } catch (error) {
    failure = error
    outcome = clientGone(error, signal) ? 'aborted' : error instanceof NarNotFoundError ? 'not_found' : 'failed'
    if (res.headersSent) res.destroy()
    else if (!signal.aborted) {
      const text = `${error instanceof Error ? error.message : String(error)}\n`
      res.writeHead(outcome === 'not_found' ? 404 : 503, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) })
      res.end(head ? undefined : text)
    }
  }
  requests.inc({ outcome })
  const entry = {
    ...line,
    ...(head ? { method: 'HEAD' } : {}),
    outcome,
    verified: false,
    bytes,
    ms: Math.round(performance.now() - started),
    ...(failure === undefined ? {} : { error: failure instanceof Error ? failure.message : String(failure) }),
  }
  if (outcome === 'unverified' || outcome === 'aborted') logger.info(entry, 'nar')
  else logger.warn(entry, 'nar')
}
