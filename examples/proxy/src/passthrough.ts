import type { ServerResponse } from 'node:http'
import type { Readable } from 'node:stream'
import {
  DEFAULT_MIN_BYTES_PER_SECOND,
  DEFAULT_STALL_TIMEOUT_MS,
  NarBackendError,
  NarNotFoundError,
  NarStallError,
  NarUnavailableError,
  type TurnPacer,
} from '@narrace/core'
import type { Logger } from 'pino'
import { Counter, type Registry } from 'prom-client'
import { request, type Dispatcher } from 'undici'
import { clientGone, MAX_TIMER_MS, sendBody } from './send.js'

/** A passthrough file (build log, listing, realisation, debuginfo) larger than this is cut. @default 64 MiB */
export const DEFAULT_MAX_PASSTHROUGH_BYTES = 64 * 1024 * 1024
/** No upstream answering with a status line within this long counts as failed. @default 10000 */
export const DEFAULT_PASSTHROUGH_HEADERS_TIMEOUT_MS = 10_000
/** With the rate watch off (`stallTimeoutMs: Infinity`), a body that sends nothing for this long is still cut. */
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
  /** A body waited on this long for fewer than `minBytesPerSecond` on average is cut; Infinity turns this off. @default resolveNar's */
  stallTimeoutMs?: number
  /** @default resolveNar's (1 KiB/s, like the low-speed limit Nix gives curl) */
  minBytesPerSecond?: number
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
/** An error page longer than this is not read to its end (undici's own default): the connection goes instead. */
const DRAIN_LIMIT_BYTES = 128 * 1024
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
  const stallMs = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS
  const minRate = options.minBytesPerSecond ?? DEFAULT_MIN_BYTES_PER_SECOND
  // A stall timeout of Infinity or 0 turns both off: a silent body is then still cut after 30 s. One past
  // setTimeout's longest delay turns the rate watch off, and the silence bound stops at that delay.
  const bounded = Number.isFinite(stallMs) && stallMs > 0
  const silentMs = bounded ? Math.min(stallMs, MAX_TIMER_MS) : DEFAULT_PASSTHROUGH_BODY_TIMEOUT_MS
  const watchMs = bounded && stallMs <= MAX_TIMER_MS ? stallMs : Infinity
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
        // No byte for this long, while the body is read, cuts it: the rate watch below only looks at whole windows.
        bodyTimeout: silentMs,
      })
    } catch (error) {
      throw new NarBackendError(`${upstream.url}: ${(error as Error).message} (${url.href})`, { backend: upstream.url, cause: error })
    }
    const { statusCode, headers, body } = response
    body.on('error', noop)
    const length = Number(header(headers['content-length']) ?? NaN)
    if (statusCode !== 200 || length > maxBytes) {
      // An error page that trickles must not hold one of the upstream's pooled connections for long.
      body.dump({ limit: DRAIN_LIMIT_BYTES, signal: AbortSignal.timeout(silentMs) }).catch(noop)
      if (NOT_FOUND.has(statusCode)) throw new NarNotFoundError(`${upstream.url}: HTTP ${statusCode} for ${url.href}`)
      const why = statusCode === 200 ? `${length} bytes, over the ${maxBytes}-byte cap` : `HTTP ${statusCode}`
      throw new NarBackendError(`${upstream.url}: ${why} for ${url.href}`, { backend: upstream.url, status: statusCode })
    }
    const out: Record<string, string> = {}
    for (const name of ['content-type', 'content-encoding', 'content-length']) {
      const value = header(headers[name])
      if (value !== undefined) out[name] = value
    }
    const limits = { maxBytes, stallMs: watchMs, minWindowBytes: (minRate * stallMs) / 1000, backend: upstream.url }
    return { upstream: upstream.url, headers: out, body: capped(body, url.href, limits), cancel: () => body.destroy() }
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

interface BodyLimits {
  maxBytes: number
  /** Infinity: no rate watch. */
  stallMs: number
  minWindowBytes: number
  backend: string
}

