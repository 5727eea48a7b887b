import { readFileSync } from 'node:fs'
import type { Dispatcher } from 'undici'

/** A netrc file larger than this is refused: real ones are a few lines. @default 1 MiB */
export const MAX_NETRC_BYTES = 1024 * 1024

/** Thrown for a netrc file or `--upstream-header` the proxy can't use; main prints the message. */
export class CredentialsError extends Error {
  override readonly name = 'CredentialsError' as const
}

/** One `machine` (or `default`) entry of a netrc file. */
export interface NetrcEntry {
  /** The host name it is for; undefined for `default`. */
  machine?: string
  login?: string
  password?: string
}

/**
 * Splits netrc text into tokens: white space separates them, and `"…"` may hold spaces and `\"` escapes,
 * as curl reads it. A `macdef` takes its name and then every line up to the next empty one: those go.
 */
function tokens(text: string): string[] {
  const out: string[] = []
  let inMacro = false
  for (const line of text.split('\n')) {
    if (inMacro) {
      inMacro = line.trim() !== ''
      continue
    }
    if (line.trimStart().startsWith('#')) continue
    const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g
    for (let m = re.exec(line); m; m = re.exec(line)) {
      const token = m[1] !== undefined ? m[1].replace(/\\(.)/g, (_, c: string) => ({ n: '\n', r: '\r', t: '\t' })[c] ?? c) : m[2]!
      if (m[1] === undefined && token === 'macdef') {
        inMacro = true
        break
      }
      out.push(token)
    }
  }
  return out
}

/**
 * Parses a netrc file (`machine HOST login USER password PASS`, `default …`), as Nix hands it to curl
 * through its `netrc-file` setting. `macdef` bodies (up to the next empty line) are skipped; `account`
 * is read and ignored. Throws CredentialsError for a keyword without its value.
 */
export function parseNetrc(text: string): NetrcEntry[] {
  const list = tokens(text)
  const entries: NetrcEntry[] = []
  let current: NetrcEntry | undefined
  for (let i = 0; i < list.length; i++) {
    const word = list[i]!
    const value = (): string => {
      const next = list[++i]
      if (next === undefined) throw new CredentialsError(`netrc: '${word}' without a value`)
      return next
    }
    switch (word) {
      case 'machine':
        current = { machine: value().toLowerCase().replace(/^\[(.*)\]$/, '$1') }
        entries.push(current)
        break
      case 'default':
        current = {}
        entries.push(current)
        break
      case 'login':
      case 'password':
        if (!current) throw new CredentialsError(`netrc: '${word}' before any 'machine' or 'default'`)
        current[word] = value()
        break
      case 'account':
        value()
        break
      default:
        throw new CredentialsError(`netrc: unexpected '${word.slice(0, 40)}'`)
    }
  }
  return entries
}

/** Reads and parses a netrc file; a missing, unreadable or oversized file is a CredentialsError. */
export function readNetrc(path: string): NetrcEntry[] {
  let text: string
  try {
    const bytes = readFileSync(path)
    if (bytes.length > MAX_NETRC_BYTES) throw new CredentialsError(`--netrc-file ${path}: over ${MAX_NETRC_BYTES} bytes`)
    text = bytes.toString('utf8')
  } catch (error) {
    if (error instanceof CredentialsError) throw error
    throw new CredentialsError(`--netrc-file ${path}: ${(error as Error).message}`)
  }
  try {
    return parseNetrc(text)
  } catch (error) {
    throw new CredentialsError(`--netrc-file ${path}: ${(error as Error).message}`)
  }
}

/** The `Authorization: Basic …` header netrc gives a cache URL, as curl picks it: its host, else `default`. */
export function netrcAuthorization(entries: readonly NetrcEntry[], url: string): string | undefined {
  const host = new URL(url).hostname.toLowerCase().replace(/^\[|\]$/g, '')
  const entry = entries.find((e) => e.machine === host) ?? entries.find((e) => e.machine === undefined)
  if (entry?.login === undefined && entry?.password === undefined) return undefined
  return `Basic ${Buffer.from(`${entry.login ?? ''}:${entry.password ?? ''}`).toString('base64')}`
}

