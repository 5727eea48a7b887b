import { InvalidNarInfoError, parseNarHash } from '@narrace/core'
import { parseSignature } from './keys.js'
import { type Line, lineError, splitLines } from './lines.js'
import { parseStoreBasename, parseStorePath } from './store-path.js'

/** What a narinfo says about one store path. Hashes and sizes keep the exact text Nix wrote. */
export interface NarInfo {
  /** `/nix/store/<hashPart>-<name>` */
  storePath: string
  /** Where the file is, relative to the cache: usually `nar/<FileHash nix32>.nar.xz`. */
  url: string
  /** `xz`, `zstd`, `bzip2`, `none`…; a narinfo without the line means `bzip2`. */
  compression: string
  /** SHA-256 of the file at `url`, `sha256:<nix32>`: what narrace fetches by and verifies. */
  fileHash?: string
  fileSize?: number
  /** SHA-256 of the uncompressed NAR: Nix checks it, narrace only checks its form. */
  narHash: string
  narSize: number
  /** Store path basenames, `<hashPart>-<name>`, space-separated on the line. */
  references: string[]
  /** A `.drv` basename, or `unknown-deriver`. */
  deriver?: string
  /** `keyName:base64(64-byte ed25519 signature)`; a narinfo may carry several. */
  sigs: string[]
  /** Content address: `fixed:r:sha256:…`, `text:sha256:…`. */
  ca?: string
  /** Lines with keys narrace doesn't know (`System`, …), written back after the known ones in their order. */
  extra?: { key: string; value: string }[]
}

const WHAT = 'narinfo'
const SINGLE_KEYS = 'StorePath URL Compression FileHash FileSize NarHash NarSize References Deriver CA'.split(' ')
const KNOWN_KEYS = [...SINGLE_KEYS, 'Sig']
const REQUIRED_KEYS = ['StorePath', 'URL', 'NarHash', 'NarSize']
/** Old narinfos have no Compression line; Nix reads that as bzip2. */
const DEFAULT_COMPRESSION = 'bzip2'

/**
 * Rejects what can't be a NarInfo before any field is read, so callers get InvalidNarInfoError rather than a
 * TypeError. Missing `references` and `sigs` are left to the callers, which read them as empty.
 */
export function checkNarInfoObject(info: unknown): asserts info is NarInfo {
  if (typeof info !== 'object' || info === null || Array.isArray(info)) {
    throw new InvalidNarInfoError(`a narinfo must be an object, got ${info === null ? 'null' : typeof info}`)
  }
  for (const key of ['references', 'sigs'] as const) {
    const list: unknown = (info as Partial<NarInfo>)[key]
    if (list !== undefined && (!Array.isArray(list) || list.some((item) => typeof item !== 'string'))) {
      throw new InvalidNarInfoError(`narinfo ${key} must be an array of strings`)
    }
  }
}

function wrap<T>(line: Line, parse: () => T): T {
  try {
    return parse()
  } catch (error) {
    throw lineError(WHAT, line, error instanceof Error ? error.message : String(error), error)
  }
}

/**
 * Checks that a hash is a SHA-256 as Nix writes it in a narinfo (`sha256:<nix32|hex|base64>` or SRI).
 * Other algorithms are rejected: narrace fetches and verifies by SHA-256 only.
 */
export function checkNarInfoHash(value: string): string {
  if (!/^sha256[:-]\S+$/.test(value)) {
    throw new InvalidNarInfoError(`'${value}' is not a SHA-256 written 'sha256:<digest>'`)
  }
  try {
    parseNarHash(value)
  } catch (cause) {
    throw new InvalidNarInfoError(cause instanceof Error ? cause.message : String(cause), { cause })
  }
  return value
}

function parseSize(line: Line, positive: boolean): number {
  if (!/^(0|[1-9][0-9]*)$/.test(line.value)) {
    throw lineError(WHAT, line, `'${line.value}' is not a non-negative decimal integer`)
  }
  const size = Number(line.value)
  if (!Number.isSafeInteger(size)) throw lineError(WHAT, line, `${line.value} is too large`)
  if (positive && size === 0) throw lineError(WHAT, line, 'must be greater than 0')
  return size
}

/**
 * Parses a narinfo file. Every field is checked for form: store paths are in /nix/store, hashes are
 * SHA-256, sizes are non-negative integers, signatures are 64 bytes of base64. Throws
 * InvalidNarInfoError (NARRACE_INVALID_NARINFO) naming the line and field, or the missing field.
 */
