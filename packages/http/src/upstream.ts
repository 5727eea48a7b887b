import { NarBackendError } from '@narrace/core'
import { interceptors, request, type buildConnector, type Dispatcher } from 'undici'
import { bareHost, guardedConnect, type LookupFunction } from './addresses.js'
import { OriginPools } from './pools.js'
import { isConnectionFailure, upstreamHealth, type UpstreamHealth } from './health.js'
import { credentialsFor, type Netrc } from './netrc.js'
import { cacheBase, requestError } from './url.js'

/** How long a TCP (and TLS) connect to a cache may take before it counts as failed. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 3000
/** Connections open at once to one upstream's origin; more requests wait for one (Nix's `http-connections`). */
export const DEFAULT_CONNECTIONS = 25
/** Redirects followed before a request fails, as attic sends NARs to S3; loops are never useful. */
export const MAX_REDIRECTS = 5

/** The longest delay setTimeout honours. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1
const REDIRECT_STATUSES = new Set([300, 301, 302, 303, 307, 308])
/** Headers that belong to an origin even when the user did not set them. */
const CREDENTIAL_HEADERS = ['authorization', 'cookie', 'proxy-authorization']
/** Encoded forms of `.`, `/`, `\` and NUL that a server may decode into a path of its own. */
const ENCODED_SEPARATOR = /%(2e|2f|5c|00)/i

const noop = (): void => {}

/**
 * Tells a request's `queued` hook that it waits (from its dispatch to the pool) and that it goes out (when
 * undici starts it on a connection): a request may wait long behind the cap on connections, and that wait
 * is no fault of the cache. Each redirect hop waits again.
 */
const queueWatch: Dispatcher.DispatcherComposeInterceptor = (dispatch) => (opts, handler) => {
  const queued = (opts as { queued?: (waiting: boolean) => void }).queued
  if (!queued) return dispatch(opts, handler)
  // A hook that throws must not throw inside undici's callbacks.
  const tell = (waiting: boolean): void => {
    try {
      queued(waiting)
    } catch {
      // The watchdog then just runs as if no queue were told of.
    }
  }
  tell(true)
  let started = false
  return dispatch(
    opts,
    new StartWatch(handler, () => {
      if (started) return
      started = true
      tell(false)
    }),
  )
}

type Callbacks = Required<Dispatcher.DispatchHandler>

/** Forwards every callback to `handler`, and calls `started` when the request goes out on a connection. */
class StartWatch implements Dispatcher.DispatchHandler {
  constructor(
    private readonly handler: Dispatcher.DispatchHandler,
    private readonly started: () => void,
  ) {}

  onRequestStart(...args: Parameters<Callbacks['onRequestStart']>): void {
    this.started()
    this.handler.onRequestStart?.(...args)
  }

  onRequestUpgrade(...args: Parameters<Callbacks['onRequestUpgrade']>): void {
    this.handler.onRequestUpgrade?.(...args)
  }

  onResponseStart(...args: Parameters<Callbacks['onResponseStart']>): void {
    this.handler.onResponseStart?.(...args)
  }

  onResponseData(...args: Parameters<Callbacks['onResponseData']>): void {
    this.handler.onResponseData?.(...args)
  }

  onResponseEnd(...args: Parameters<Callbacks['onResponseEnd']>): void {
    this.handler.onResponseEnd?.(...args)
  }

  onResponseError(...args: Parameters<Callbacks['onResponseError']>): void {
    // A request that failed before it went out (a refused connection) waits no more either.
    this.started()
    this.handler.onResponseError?.(...args)
  }
}