/** Headers an `--upstream-header` may not set: they would break the protocol, not authenticate. */
const RESERVED_HEADERS = new Set([
  'host',
  'connection',
  'content-length',
  'transfer-encoding',
  'keep-alive',
  'upgrade',
  'te',
  'trailer',
  'range',
  'accept-encoding',
  'expect',
])

/** One `--upstream-header 'URL=Name: value'`. */
export interface UpstreamHeader {
  /** The upstream URL as `--upstream` gives it (no trailing slash). */
  upstream: string
  /** Lower case. */
  name: string
  value: string
}

/**
 * Parses `URL=Name: value`. The URL must be one of the `--upstream` URLs (a trailing slash aside), so a
 * header is only ever sent to an upstream the user named, and there only to its own origin.
 */
export function parseUpstreamHeader(text: string, upstreams: readonly string[]): UpstreamHeader {
  const match = /^([^=\s]+)=([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*)$/s.exec(text)
  if (!match) throw new CredentialsError(`--upstream-header: '${text.slice(0, 80)}' is not URL=Name: value`)
  const upstream = match[1]!.replace(/\/+$/, '')
  if (!upstreams.includes(upstream)) {
    throw new CredentialsError(`--upstream-header: ${upstream} is not one of the --upstream URLs`)
  }
  const name = match[2]!.toLowerCase()
  if (RESERVED_HEADERS.has(name)) throw new CredentialsError(`--upstream-header: ${name} can't be set`)
  const value = match[3]!.trim()
  if (/[\0\r\n]/.test(value)) throw new CredentialsError('--upstream-header: a value may not hold a line break')
  return { upstream, name, value }
}

/**
 * The request headers for each upstream: `authorization` from the netrc entry of its host, then every
 * `--upstream-header` for it (which wins over netrc). Upstreams with none are left out.
 */
export function upstreamHeaders(
  upstreams: readonly string[],
  options: { netrc?: readonly NetrcEntry[]; headers?: readonly UpstreamHeader[] },
): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {}
  for (const upstream of upstreams) {
    const headers: Record<string, string> = {}
    const basic = options.netrc && netrcAuthorization(options.netrc, upstream)
    if (basic) headers.authorization = basic
    for (const header of options.headers ?? []) if (header.upstream === upstream) headers[header.name] = header.value
    if (Object.keys(headers).length > 0) out[upstream] = headers
  }
  return out
}

/**
 * An undici interceptor that adds each upstream's headers to the requests that go to that upstream: same
 * origin and under its path. Any other request (another origin, a redirect that leaves the cache) goes
 * without them, so a credential never reaches another host.
 */
export function credentialInterceptor(headers: Record<string, Record<string, string>>): Dispatcher.DispatcherComposeInterceptor {
  const scopes = Object.entries(headers).map(([upstream, values]) => {
    const base = new URL(upstream)
    const path = base.pathname.endsWith('/') ? base.pathname : `${base.pathname}/`
    return { origin: base.origin, path, values }
  })
  return (dispatch) => (options, handler) => {
    const origin = typeof options.origin === 'string' ? options.origin : options.origin?.toString()
    const scope = scopes.find((s) => s.origin === origin && options.path.startsWith(s.path))
    if (!scope) return dispatch(options, handler)
    return dispatch({ ...options, headers: { ...flatHeaders(options.headers), ...scope.values } }, handler)
  }
}

/** undici takes headers as an object, a flat [name, value, …] array, or an iterable of pairs. */
function flatHeaders(headers: Dispatcher.DispatchOptions['headers']): Record<string, string> {
  const out: Record<string, string> = {}
  if (!headers) return out
  if (Array.isArray(headers)) {
    for (let i = 0; i + 1 < headers.length; i += 2) out[String(headers[i]).toLowerCase()] = String(headers[i + 1])
    return out
  }
  const entries = Symbol.iterator in headers ? [...(headers as Iterable<[string, string]>)] : Object.entries(headers)
  for (const [name, value] of entries) if (value !== undefined) out[name.toLowerCase()] = String(value)
  return out
}
