import { InvalidNarHashError, InvalidNarInfoError, NarNotFoundError, NarraceError, NarUnavailableError } from '@narrace/core'
import {
  isStoreHashPart,
  MAX_DOCUMENT_BYTES,
  parseCacheInfo,
  parseNarInfo,
  parseStorePath,
  verifyNarInfo,
  type CacheInfo,
  type NarInfo,
} from '@narrace/narinfo'
import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib'
import type { Dispatcher } from 'undici'
import type { HttpBackend } from './backend.js'
import { upstreamOf, type HttpUpstream, type Upstream } from './upstream.js'
import { requestError, statusError } from './url.js'

/** A narinfo or nix-cache-info larger than this is refused unread, as the parser would refuse it. */
export const MAX_NARINFO_BYTES = MAX_DOCUMENT_BYTES

/**
 * A cache as resolveNarInfo, walkClosure and fetchCacheInfo take it: a URL, `{ url, headers?, netrc?,
 * allowedOrigins?, … }`, or an httpBackend, whose connections, credentials and circuit breaker are then
 * shared with it.
 */
export type NarInfoCache = Upstream | HttpBackend

export interface ResolveNarInfoOptions {
  /** Binary caches, asked all at once. */
  caches: NarInfoCache[]
  /**
   * `name:base64(ed25519 public key)` keys. When at least one is given, a narinfo counts only if one of
   * them signed it; an unsigned or wrongly signed narinfo loses like garbage does.
   */
  trustedKeys?: string[]
  signal?: AbortSignal
  /**
   * The undici dispatcher for every request, redirects included (the origin and credential rules still
   * apply). @default each cache's own keep-alive pools, kept across calls
   */
  dispatcher?: Dispatcher
}

/** The narinfo that won the race. */
export interface ResolvedNarInfo {
  narInfo: NarInfo
  /** The cache URL it came from, as given in `caches` (an options object's or backend's `url`). */
  cache: string
  /** The narinfo exactly as the cache sent it, signatures included. */
  text: string
}

const noop = (): void => {}

/**
 * Asks every cache for `<hashPart>.narinfo` at once. The first answer that parses, names the store path
 * asked for, and verifies (when `trustedKeys` is given) wins; the other requests are aborted.
 *
 * Rejects with InvalidNarHashError for a malformed hash part, NarNotFoundError when every cache says
 * 403/404/410, InvalidNarInfoError when the others sent garbage or a narinfo without a trusted signature,
 * and otherwise NarUnavailableError: some cache could not answer (a 5xx, a 429, a refused or cut
 * connection, a skip by its circuit breaker), so the narinfo may well exist. The message says why each
 * cache failed; `errors` (and `cause`, an AggregateError) holds those errors, in the order of `caches`.
 */
export async function resolveNarInfo(hashPart: string, options: ResolveNarInfoOptions): Promise<ResolvedNarInfo> {
  if (!isStoreHashPart(hashPart)) {
    throw new InvalidNarHashError(`'${hashPart}' is not a store hash part: 32 characters of Nix's base-32 alphabet`)
  }
  const outer = options?.signal
  outer?.throwIfAborted()
  if (!Array.isArray(options?.caches)) throw new TypeError('resolveNarInfo needs options.caches, an array of cache URLs')
  const upstreams = options.caches.map((cache) => upstreamOf(cache, options.dispatcher))
  if (upstreams.length === 0) throw new NarNotFoundError(`no cache to ask for ${hashPart}.narinfo`)
  const trustedKeys = options.trustedKeys?.length ? options.trustedKeys : undefined
  const race = new AbortController()
  const signal = outer ? AbortSignal.any([outer, race.signal]) : race.signal

  try {
    return await Promise.any(
      upstreams.map(async (upstream): Promise<ResolvedNarInfo> => {
        const text = await fetchText(upstream, `${hashPart}.narinfo`, signal)
        return { narInfo: checkNarInfo(text, hashPart, upstream.name, trustedKeys), cache: upstream.given, text }
      }),
    )
  } catch (error) {
    if (outer?.aborted) throw outer.reason
    const errors = error instanceof AggregateError ? error.errors : [error]
    if (errors.every((e) => e instanceof NarNotFoundError)) {
      throw new NarNotFoundError(`no cache has ${hashPart}.narinfo`, { errors })
    }
    const reasons = errors.map((e) => (e instanceof Error ? e.message : String(e))).join('; ')
    const cause = new AggregateError(errors, `${hashPart}.narinfo failed on every cache`)
    // Every cache that answered sent a bad narinfo: that, not the network, is what went wrong.
    if (errors.every((e) => e instanceof NarNotFoundError || e instanceof InvalidNarInfoError)) {
      const untrusted = errors.every((e) => e instanceof NarNotFoundError || (e as InvalidNarInfoError).untrusted)
      throw new InvalidNarInfoError(`no cache gave a valid ${hashPart}.narinfo: ${reasons}`, { cause, untrusted })
    }
    // A cache that could not answer may have it: an outage, which Nix must not take for "not here".
    throw new NarUnavailableError(`no cache could give ${hashPart}.narinfo: ${reasons}`, { cause, errors })
  } finally {
    race.abort(new NarraceError(`${hashPart}.narinfo already resolved`))
  }
}