/** One binary cache, with what it may be asked and what it is sent. A plain URL string means `{ url }`. */
export interface UpstreamOptions {
  /** The binary cache, e.g. `https://cache.nixos.org` or `http://host/cache/`. */
  url: string
  /** The name in events and errors. @default the cache URL, without any user info */
  name?: string
  /**
   * Request headers, e.g. `authorization: Bearer …`: sent only to the cache's own origin, never to an
   * allowed origin nor after a redirect.
   */
  headers?: Record<string, string>
  /**
   * A parsed netrc file (`readNetrc`, `parseNetrc`): its entry for the cache's host gives a Basic
   * `authorization` when `headers` has none, sent to the cache's own origin only.
   */
  netrc?: Netrc
  /**
   * Other origins (`https://cdn.example`) that a narinfo URL or a redirect may lead to, e.g. the CDN or
   * bucket a cache keeps its NARs in. Anything else off the cache's origin and path prefix is refused.
   * @default []
   */
  allowedOrigins?: string[]
  /** Connections open at once to each origin of this upstream; the rest queue. @default 25 */
  connections?: number
  /** Fail a connect that takes longer than this. @default 3000 */
  connectTimeoutMs?: number
  /**
   * An undici dispatcher for every request instead of the upstream's own pools. The origin, prefix,
   * redirect and credential rules still apply; the check of the address at connect time and
   * `connections` are then the dispatcher's business. It is left open by `close()`.
   */
  dispatcher?: Dispatcher
  /** The DNS lookup for connects. @default node:dns lookup */
  lookup?: LookupFunction
  /** The circuit breaker. @default upstreamHealth(url), shared by everything that asks this upstream */
  health?: UpstreamHealth
}

/** A cache: its URL, or its URL with options. */
export type Upstream = string | UpstreamOptions

/** The key under which an httpBackend carries its upstream, so that resolveNarInfo can share it. */
export const kUpstream = Symbol.for('@narrace/http/upstream')

function checkTimeout(timeout: unknown): number {
  // undici takes any value here and hands it to setTimeout, which makes NaN, negatives, Infinity and
  // anything over 2^31 - 1 ms into 1 ms: every connect would fail at once.
  if (typeof timeout !== 'number' || !(timeout > 0 && timeout <= MAX_TIMEOUT_MS)) {
    throw new RangeError(`connectTimeoutMs must be a number of milliseconds from 1 to ${MAX_TIMEOUT_MS}, got ${String(timeout)}`)
  }
  return timeout
}

function checkConnections(connections: unknown): number {
  if (typeof connections !== 'number' || !Number.isSafeInteger(connections) || connections < 1) {
    throw new RangeError(`connections must be a positive integer, got ${String(connections)}`)
  }
  return connections
}

function originOf(value: string, name: string): string {
  const url = URL.parse(value)
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new NarBackendError(`${name}: allowedOrigins entry '${value}' is not an http(s) URL`, { backend: name })
  }
  return url.origin
}

/** Request headers in any form undici takes, as name/value pairs. */
function headerPairs(headers: Dispatcher.DispatchOptions['headers']): [string, string][] {
  if (headers == null) return []
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) return (headers as unknown as [string, string][]).map(([k, v]) => [String(k), String(v)])
    const pairs: [string, string][] = []
    for (let i = 0; i + 1 < headers.length; i += 2) pairs.push([String(headers[i]), String(headers[i + 1])])
    return pairs
  }
  if (typeof (headers as Iterable<unknown>)[Symbol.iterator] === 'function') {
    return [...(headers as Iterable<[string, string]>)].map(([k, v]) => [String(k), String(v)])
  }
  return Object.entries(headers as Record<string, string | string[] | undefined>).flatMap(([k, v]) =>
    v === undefined ? [] : Array.isArray(v) ? v.map((x): [string, string] => [k, x]) : [[k, String(v)]],
  )
}

/** `URL.href` without user info, for messages. */
function shown(url: URL): string {
  if (!url.username && !url.password) return url.href
  const copy = new URL(url.href)
  copy.username = ''
  copy.password = ''
  return copy.href
}

/** The login in a cache URL's user info (`https://user:pass@host/`), as curl takes it. */
function userInfo(url: URL, name: string): { login: string; password: string } {
  try {
    return { login: decodeURIComponent(url.username), password: decodeURIComponent(url.password) }
  } catch (error) {
    throw new NarBackendError(`${name}: the user info of the cache URL is not valid percent-encoding`, { backend: name, cause: error })
  }
}

/** Connect errors already told to a breaker, so that the request they fail does not count them again. */
const toldBreaker = new WeakSet<object>()

function countedConnect(error: unknown): boolean {
  for (let e = error, depth = 0; typeof e === 'object' && e !== null && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    if (toldBreaker.has(e)) return true
  }
  return false
}

