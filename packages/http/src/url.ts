import { NarBackendError, NarraceError, NarNotFoundError } from '@narrace/core'
import { errors as undiciErrors } from 'undici'

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
