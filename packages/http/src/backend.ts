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
import { Agent, Pool, type Dispatcher } from 'undici'
import { cacheBase, get, requestError, statusError } from './url.js'

const noop = (): void => {}

/** How long a TCP (and TLS) connect to a cache may take before it counts as failed. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 3000

/** The longest delay setTimeout honours. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1

export interface HttpBackendOptions {
  /** The binary cache, e.g. `https://cache.nixos.org` or `http://host/cache/`. */
  url: string
  /** The name in events and errors. @default the cache URL */
  name?: string
  /**
   * An undici dispatcher for every request, instead of the backend's own pool (and the Agent it makes for
   * redirects to other origins); `close()` leaves it open.
   */
  dispatcher?: Dispatcher
  /** Extra request headers, e.g. `authorization`. */
  headers?: Record<string, string>
  /** Fail a connect that takes longer than this. Applies to the backend's own pool only. @default 3000 */
  connectTimeoutMs?: number
}

/** A NarBackend over one HTTP binary cache. */
export interface HttpBackend extends NarBackend {
  /** The cache URL, with a trailing slash. */
  readonly url: string
  /** Destroys the backend's connection pool, cancelling whatever is in flight. */
  close(): Promise<void>
}

/**
 * A narrace backend that fetches `nar/<nix32>.nar.xz` (or the narinfo URL that `resolveNar` passes on)
 * from one binary cache, over one keep-alive undici Pool. A resume at `offset > 0` sends
 * `Range: bytes=offset-`; a server that answers 200 instead restarts at 0, which `resolveNar` skips. With
 * `end`, it asks for `Range: bytes=offset-(end - 1)`, and a 206 says `ranges: true`, so `resolveNar`
 * may stripe over this cache; so does a 200 with `Accept-Ranges: bytes`.
 * Bytes are never decoded: the FileHash is the hash of the file as stored. Up to MAX_REDIRECTS
 * redirects are followed (attic, for one, sends NARs to S3), without credentials once they leave the origin.
 *
 * 403, 404 and 410 reject with NarNotFoundError; other statuses, refused connections and connect timeouts
 * with NarBackendError. A `Content-Length` or `Content-Range` that contradicts `size` rejects with
 * NarSizeMismatchError before any byte is delivered.
 */
export function httpBackend(options: HttpBackendOptions): HttpBackend {
  const base = cacheBase(options?.url)
  const name = options.name ?? options.url
  const timeout = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
  // undici takes any value here and hands it to setTimeout, which makes NaN, negatives, Infinity and
  // anything over 2^31 - 1 ms into 1 ms: every connect would fail at once.
  if (typeof timeout !== 'number' || !(timeout > 0 && timeout <= MAX_TIMEOUT_MS)) {
    throw new RangeError(
      `connectTimeoutMs must be a number of milliseconds from 1 to ${MAX_TIMEOUT_MS}, got ${String(timeout)}`,
    )
  }
  const connect = { timeout }
  const pool = options.dispatcher ? undefined : new Pool(base.origin, { connect })
  // Only for NAR URLs and redirects that leave the cache's origin: made on first use.
  let elsewhere: Agent | undefined
  const dispatcherFor = (origin: string): Dispatcher => {
    if (options.dispatcher) return options.dispatcher
    if (origin === base.origin) return pool!
    elsewhere ??= new Agent({ connect })
    return elsewhere
  }

  return {
    name,
    url: base.href,

    async fetch(hash: NarHash, fetchOptions: NarFetchOptions): Promise<NarSource> {
      // resolveNar always passes a NarHash and a signal; a direct caller may not.
      const { signal, size, url: narUrl } = (fetchOptions ?? {}) as Partial<NarFetchOptions>
      const offset = fetchOptions?.offset ?? 0
      const end = rangeEnd(offset, fetchOptions?.end)
      signal?.throwIfAborted()
      // As in Nix, a narinfo URL may also be absolute.
      const relative = narUrl ?? `nar/${parseNarHash(hash).nix32}.nar.xz`
      const target = URL.parse(relative, base.href)
      if (!target) throw new NarBackendError(`${name}: invalid NAR URL '${relative}'`, { backend: name })
      if (target.protocol !== 'http:' && target.protocol !== 'https:') {
        throw new NarBackendError(`${name}: the NAR URL ${target.href} is not http(s)`, { backend: name })
      }
      const headers: Record<string, string> = { ...options.headers, 'accept-encoding': 'identity' }
      if (end !== undefined) headers.range = `bytes=${offset}-${end - 1}`
      else if (offset > 0) headers.range = `bytes=${offset}-`

      let response: Dispatcher.ResponseData
      let url: URL
      try {
        ;({ response, url } = await get(target, { headers, signal, dispatcherFor, name }))
      } catch (error) {
        throw requestError(error, target.href, name, signal)
      }
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
      await Promise.all([pool?.destroy(), elsewhere?.destroy()])
    },
  }
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