/**
 * Tells `health` of each failed connection attempt of `connect` to the cache's own origin, whether or
 * not a request still waits for it: undici goes on connecting after the request that asked is aborted,
 * and that failure is the only verdict a cache that drops packets ever gives while another source keeps
 * winning. A connect that goes through proves nothing (a tunnel to a dead host accepts and hangs up):
 * only an answer brings a skipped upstream back. Connects to an `allowedOrigins` host are left to the
 * requests that need them, as before.
 */
function watchedConnect(connect: buildConnector.connector, health: UpstreamHealth, base: URL): buildConnector.connector {
  const origin = (protocol: string, hostname: string, port: string | number | null | undefined): string =>
    `${protocol}//${bareHost(hostname)}:${port || (protocol === 'https:' ? 443 : 80)}`
  const cache = origin(base.protocol, base.hostname, base.port)
  return (options, callback) => {
    const own = origin(options.protocol, options.hostname, options.port) === cache
    // Nothing but a probe gets through while one is under way: a connect begun then is the probe's.
    const probe = health.state === 'probing'
    connect(options, (...result) => {
      const [error] = result
      if (own && error && isConnectionFailure(error)) {
        toldBreaker.add(error)
        health.connectFailed(error, probe)
      }
      callback(...result)
    })
  }
}

/**
 * One binary cache as narrace reaches it: keep-alive pools whose connects refuse private addresses
 * the cache has no business with, undici's redirect interceptor with every hop checked against the
 * cache's origin, path prefix and `allowedOrigins`, credentials added per hop for the cache's origin
 * only, and a circuit breaker.
 */
export class HttpUpstream {
  /** The cache URL with a trailing slash and without user info. */
  readonly base: URL
  /** The URL as given (without user info): what `resolveNarInfo` reports as `cache`. */
  readonly given: string
  readonly name: string
  readonly health: UpstreamHealth
  readonly dispatcher: Dispatcher
  readonly #agent: OriginPools | undefined
  readonly #allowed: ReadonlySet<string>
  readonly #credentials: [string, string][]
  readonly #dropped: ReadonlySet<string>

