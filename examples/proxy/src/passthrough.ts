import type { ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { NarBackendError, NarNotFoundError, NarUnavailableError } from '@narrace/core'
import type { Logger } from 'pino'
import { Counter, type Registry } from 'prom-client'
import { request, type Dispatcher } from 'undici'

/** A passthrough file (build log, listing, realisation, debuginfo) larger than this is cut. @default 64 MiB */
export const DEFAULT_MAX_PASSTHROUGH_BYTES = 64 * 1024 * 1024
/** No upstream answering with a status line within this long counts as failed. @default 10000 */
export const DEFAULT_PASSTHROUGH_HEADERS_TIMEOUT_MS = 10_000
/** A body that sends nothing for this long is cut. @default 30000 (resolveNar's stall timeout) */
export const DEFAULT_PASSTHROUGH_BODY_TIMEOUT_MS = 30_000

/** An upstream a passthrough request may go to. */
export interface PassthroughUpstream {
  /** The cache URL, with a trailing slash: the file is asked for under its path. */
  url: string
  /** The upstream's own dispatcher: its connections, its credentials (on its own origin only), its checks. */
  dispatcher: Dispatcher
}

/** The key under which an httpBackend carries its upstream (`@narrace/http` shares it with resolveNarInfo). */
const kUpstream = Symbol.for('@narrace/http/upstream')

/**
 * The dispatcher of an httpBackend's upstream: every request through it gets the upstream's credentials
 * on its own origin and nowhere else, and the origin, prefix and address checks. Throws when the backend
 * carries none, rather than sending a request without them.
 */
export function upstreamDispatcher(backend: object): Dispatcher {
  const dispatcher = (backend as { [kUpstream]?: { dispatcher?: Dispatcher } })[kUpstream]?.dispatcher
  if (!dispatcher) throw new TypeError('an httpBackend without its upstream: @narrace/http changed what it shares')
  return dispatcher
}

export interface PassthroughOptions {
  upstreams: readonly PassthroughUpstream[]
  signal: AbortSignal
  /** @default DEFAULT_MAX_PASSTHROUGH_BYTES */
  maxBytes?: number
  /** @default DEFAULT_PASSTHROUGH_HEADERS_TIMEOUT_MS */
  headersTimeoutMs?: number
}

/** The upstream answer that won: stream `body` to the client with `headers`. */
export interface PassthroughAnswer {
  upstream: string
  /** Content-Type, Content-Encoding and (when within the cap) Content-Length, as the upstream sent them. */
  headers: Record<string, string>
  /** The body, ending in an error (never cleanly) once it passes the cap. */
  body: AsyncIterable<Uint8Array>
  /** Ends the upstream request. */
  cancel(): void
}

const NOT_FOUND = new Set([401, 403, 404, 410])
const noop = (): void => {}

function header(value: string | string[] | undefined): string | undefined {
  return typeof value === 'string' && !/[\r\n]/.test(value) ? value : undefined
}

/**
 * Asks every upstream for `target` (a path relative to the cache, already validated) at once; the first
 * 200 wins and the others are aborted. Redirects go only where the upstream's own checks allow (its
 * origin and path, or its `allowedOrigins`), without credentials off its origin. The bytes are not
 * verified (nothing signs them): they stream through, cut at
 * `maxBytes`. Rejects with NarNotFoundError when every upstream said it has no such file, otherwise with
 * NarUnavailableError listing each upstream's error.
 */
export async function racePassthrough(target: string, options: PassthroughOptions): Promise<PassthroughAnswer> {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_PASSTHROUGH_BYTES
  const controllers = options.upstreams.map(() => new AbortController())
  const attempts = options.upstreams.map(async (upstream, i): Promise<PassthroughAnswer> => {
    const url = new URL(target, upstream.url)
    const signal = AbortSignal.any([options.signal, controllers[i]!.signal])
    let response: Dispatcher.ResponseData
    try {
      response = await request(url, {
        dispatcher: upstream.dispatcher,
        method: 'GET',
        signal,
        headersTimeout: options.headersTimeoutMs ?? DEFAULT_PASSTHROUGH_HEADERS_TIMEOUT_MS,
        bodyTimeout: DEFAULT_PASSTHROUGH_BODY_TIMEOUT_MS,
      })
    } catch (error) {
      throw new NarBackendError(`${upstream.url}: ${(error as Error).message} (${url.href})`, { backend: upstream.url, cause: error })
    }
    const { statusCode, headers, body } = response
    body.on('error', noop)
    const length = Number(header(headers['content-length']) ?? NaN)
    if (statusCode !== 200 || length > maxBytes) {
      body.dump().catch(noop)
      if (NOT_FOUND.has(statusCode)) throw new NarNotFoundError(`${upstream.url}: HTTP ${statusCode} for ${url.href}`)
      const why = statusCode === 200 ? `${length} bytes, over the ${maxBytes}-byte cap` : `HTTP ${statusCode}`
      throw new NarBackendError(`${upstream.url}: ${why} for ${url.href}`, { backend: upstream.url, status: statusCode })
    }
    const out: Record<string, string> = {}
    for (const name of ['content-type', 'content-encoding', 'content-length']) {
      const value = header(headers[name])
      if (value !== undefined) out[name] = value
    }
    return { upstream: upstream.url, headers: out, body: capped(body, maxBytes, url.href), cancel: () => body.destroy() }
  })

  try {
    const winner = await Promise.any(attempts)
    controllers.forEach((controller, i) => {
      if (options.upstreams[i]!.url !== winner.upstream) controller.abort(new Error('another upstream answered first'))
    })
    return winner
  } catch (error) {
    options.signal.throwIfAborted()
    const errors = error instanceof AggregateError ? error.errors : [error]
    const reasons = errors.map((e) => (e instanceof Error ? e.message : String(e))).join('; ')
    if (errors.every((e) => e instanceof NarNotFoundError)) throw new NarNotFoundError(`no upstream has ${target}`, { errors })
    throw new NarUnavailableError(`no upstream could give ${target}: ${reasons}`, { errors })
  }
}

/** The body, failing once more than `maxBytes` have come, so that the client sees a cut transfer. */
async function* capped(body: Readable, maxBytes: number, url: string): AsyncGenerator<Uint8Array> {
  let bytes = 0
  try {
    for await (const chunk of body as AsyncIterable<Uint8Array>) {
      bytes += chunk.length
      if (bytes > maxBytes) throw new NarBackendError(`${url} is longer than ${maxBytes} bytes: cut`)
      yield chunk
    }
  } finally {
    body.destroy()
  }
}

/** What servePassthrough needs from the proxy. */
export interface PassthroughContext extends Omit<PassthroughOptions, 'signal'> {
  logger: Logger
  counter: Counter<'kind' | 'outcome'>
}

/** `narrace_passthrough_requests_total{kind, outcome}`, in the proxy's registry. */
export function passthroughCounter(registry: Registry): Counter<'kind' | 'outcome'> {
  return new Counter({
    name: 'narrace_passthrough_requests_total',
    help: 'Build logs, .ls listings, realisations, build traces and debuginfo passed through, by kind and outcome',
    labelNames: ['kind', 'outcome'] as const,
    registers: [registry],
  })
}

/**
 * Answers one passthrough request: the first upstream's 200 streams through with its Content-Type and
 * Content-Encoding; 404 when every upstream said it has no such file, 503 when one could not be asked.
 * A body cut at the cap, or by the upstream, breaks the client's connection instead of ending it.
 */
export async function servePassthrough(
  route: { what: string; target: string },
  res: ServerResponse,
  head: boolean,
  signal: AbortSignal,
  context: PassthroughContext,
): Promise<void> {
  const { logger, counter } = context
  const count = (outcome: string): void => counter.inc({ kind: route.what, outcome })
  let answer: PassthroughAnswer
  try {
    answer = await racePassthrough(route.target, { ...context, signal })
  } catch (error) {
    if (signal.aborted) return count('aborted')
    const notFound = error instanceof NarNotFoundError
    count(notFound ? 'not_found' : 'failed')
    if (!notFound) logger.warn({ target: route.target, err: error }, 'passthrough failed')
    const text = notFound ? 'not found\n' : `${(error as Error).message}\n`
    res.writeHead(notFound ? 404 : 503, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) })
    res.end(head ? undefined : text)
    return
  }
  res.writeHead(200, answer.headers)
  if (head) {
    answer.cancel()
    res.end()
    return count('ok')
  }
  try {
    await pipeline(Readable.from(answer.body, { objectMode: false }), res)
    count('ok')
  } catch (error) {
    res.destroy()
    if (signal.aborted) return count('aborted')
    count('cut')
    logger.warn({ target: route.target, upstream: answer.upstream, err: error }, 'passthrough cut')
  }
}