/**
 * The body, failing once more than `maxBytes` have come, or once the upstream sent fewer than
 * `minWindowBytes` over `stallMs` of being waited for, so that the client sees a cut transfer. A trickle
 * of a byte now and then would otherwise hold the client and an upstream connection for hours.
 */
async function* capped(body: Readable, url: string, limits: BodyLimits): AsyncGenerator<Uint8Array> {
  const { maxBytes, stallMs, minWindowBytes, backend } = limits
  let stalled: NarStallError | undefined
  const watch = rateWatch(stallMs, minWindowBytes, (why) => {
    stalled = new NarStallError(`${backend} ${why} for ${url}`, { backend, timeoutMs: stallMs })
    body.destroy(stalled)
  })
  let bytes = 0
  try {
    watch.wait()
    for await (const chunk of body as AsyncIterable<Uint8Array>) {
      watch.got(chunk.length)
      // A window that closed short on this chunk: the chunk does not go out either.
      if (stalled) throw stalled
      bytes += chunk.length
      if (bytes > maxBytes) throw new NarBackendError(`${url} is longer than ${maxBytes} bytes: cut`)
      yield chunk
      watch.wait()
    }
  } finally {
    watch.stop()
    body.destroy()
  }
}

/**
 * Counts time spent waiting for a source, in windows of `stallMs`: a window with no byte, or fewer than
 * `minWindowBytes`, calls `stall`. Time between `got` and the next `wait` (the client reading) never counts.
 */
function rateWatch(stallMs: number, minWindowBytes: number, stall: (why: string) => void) {
  let waited = 0
  let bytes = 0
  let since = 0
  let timer: NodeJS.Timeout | undefined
  const on = stallMs !== Infinity
  // A full window: too little in it stalls, else the next one starts. False when it stalled.
  const roll = (): boolean => {
    if (bytes === 0 || bytes < minWindowBytes) {
      stall(bytes === 0 ? `sent no byte for ${stallMs} ms` : `sent ${bytes} bytes in ${stallMs} ms, under the minimum rate`)
      return false
    }
    waited = 0
    bytes = 0
    return true
  }
  const fire = (): void => {
    const now = performance.now()
    waited += now - since
    since = now
    if (waited >= stallMs && !roll()) return
    timer = setTimeout(fire, stallMs - waited)
  }
  return {
    wait(): void {
      if (!on) return
      since = performance.now()
      timer = setTimeout(fire, stallMs - waited)
    },
    got(n: number): void {
      if (!on) return
      clearTimeout(timer)
      waited += performance.now() - since
      bytes += n
      if (waited >= stallMs) roll()
    },
    stop(): void {
      clearTimeout(timer)
    },
  }
}

/** What servePassthrough needs from the proxy. */
export interface PassthroughContext extends Omit<PassthroughOptions, 'signal'> {
  logger: Logger
  counter: Counter<'kind' | 'outcome'>
  /** The proxy's pacer of response bodies: a pass-through body takes its turns with the NARs. */
  pacer: TurnPacer
  /** A client whose socket does not drain for this long is cut, and the upstream request with it. */
  clientTimeoutMs: number
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
  if (head) {
    res.writeHead(200, answer.headers)
    answer.cancel()
    res.end()
    return count('ok')
  }
  // The client's hang-up aborts `signal` too, by the time sending fails: only the body's own failure
  // (cap, stall, upstream gone) says the proxy cut it.
  let failure: { error: unknown } | undefined
  const body = (async function* () {
    try {
      yield* answer.body
    } catch (error) {
      // A hang-up aborts `signal` before it destroys the body: only a failure before that is the proxy's cut.
      if (!signal.aborted) failure = { error }
      throw error
    }
  })()
  try {
    await sendBody(res, answer.headers, body, context.pacer, signal, { clientTimeoutMs: context.clientTimeoutMs })
    count('ok')
  } catch (error) {
    res.destroy()
    if (!failure && clientGone(error, signal)) return count('aborted')
    count('cut')
    logger.warn({ target: route.target, upstream: answer.upstream, err: failure?.error ?? error }, 'passthrough cut')
  }
}