function checkNarInfo(text: string, hashPart: string, cache: string, trustedKeys: string[] | undefined): NarInfo {
  let narInfo: NarInfo
  try {
    narInfo = parseNarInfo(text)
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error)
    throw new InvalidNarInfoError(`${cache}: ${hashPart}.narinfo: ${why}`, { cause: error })
  }
  if (parseStorePath(narInfo.storePath).hashPart !== hashPart) {
    throw new InvalidNarInfoError(`${cache}: ${hashPart}.narinfo describes ${narInfo.storePath}`)
  }
  if (trustedKeys && !verifyNarInfo(narInfo, trustedKeys).valid) {
    throw new InvalidNarInfoError(`${cache}: ${hashPart}.narinfo has no valid signature by a trusted key`, { untrusted: true })
  }
  return narInfo
}

/** Fetches and parses a cache's `nix-cache-info` (StoreDir, WantMassQuery, Priority). */
export async function fetchCacheInfo(
  cache: NarInfoCache,
  options: { signal?: AbortSignal; dispatcher?: Dispatcher } = {},
): Promise<CacheInfo> {
  const upstream = upstreamOf(cache, options.dispatcher)
  const text = await fetchText(upstream, 'nix-cache-info', options.signal)
  try {
    return parseCacheInfo(text)
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error)
    throw new InvalidNarInfoError(`${upstream.name}: nix-cache-info: ${why}`, { cause: error })
  }
}

const DECODERS: Record<string, (input: Buffer, options: { maxOutputLength: number }) => Buffer> = {
  gzip: gunzipSync,
  'x-gzip': gunzipSync,
  deflate: inflateSync,
  br: brotliDecompressSync,
}

/** GETs a small text file under the cache, at most MAX_NARINFO_BYTES, decoded as strict UTF-8. */
async function fetchText(upstream: HttpUpstream, path: string, signal: AbortSignal | undefined): Promise<string> {
  const { name } = upstream
  const target = upstream.target(path)
  const url = target.href
  const tooBig = (): InvalidNarInfoError =>
    new InvalidNarInfoError(`${name}: ${url} is larger than ${MAX_NARINFO_BYTES} bytes`)
  const chunks: Buffer[] = []
  let encoding: string
  try {
    const { response } = await upstream.get(target, { headers: { 'accept-encoding': 'identity' }, signal })
    const { statusCode, headers, body } = response
    if (statusCode !== 200) {
      body.dump().catch(noop)
      throw statusError(statusCode, url, name)
    }
    if (Number(headers['content-length']) > MAX_NARINFO_BYTES) {
      body.destroy()
      throw tooBig()
    }
    encoding = String(headers['content-encoding'] ?? 'identity').trim().toLowerCase()
    let length = 0
    for await (const chunk of body as AsyncIterable<Buffer>) {
      length += chunk.length
      if (length > MAX_NARINFO_BYTES) {
        body.destroy()
        throw tooBig()
      }
      chunks.push(chunk)
    }
  } catch (error) {
    throw requestError(error, url, name, signal)
  }

  let bytes: Buffer = Buffer.concat(chunks)
  if (encoding !== 'identity' && encoding !== '') {
    const decode = DECODERS[encoding]
    if (!decode) throw new InvalidNarInfoError(`${name}: ${url} came with Content-Encoding '${encoding}'`)
    try {
      bytes = decode(bytes, { maxOutputLength: MAX_NARINFO_BYTES })
    } catch (error) {
      throw new InvalidNarInfoError(`${name}: ${url} does not decode as ${encoding}`, { cause: error })
    }
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch (error) {
    throw new InvalidNarInfoError(`${name}: ${url} is not UTF-8 text`, { cause: error })
  }
}