export function parseNarInfo(text: string): NarInfo {
  const seen = new Map<string, number>()
  let storePath: string | undefined
  let url: string | undefined
  let compression: string | undefined
  let fileHash: string | undefined
  let fileSize: number | undefined
  let narHash: string | undefined
  let narSize: number | undefined
  let references: string[] = []
  let deriver: string | undefined
  let ca: string | undefined
  const sigs: string[] = []
  const extra: { key: string; value: string }[] = []

  for (const line of splitLines(text, WHAT)) {
    const { key, value } = line
    if (SINGLE_KEYS.includes(key)) {
      const first = seen.get(key)
      if (first !== undefined) throw lineError(WHAT, line, `appears twice (first on line ${first})`)
      seen.set(key, line.number)
    }
    switch (key) {
      case 'StorePath':
        storePath = wrap(line, () => parseStorePath(value).path)
        break
      case 'URL':
        if (value === '' || /\s/.test(value)) throw lineError(WHAT, line, `'${value}' is not a URL`)
        url = value
        break
      case 'Compression':
        if (!/^[A-Za-z0-9._+-]+$/.test(value)) throw lineError(WHAT, line, `'${value}' is not a compression method`)
        compression = value
        break
      case 'FileHash':
        fileHash = wrap(line, () => checkNarInfoHash(value))
        break
      case 'FileSize':
        fileSize = parseSize(line, false)
        break
      case 'NarHash':
        narHash = wrap(line, () => checkNarInfoHash(value))
        break
      case 'NarSize':
        narSize = parseSize(line, true)
        break
      case 'References':
        references = (value === '' ? [] : value.split(' ')).map((ref) =>
          wrap(line, () => parseStoreBasename(ref).basename),
        )
        break
      case 'Deriver':
        deriver = value === 'unknown-deriver' ? value : wrap(line, () => parseStoreBasename(value).basename)
        break
      case 'Sig':
        wrap(line, () => parseSignature(value))
        sigs.push(value)
        break
      case 'CA':
        if (!/^(text|fixed):\S+$/.test(value)) throw lineError(WHAT, line, `'${value}' is not a content address`)
        ca = value
        break
      default:
        extra.push({ key, value })
    }
  }

  const missing = REQUIRED_KEYS.filter((key) => !seen.has(key))
  if (missing.length > 0) {
    throw new InvalidNarInfoError(`narinfo has no ${missing.join(', ')} line${missing.length > 1 ? 's' : ''}`)
  }
  const info: NarInfo = {
    storePath: storePath!,
    url: url!,
    compression: compression ?? DEFAULT_COMPRESSION,
    narHash: narHash!,
    narSize: narSize!,
    references,
    sigs,
  }
  if (fileHash !== undefined) info.fileHash = fileHash
  if (fileSize !== undefined) info.fileSize = fileSize
  if (deriver !== undefined) info.deriver = deriver
  if (ca !== undefined) info.ca = ca
  if (extra.length > 0) info.extra = extra
  return info
}

/**
 * Writes a narinfo in the order and form Nix writes it, so `formatNarInfo(parseNarInfo(t)) === t` for
 * a Nix-written `t`, and `parseNarInfo(formatNarInfo(x))` deep-equals `x`. Throws InvalidNarInfoError
 * when the result would not parse.
 */
export function formatNarInfo(info: NarInfo): string {
  checkNarInfoObject(info)
  const lines: [string, string | number][] = [
    ['StorePath', info.storePath],
    ['URL', info.url],
    ['Compression', info.compression ?? DEFAULT_COMPRESSION],
  ]
  if (info.fileHash !== undefined) lines.push(['FileHash', info.fileHash])
  if (info.fileSize !== undefined) lines.push(['FileSize', info.fileSize])
  lines.push(['NarHash', info.narHash], ['NarSize', info.narSize], ['References', (info.references ?? []).join(' ')])
  if (info.deriver !== undefined) lines.push(['Deriver', info.deriver])
  for (const sig of info.sigs ?? []) lines.push(['Sig', sig])
  if (info.ca !== undefined) lines.push(['CA', info.ca])
  for (const { key, value } of info.extra ?? []) {
    if (KNOWN_KEYS.includes(key)) throw new InvalidNarInfoError(`narinfo extra field ${key} is a known field`)
    lines.push([key, value])
  }

  let text = ''
  for (const [key, value] of lines) {
    // A newline inside a value would smuggle in a line of the writer's choosing.
    if (/[\r\n]/.test(String(value))) throw new InvalidNarInfoError(`narinfo field ${key} contains a line break`)
    text += `${key}: ${value}\n`
  }
  parseNarInfo(text)
  return text
}
