import { readFile } from 'node:fs/promises'
import { NarraceError } from '@narrace/core'
import { bareHost } from './addresses.js'

/** One `machine` (or the `default`) entry of a netrc file. */
export interface NetrcEntry {
  login?: string
  password?: string
  account?: string
}

/** A parsed netrc file: entries by machine name (lower case), in file order, and the `default` entry. */
export interface Netrc {
  machines: { machine: string; entry: NetrcEntry }[]
  default?: NetrcEntry
}

/** The credentials a netrc file holds for a host. */
export interface NetrcCredentials {
  login: string
  password: string
}

/** Thrown when a netrc file can't be read as one: an unterminated quote, a keyword without its value. */
export class InvalidNetrcError extends NarraceError {
  override name = 'InvalidNetrcError' as const
  override readonly code = 'NARRACE_INVALID_NETRC' as const
}

/** Splits netrc text into tokens the way curl does: whitespace-separated, `"…"` with `\` escapes, `#` comments. */
function tokens(text: string): { value: string; line: number }[] {
  const out: { value: string; line: number }[] = []
  let line = 1
  let i = 0
  while (i < text.length) {
    const c = text[i]!
    if (c === '\n') {
      line++
      i++
    } else if (c === ' ' || c === '\t' || c === '\r' || c === '\f' || c === '\v') {
      i++
    } else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++
    } else if (c === '"') {
      let value = ''
      i++
      for (;;) {
        if (i >= text.length || text[i] === '\n') throw new InvalidNetrcError(`netrc line ${line}: unterminated quoted string`)
        const d = text[i++]!
        if (d === '"') break
        if (d === '\\' && i < text.length) {
          const e = text[i++]!
          value += e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e
        } else value += d
      }
      out.push({ value, line })
    } else {
      const start = i
      while (i < text.length && !/\s/.test(text[i]!)) i++
      out.push({ value: text.slice(start, i), line })
      // A macro body runs to the next empty line and is not part of the credentials.
      if (out.at(-2)?.value === 'macdef') {
        const end = text.indexOf('\n\n', i)
        const body = end < 0 ? text.slice(i) : text.slice(i, end)
        line += body.split('\n').length - 1
        i = end < 0 ? text.length : end
      }
    }
  }
  return out
}

/**
 * Parses a netrc file in the format curl reads for Nix's `netrc-file`: `machine NAME`, `default`,
 * `login`, `password`, `account` and `macdef` (skipped to the next empty line), separated by any
 * whitespace, with `"…"` quoting and `#` comments. Throws InvalidNetrcError for a keyword without its value.
 */
export function parseNetrc(text: string): Netrc {
  const netrc: Netrc = { machines: [] }
  const list = tokens(text)
  let entry: NetrcEntry | undefined
  for (let i = 0; i < list.length; i++) {
    const { value: keyword, line } = list[i]!
    const argument = (): string => {
      const next = list[++i]
      if (next === undefined) throw new InvalidNetrcError(`netrc line ${line}: '${keyword}' without a value`)
      return next.value
    }
    switch (keyword) {
      case 'machine':
        entry = {}
        netrc.machines.push({ machine: argument().toLowerCase(), entry })
        break
      case 'default':
        entry = {}
        netrc.default ??= entry
        break
      case 'login':
      case 'password':
      case 'account': {
        const value = argument()
        if (entry) entry[keyword] = value
        break
      }
      case 'macdef':
        argument()
        break
      default:
        // curl skips what it does not know; so does Nix.
        break
    }
  }
  return netrc
}

/** Reads and parses a netrc file (Nix's `netrc-file`, e.g. `/etc/nix/netrc`). */
export async function readNetrc(path: string, options: { signal?: AbortSignal } = {}): Promise<Netrc> {
  return parseNetrc(await readFile(path, { encoding: 'utf8', ...(options.signal && { signal: options.signal }) }))
}

/**
 * The login and password for the host of `url`, as curl picks them: the first `machine` whose name is
 * the host (without the port, case-insensitive), else the `default` entry, else none.
 */
export function credentialsFor(url: string | URL, netrc: Netrc | undefined): NetrcCredentials | undefined {
  if (!netrc) return undefined
  const host = bareHost(new URL(url).hostname)
  const entry = netrc.machines.find((m) => m.machine === host)?.entry ?? netrc.default
  if (!entry || (entry.login === undefined && entry.password === undefined)) return undefined
  return { login: entry.login ?? '', password: entry.password ?? '' }
}
