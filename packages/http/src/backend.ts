import {
  NarBackendError,
  NarSizeMismatchError,
  parseNarHash,
  type NarBackend,
  type NarFetchOptions,
  type NarHash,
  type NarSource,
} from '@narrace/core'
import type { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { UpstreamHealth } from './health.js'
import { HttpUpstream, kUpstream, type UpstreamOptions } from './upstream.js'
import { requestError, statusError } from './url.js'

const noop = (): void => {}

/** One binary cache to fetch NARs from: its URL, credentials, allowed origins and connection cap. */
export type HttpBackendOptions = UpstreamOptions

/** A NarBackend over one HTTP binary cache. */
export interface HttpBackend extends NarBackend {
  /** The cache URL, with a trailing slash (and without user info). */
  readonly url: string
  /** The upstream's circuit breaker: `isUp()`, `state`, and a `change` event. */
  readonly health: UpstreamHealth
  /** Destroys the backend's connection pool, cancelling whatever is in flight. */
  close(): Promise<void>
}

/**
 * A narrace backend that fetches `nar/<nix32>.nar.xz` (or the narinfo URL that `resolveNar` passes on,
 * query string and all, and nothing else) from one binary cache, over one keep-alive undici Pool per
 * origin with at most `connections` connections each. A resume at `offset > 0` sends `Range: bytes=offset-`;
 * a server that answers 200 instead restarts at 0, which `resolveNar` skips. With `end`, it asks for
 * `Range: bytes=offset-(end - 1)`, and a 206 says `ranges: true`, so `resolveNar` may stripe over this
 * cache; so does a 200 with `Accept-Ranges: bytes`. Bytes are never decoded: the FileHash is the hash of
 * the file as stored.
 *
 * The trust boundary: it fetches only under the cache's origin and path prefix, or from an origin in
 * `allowedOrigins`; every redirect hop (up to MAX_REDIRECTS) is checked the same way, https never leads
 * to http, credentials go to the cache's origin only, and loopback or private addresses are reached only
 * when the cache is on one. Anything else rejects with NarBackendError before a connection is made.
 *
 * 403, 404 and 410 reject with NarNotFoundError; other statuses, refused connections, connect timeouts
 * and a skip by the circuit breaker with NarBackendError. A `Content-Length` or `Content-Range` that
 * contradicts `size` rejects with NarSizeMismatchError before any byte is delivered.
 */
export function httpBackend(options: HttpBackendOptions): HttpBackend {
  const upstream = new HttpUpstream(options)
  const { name } = upstream

  return {
    name,
    url: upstream.base.href,
    health: upstream.health,
    [kUpstream]: upstream,

    async fetch(hash: NarHash, fetchOptions: NarFetchOptions): Promise<NarSource> {
      // resolveNar always passes a NarHash and a signal; a direct caller may not.
      const { signal, size, url: narUrl } = (fetchOptions ?? {}) as Partial<NarFetchOptions>
      const offset = fetchOptions?.offset ?? 0
      const end = rangeEnd(offset, fetchOptions?.end)
      signal?.throwIfAborted()
      // As in Nix, a narinfo URL may also be absolute; it is checked like every redirect hop.
      const target = upstream.target(narUrl ?? `nar/${parseNarHash(hash).nix32}.nar.xz`)
      const headers: Record<string, string> = { 'accept-encoding': 'identity' }
      if (end !== undefined) headers.range = `bytes=${offset}-${end - 1}`
      else if (offset > 0) headers.range = `bytes=${offset}-`

      const { response, url } = await upstream.get(target, { headers, signal, queued: fetchOptions?.queued })
      const body = response.body
      try {
        const source = checkResponse(response, { offset, end, size, url: url.href, name })
        return { ...source, body: readBody(body, url.href, name, signal) }
      } catch (error) {
        // Reading a short error body to its end keeps the connection for the next request.
        body.dump().catch(noop)
        throw error
      }
    },

    async close(): Promise<void> {
      await upstream.close()
    },
  } as HttpBackend
}

/** Reads the status and length headers; throws before any byte when they rule the response out. */
function checkResponse(
  response: Dispatcher.ResponseData,
  expect: { offset: number; end: number | undefined; size: number | undefined; url: string; name: string },
): Omit<NarSource, 'body'> {
  const { statusCode, headers } = response
  const { offset, end, size, url, name } = expect
  const length = numberHeader(headers['content-length'])
  const mismatch = (actual: number, what: string): NarSizeMismatchError =>
    new NarSizeMismatchError(`${name}: ${what} says ${actual} bytes, the narinfo says ${size} (${url})`, {
      expected: size!,
      actual,
    })

  if (statusCode === 200) {
    if (size !== undefined && length !== undefined && length !== size) throw mismatch(length, 'Content-Length')
    // A server that ignored a Range header can't be trusted with the next one, whatever it says.
    const ranges = end === undefined && offset === 0 && String(headers['accept-ranges'] ?? '').trim() === 'bytes'
    return length === undefined ? { offset: 0, ranges } : { offset: 0, size: length, ranges }
  }
  if (statusCode === 206 && (offset > 0 || end !== undefined)) {
    const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(headers['content-range'] ?? '').trim())
    const last = range ? Number(range[2]) : NaN
    // A server may stop early at the end of the file, never past what was asked.
    if (!range || Number(range[1]) !== offset || (end !== undefined && last >= end) || last < offset) {
      throw new NarBackendError(
        `${name}: a 206 with Content-Range '${String(headers['content-range'])}' for a request from ${offset} (${url})`,
        { backend: name, status: statusCode },
      )
    }
    const total = range[3] === '*' ? undefined : Number(range[3])
    if (size !== undefined && total !== undefined && total !== size) throw mismatch(total, 'Content-Range')
    const whole = total ?? size
    if (end !== undefined) {
      if (length !== undefined && length !== last + 1 - offset) {
        throw new NarBackendError(`${name}: a 206 of ${length} bytes for Content-Range bytes ${offset}-${last} (${url})`, {
          backend: name,
          status: statusCode,
        })
      }
      if (whole !== undefined && last + 1 !== Math.min(end, whole)) throw mismatch(last + 1, 'Content-Range')
    } else if (whole !== undefined && length !== undefined && offset + length !== whole) {
      throw mismatch(offset + length, 'Content-Length from the offset')
    }
    return whole === undefined ? { offset, ranges: true } : { offset, size: whole, ranges: true }
  }
  throw statusError(statusCode, url, name)
}

/** The exclusive end to ask for, or undefined for the rest of the file. */
function rangeEnd(offset: number, end: number | undefined): number | undefined {
  if (end === undefined) return undefined
  if (!Number.isSafeInteger(end) || end <= offset) throw new RangeError(`end must be an integer above offset ${offset}, got ${end}`)
  return end
}

function numberHeader(value: string | string[] | undefined): number | undefined {
  if (typeof value !== 'string' || !/^\d+$/.test(value.trim())) return undefined
  return Number(value)
}

/** The response body as narrace wants it: leaving the loop or aborting ends the request at once. */
function readBody(
  body: Readable,
  url: string,
  name: string,
  signal: AbortSignal | undefined,
): AsyncIterable<Uint8Array> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
      const iterator = body[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>
      return {
        async next(): Promise<IteratorResult<Uint8Array>> {
          try {
            return await iterator.next()
          } catch (error) {
            throw requestError(error, url, name, signal)
          }
        },
        async return(): Promise<IteratorResult<Uint8Array>> {
          body.destroy()
          return { done: true, value: undefined }
        },
      }
    },
  }
}
