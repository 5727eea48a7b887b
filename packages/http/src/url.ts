import { NarBackendError, NarraceError, NarNotFoundError } from '@narrace/core'
import { errors as undiciErrors, request, type Dispatcher } from 'undici'

/** Redirects a cache may answer with, e.g. attic sending NARs to S3. */
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308])
/** Redirects followed before a request fails, as curl's default in Nix is higher but loops are never useful. */
export const MAX_REDIRECTS = 5
/** Headers that must not follow a redirect to another origin. */
const CREDENTIAL_HEADERS = new Set(['authorization', 'cookie', 'proxy-authorization'])

const noop = (): void => {}

/** Statuses that mean "this cache does not have it", as Nix reads them. */
const NOT_FOUND_STATUSES = new Set([403, 404, 410])

/**
 * Parses a binary-cache URL and gives it a trailing slash, so that relative paths such as
 * `nar/<x>.nar.xz` resolve under a path prefix (`http://host/cache/`) rather than beside it.
 */
export function cacheBase(url: string, what = 'cache URL'): URL {
  let base: URL
  try {
    base = new URL(url)
  } catch (error) {
    throw new NarBackendError(`invalid ${what} '${url}'`, { backend: url, cause: error })
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new NarBackendError(`${what} '${url}' is not http(s)`, { backend: url })
  }
  if (!base.pathname.endsWith('/')) base.pathname += '/'
  base.search = ''
  base.hash = ''
  return base
}

/** The error for a response that is neither a success nor a partial success. */
export function statusError(status: number, url: string, backend: string): NarraceError {
  if (NOT_FOUND_STATUSES.has(status)) {
    return new NarNotFoundError(`${backend}: HTTP ${status} for ${url}`)
  }
  return new NarBackendError(`${backend}: HTTP ${status} for ${url}`, { backend, status })
}

/** Turns what undici throws (refused, reset, connect timeout) into a NarBackendError; an abort stays itself. */
export function requestError(error: unknown, url: string, backend: string, signal: AbortSignal | undefined): unknown {
  if (signal?.aborted) return signal.reason
  if (error instanceof NarraceError) return error
  const code = (error as { code?: unknown } | null)?.code
  const why =
    error instanceof undiciErrors.ConnectTimeoutError
      ? 'connect timeout'
      : typeof code === 'string'
        ? `${code}${error instanceof Error && error.message ? `: ${error.message}` : ''}`
        : error instanceof Error
          ? error.message
          : String(error)
  return new NarBackendError(`${backend}: ${why} (${url})`, { backend, cause: error })
}

/**
 * GETs `url`, following up to MAX_REDIRECTS redirects, each through the dispatcher `dispatcherFor`
 * picks for its origin. Credentials are dropped when a redirect leaves the origin. The response body
 * gets an error listener, since a body destroyed before its end emits an abort error nobody else hears.
 * Undici's own errors are left for `requestError`.
 */
export async function get(
  url: URL,
  options: {
    headers: Record<string, string>
    signal: AbortSignal | undefined
    dispatcherFor: (origin: string) => Dispatcher
    name: string
  },
): Promise<{ response: Dispatcher.ResponseData; url: URL }> {
  let target = url
  let headers = options.headers
  for (let hops = 0; ; hops++) {
    const response = await request(target, {
      dispatcher: options.dispatcherFor(target.origin),
      method: 'GET',
      headers,
      signal: options.signal,
    })
    response.body.on('error', noop)
    const location = response.headers.location
    if (!REDIRECT_STATUSES.has(response.statusCode) || typeof location !== 'string') return { response, url: target }
    response.body.dump().catch(noop)
    const next = new URL(location, target)
    const refused =
      hops >= MAX_REDIRECTS
        ? `more than ${MAX_REDIRECTS} redirects`
        : next.protocol !== 'http:' && next.protocol !== 'https:'
          ? `a redirect to ${next.href}`
          : undefined
    if (refused) {
      throw new NarBackendError(`${options.name}: ${refused} from ${url.href}`, {
        backend: options.name,
        status: response.statusCode,
      })
    }
    if (next.origin !== target.origin) {
      headers = Object.fromEntries(Object.entries(headers).filter(([k]) => !CREDENTIAL_HEADERS.has(k.toLowerCase())))
    }
    target = next
  }
}
