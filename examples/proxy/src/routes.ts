import { MAPPINGS_PATH, routeMappings, type MappingsRoute } from './mappings-route.js'

/** Nix's base-32 alphabet: hash parts and FileHashes use nothing else. */
const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz'
const HASH_PART = new RegExp(`^[${NIX32}]{32}$`)
/** A NAR file name as binary caches write it: `nar/<name>.nar[.<compression>]`, with Nix's extensions. */
const NAR_PATH = /^nar\/([0-9a-z]{1,64})\.nar((?:\.(?:xz|zst|bz2|lzip|lz4|br))?)$/
/** Query strings some caches put in their narinfo URL (harmonia's `?hash=`): plain words only. */
const NAR_QUERY = /^[A-Za-z0-9_=&-]{1,128}$/

/** A store path basename: hash part, dash, a name of Nix's characters (at most 211 of them). */
const STORE_BASENAME = new RegExp(`^[${NIX32}]{32}-[A-Za-z0-9+\\-._?=]{1,211}$`)
/** A realisation: `<hash algorithm>:<hex>!<output name>.doi`, as Nix names a DrvOutput. */
const REALISATION = /^(?:sha256|sha512|sha1|md5):[0-9a-f]{32,128}![A-Za-z0-9+\-._?=]{1,211}\.doi$/
/** A build-trace-v2 entry: one to four plain segments (Nix 2.35 writes hashes and output names there). */
const BUILD_TRACE = /^[A-Za-z0-9+\-_:!=][A-Za-z0-9+\-._:!=]{0,254}(?:\/[A-Za-z0-9+\-_:!=][A-Za-z0-9+\-._:!=]{0,254}){0,3}$/
/** An ELF build id, in hex, as dwarffs and Nix's `index-debug-info` name the file. */
const BUILD_ID = /^[0-9a-f]{2,128}$/

/** Longest request target served; a Nix request is never near it. */
export const MAX_URL_LENGTH = 1024

/** The files Nix reads from a cache besides narinfo and NARs, passed through unverified. */
export type PassthroughKind = 'log' | 'ls' | 'realisation' | 'build-trace' | 'debuginfo'

export type Route =
  | { kind: 'cache-info' }
  | { kind: 'healthz' }
  | { kind: 'metrics' }
  | { kind: 'narinfo'; hashPart: string }
  /**
   * `path` is relative to the cache, as in a narinfo's URL field: `nar/<name>.nar.xz[?query]`; `ext` is
   * the compression extension (`.xz`, or `''`).
   */
  | { kind: 'nar'; path: string; name: string; ext: string }
  /** `target` is relative to the cache: `log/<drv>`, `<hashpart>.ls`, `realisations/<id>.doi`, … */
  | { kind: 'passthrough'; what: PassthroughKind; target: string }
  | { kind: 'reject'; status: 400 | 404 | 405; reason: string }
  | Exclude<MappingsRoute, { kind: 'reject' }>

const reject = (status: 400 | 404 | 405, reason: string): Route => ({ kind: 'reject', status, reason })

/**
 * Maps a request to what the proxy does with it, before any backend is involved. Anything that is not
 * plainly one of the routes is refused here: traversal, percent-encoding, odd characters or lengths.
 */
export function routeRequest(method: string | undefined, target: string | undefined): Route {
  if (method !== 'GET' && method !== 'HEAD') return reject(405, `method ${method ?? '?'} not allowed`)
  if (target === undefined || target.length === 0) return reject(400, 'empty request target')
  if (target.length > MAX_URL_LENGTH) return reject(400, `request target longer than ${MAX_URL_LENGTH}`)
  // Only origin-form targets; no Nix path needs escaping, so any '%' is an attempt to smuggle one.
  if (!target.startsWith('/') || target.startsWith('//')) return reject(400, 'not an origin-form request target')
  // The one exception: a `?since=` time that a client's URL builder escaped (`%3A` for ':').
  const checked = target.startsWith(`${MAPPINGS_PATH}?`) ? target.replace(/%3A/gi, ':').replace(/%2B/gi, '+') : target
  if (/[%\\\0-\x20\x7f-\uffff]/.test(checked)) return reject(400, 'escaped or unsafe characters in request target')

  const q = target.indexOf('?')
  const pathname = q === -1 ? target : target.slice(0, q)
  const query = q === -1 ? '' : target.slice(q + 1)
  if (pathname.split('/').some((segment) => segment === '..' || segment === '.')) {
    return reject(400, 'dot segments in request target')
  }

  if (pathname.startsWith('/nar/')) {
    const path = pathname.slice(1)
    const match = NAR_PATH.exec(path)
    if (!match) return reject(400, 'not a NAR file name')
    if (query !== '' && !NAR_QUERY.test(query)) return reject(400, 'unexpected query string')
    return { kind: 'nar', path: query === '' ? path : `${path}?${query}`, name: match[1]!, ext: match[2]! }
  }
  const mappings = routeMappings(pathname, query)
  if (mappings) return mappings.kind === 'reject' ? reject(mappings.status, mappings.reason) : mappings
  if (query !== '') return reject(404, 'no such resource')
  if (pathname.endsWith('.narinfo')) {
    const hashPart = pathname.slice(1, -'.narinfo'.length)
    if (!HASH_PART.test(hashPart)) return reject(400, 'not a 32-character nix32 store hash')
    return { kind: 'narinfo', hashPart }
  }
  const passthrough = passthroughRoute(pathname.slice(1))
  if (passthrough) return passthrough
  switch (pathname) {
    case '/nix-cache-info':
      return { kind: 'cache-info' }
    case '/healthz':
      return { kind: 'healthz' }
    case '/metrics':
      return { kind: 'metrics' }
    default:
      return reject(404, 'no such resource')
  }
}

/** The other files Nix asks a binary cache for, each checked for the exact form Nix gives it. */
function passthroughRoute(target: string): Route | undefined {
  const checked = (what: PassthroughKind, ok: boolean, form: string): Route =>
    ok ? { kind: 'passthrough', what, target } : reject(400, `not ${form}`)
  if (target.startsWith('log/')) return checked('log', STORE_BASENAME.test(target.slice(4)), 'log/<store path basename>')
  if (target.endsWith('.ls') && !target.includes('/')) {
    return checked('ls', HASH_PART.test(target.slice(0, -3)), '<32-character nix32 store hash>.ls')
  }
  if (target.startsWith('realisations/')) {
    return checked('realisation', REALISATION.test(target.slice(13)), 'realisations/<algo>:<hex>!<output>.doi')
  }
  if (target.startsWith('build-trace-v2/')) {
    return checked('build-trace', BUILD_TRACE.test(target.slice(15)), 'build-trace-v2/<entry>')
  }
  if (target.startsWith('debuginfo/')) return checked('debuginfo', BUILD_ID.test(target.slice(10)), 'debuginfo/<hex build id>')
  return undefined
}