  constructor(options: UpstreamOptions) {
    const raw = cacheBase(options?.url)
    const base = new URL(raw.href)
    base.username = ''
    base.password = ''
    this.base = base
    this.given = raw.username || raw.password ? shown(new URL(options.url)) : options.url
    this.name = options.name ?? this.given
    const name = this.name
    this.#allowed = new Set((options.allowedOrigins ?? []).map((o) => originOf(o, name)))

    const credentials = Object.entries(options.headers ?? {}).map(([k, v]): [string, string] => [k.toLowerCase(), String(v)])
    if (!credentials.some(([k]) => k === 'authorization')) {
      const login = raw.username || raw.password ? userInfo(raw, name) : credentialsFor(base, options.netrc)
      if (login) {
        credentials.push(['authorization', `Basic ${Buffer.from(`${login.login}:${login.password}`).toString('base64')}`])
      }
    }
    this.#credentials = credentials
    this.#dropped = new Set([...CREDENTIAL_HEADERS, ...credentials.map(([k]) => k)])
    this.health = options.health ?? upstreamHealth(base.href)

    const timeout = checkTimeout(options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS)
    const connections = checkConnections(options.connections ?? DEFAULT_CONNECTIONS)
    this.#agent = options.dispatcher
      ? undefined
      : new OriginPools({
          connections,
          connect: watchedConnect(guardedConnect({ cacheHost: base.hostname, name, timeout, lookup: options.lookup }), this.health, base),
        })
    const hops = new WeakSet<object>()
    const guard: Dispatcher.DispatcherComposeInterceptor = (dispatch) => (opts, handler) => {
      const redirect = hops.has(handler)
      hops.add(handler)
      const url = new URL(opts.path, opts.origin)
      const why = this.refusal(url)
      if (why) {
        const error = new NarBackendError(`${name}: refused ${redirect ? 'a redirect to ' : ''}${why}`, { backend: name })
        queueMicrotask(() => handler.onResponseError?.(null as never, error))
        return true
      }
      return dispatch({ ...opts, headers: this.#headersFor(url.origin, opts.headers) }, handler)
    }
    this.dispatcher = (options.dispatcher ?? this.#agent!).compose(
      queueWatch,
      guard,
      interceptors.redirect({ maxRedirections: MAX_REDIRECTS }),
    )
  }

  /** Why narrace may not fetch `url` for this cache, or undefined when it may. */
  refusal(url: URL): string | undefined {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return `${shown(url)}: not http(s)`
    if (url.username || url.password) return `${shown(url)}: a URL with user info`
    if (this.base.protocol === 'https:' && url.protocol !== 'https:') return `${url.href}: plain http, and the cache is on https`
    if (ENCODED_SEPARATOR.test(url.pathname)) return `${url.href}: an encoded dot, slash, backslash or NUL in the path`
    if (url.origin === this.base.origin) {
      if (!url.pathname.startsWith(this.base.pathname)) return `${url.href}: outside the cache's path prefix ${this.base.pathname}`
      return undefined
    }
    if (this.#allowed.has(url.origin)) return undefined
    return `${url.href}: on another origin than the cache (${this.base.origin}); list that origin in allowedOrigins if the cache keeps its files there`
  }

  /**
   * Resolves a narinfo URL (relative to the cache, or absolute) and checks it as every redirect hop is
   * checked. Throws NarBackendError, before any connection, for what the cache may not lead to.
   */
  target(input: string): URL {
    // A backslash, a control character or a space: the URL parser would quietly rewrite or drop them.
    if (typeof input !== 'string' || /[\\\u0000-\u0020\u007f]/.test(input)) {
      throw new NarBackendError(`${this.name}: refused the URL '${String(input)}': a backslash, a space or a control character`, {
        backend: this.name,
      })
    }
    const url = URL.parse(input, this.base.href)
    if (!url) throw new NarBackendError(`${this.name}: invalid URL '${input}'`, { backend: this.name })
    url.hash = ''
    const why = this.refusal(url)
    if (why) throw new NarBackendError(`${this.name}: refused ${why}`, { backend: this.name })
    return url
  }

  /**
   * GETs a checked URL, following redirects that pass the same check. Resolves with the response (any
   * status but a redirect) and the URL it came from; throws NarBackendError for a connection failure,
   * a refused hop or too many redirects, or the signal's reason on abort. The response body gets an
   * error listener: one destroyed before its end emits an error nobody else hears.
   */
  async get(
    target: URL,
    options: { headers: Record<string, string>; signal: AbortSignal | undefined; queued?: ((waiting: boolean) => void) | undefined },
  ): Promise<{ response: Dispatcher.ResponseData; url: URL }> {
    const { signal, queued } = options
    signal?.throwIfAborted()
    const settle = this.health.admit()
    let response: Dispatcher.ResponseData
    try {
      // `queued` rides along in the options, which undici hands to every interceptor, for queueWatch.
      const dispatch = { dispatcher: this.dispatcher, method: 'GET', headers: options.headers, signal, ...(queued && { queued }) }
      response = await request<null>(target, dispatch as Parameters<typeof request<null>>[1])
    } catch (error) {
      // A failed connect of the upstream's own pools was counted where it happened.
      settle(signal?.aborted || countedConnect(error) ? 'none' : isConnectionFailure(error) ? 'connection-failed' : 'answered', error)
      throw requestError(error, target.href, this.name, signal)
    }
    settle('answered')
    response.body.on('error', noop)
    const history = (response.context as { history?: URL[] } | undefined)?.history
    const url = history?.at(-1) ?? target
    if (REDIRECT_STATUSES.has(response.statusCode) && response.headers.location !== undefined) {
      response.body.dump().catch(noop)
      throw new NarBackendError(`${this.name}: more than ${MAX_REDIRECTS} redirects from ${target.href}`, {
        backend: this.name,
        status: response.statusCode,
      })
    }
    return { response, url }
  }

  /** Closes the upstream's own pools, cancelling what is in flight; a dispatcher passed in stays open. */
  async close(): Promise<void> {
    await this.#agent?.destroy()
  }

  /** Closes the upstream's own pools once the requests in flight are done. */
  closeWhenDone(): void {
    this.#agent?.close().catch(noop)
  }

  /** The request headers for one hop: credentials on the cache's origin, none of them anywhere else. */
  #headersFor(origin: string, headers: Dispatcher.DispatchOptions['headers']): string[] {
    const flat: string[] = []
    for (const [k, v] of headerPairs(headers)) if (!this.#dropped.has(k.toLowerCase())) flat.push(k, v)
    if (origin === this.base.origin) for (const [k, v] of this.#credentials) flat.push(k, v)
    return flat
  }
}

/** Upstreams made from plain URL strings and kept for their keep-alive connections. */
const MAX_KEPT_UPSTREAMS = 64
const byUrl = new Map<string, HttpUpstream>()
const byOptions = new WeakMap<UpstreamOptions, HttpUpstream>()

/**
 * The HttpUpstream for a cache as `resolveNarInfo` and `walkClosure` take it: an httpBackend's own
 * (sharing its connections, credentials and breaker), one kept per URL string or options object, or,
 * with a dispatcher, a new one on it (which owns nothing to close).
 */
export function upstreamOf(cache: Upstream | { readonly [kUpstream]?: HttpUpstream }, dispatcher?: Dispatcher): HttpUpstream {
  const carried = typeof cache === 'object' && cache !== null ? (cache as { [kUpstream]?: HttpUpstream })[kUpstream] : undefined
  if (carried) return carried
  const options: UpstreamOptions = typeof cache === 'string' ? { url: cache } : (cache as UpstreamOptions)
  if (dispatcher) return new HttpUpstream({ ...options, dispatcher })
  if (typeof cache === 'string') {
    let upstream = byUrl.get(cache)
    if (!upstream) {
      upstream = new HttpUpstream(options)
      if (byUrl.size >= MAX_KEPT_UPSTREAMS) {
        const [oldest, evicted] = byUrl.entries().next().value!
        byUrl.delete(oldest)
        evicted.closeWhenDone()
      }
      byUrl.set(cache, upstream)
    }
    return upstream
  }
  if (typeof options !== 'object' || options === null) throw new TypeError('a cache must be a URL string or { url, … }')
  let upstream = byOptions.get(options)
  if (!upstream) {
    upstream = new HttpUpstream(options)
    byOptions.set(options, upstream)
  }
  return upstream
}

/** A header for one upstream, as the proxy's `--upstream-header 'URL=Name: value'` gives it. */
export interface UpstreamHeader {
  url: string
  name: string
  value: string
}

/**
 * Parses `URL=Name: value`, e.g. `https://cache.example.org=Authorization: Bearer xyz`. The URL ends at
 * the first `=` that is followed by a header name and a colon, so the value may hold `=` itself.
 */
export function parseUpstreamHeader(spec: string): UpstreamHeader {
  const match = /^(.+?)=([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/s.exec(String(spec))
  if (!match || /[\r\n]/.test(match[3]!)) {
    throw new TypeError(`'${String(spec).replace(/=.*$/s, '=…')}' is not URL=Name: value`)
  }
  cacheBase(match[1]!, 'upstream URL')
  return { url: match[1]!, name: match[2]!, value: match[3]! }
}

/**
 * The options for each cache URL with its credentials: the netrc file, and the `headers` whose URL is that
 * cache (compared with a trailing slash, without query). A header for a URL that is not among `urls` is
 * a mistake the user must hear about: it throws TypeError.
 */
export function upstreamsWith(
  urls: string[],
  options: { netrc?: Netrc; headers?: UpstreamHeader[]; allowedOrigins?: Record<string, string[]>; connections?: number } = {},
): UpstreamOptions[] {
  const key = (url: string): string => cacheBase(url, 'upstream URL').href
  const keys = urls.map(key)
  for (const header of options.headers ?? []) {
    if (!keys.includes(key(header.url))) throw new TypeError(`a header for ${header.url}, which is not an upstream`)
  }
  return urls.map((url, i) => {
    const headers = Object.fromEntries((options.headers ?? []).filter((h) => key(h.url) === keys[i]).map((h) => [h.name, h.value]))
    const allowed = Object.entries(options.allowedOrigins ?? {}).find(([u]) => key(u) === keys[i])?.[1]
    return {
      url,
      ...(Object.keys(headers).length > 0 && { headers }),
      ...(options.netrc && { netrc: options.netrc }),
      ...(allowed && { allowedOrigins: allowed }),
      ...(options.connections !== undefined && { connections: options.connections }),
    }
  })
}
