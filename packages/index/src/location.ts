import { parseNarHash } from '@narrace/core'
import { base32 } from 'multiformats/bases/base32'
import { CID } from 'multiformats/cid'
import { InvalidNarLocationError } from './errors.js'

/**
 * One mapping: where the file with this FileHash lives outside the binary caches.
 * Exported and imported as one JSON object per line (NDJSON).
 */
export interface NarLocation {
  /** The FileHash, the SHA-256 of the `.nar.xz`, as `sha256:<nix32>`. */
  fileHash: string
  /** The size of the whole file in bytes (the narinfo FileSize). */
  size?: number
  /** An IPFS CID whose content is the whole file. */
  cid?: string
  /** A BitTorrent v1 infohash, 40 lowercase hex characters, of a torrent holding the file. */
  btih?: string
  /** A magnet link for that torrent; its `xt` names the same infohash. */
  magnet?: string
  /** The store path the file is the NAR of. */
  storePath?: string
  /** The narinfo URL of the file, such as `nar/<nix32>.nar.xz`. */
  url?: string
  /**
   * `'gone'` once the publisher no longer holds the file (evicted from its store): the row stays, without
   * its addresses, so that peers reading changes learn it.
   */
  status?: 'gone'
  /** Where this mapping was learned: `'local'`, `'import'`, `'dht'`, `'peer:<url>'`. A hint, never trusted. */
  source?: string
  /** When the mapping was last written, as an ISO 8601 date. */
  updatedAt?: string
}

/** Longest narinfo `URL` kept; a longer one is refused as malformed. */
export const MAX_URL_LENGTH = 4096

/** Longest `source` kept; a longer one is refused as malformed. */
export const MAX_SOURCE_LENGTH = 512

/** The keys a mapping may have, in the order `export()` writes them. */
export const LOCATION_KEYS = [
  'fileHash',
  'size',
  'cid',
  'btih',
  'magnet',
  'storePath',
  'url',
  'status',
  'source',
  'updatedAt',
] as const

const HEX_BTIH = /^[0-9a-fA-F]{40}$/
const BASE32_BTIH = /^[A-Za-z2-7]{32}$/
const STORE_PATH = /^\/(?:[^/\0]+\/)*[0-9a-df-np-sv-z]{32}-[^/\0]+$/
const MAGNET_XT = /^xt(?:\.\d+)?$/

function invalid(message: string): never {
  throw new InvalidNarLocationError(message)
}

/** Reads an optional field: absent and `null` both mean "not given". */
function optional<T>(record: Record<string, unknown>, key: string, type: string): T | undefined {
  const value = record[key]
  if (value === undefined || value === null) return undefined
  if (typeof value !== type) invalid(`${key} must be a ${type}, got ${typeof value}`)
  return value as T
}

/** A BitTorrent v1 infohash in hex or (as some magnets carry it) base32, as 40 lowercase hex characters. */
function normalizeBtih(text: string, where: string, allowBase32: boolean): string {
  if (HEX_BTIH.test(text)) return text.toLowerCase()
  if (allowBase32 && BASE32_BTIH.test(text)) {
    return Buffer.from(base32.baseDecode(text.toLowerCase())).toString('hex')
  }
  return invalid(`${where} '${text}' is not a ${allowBase32 ? '40-character hex or 32-character base32' : '40-character hex'} infohash`)
}

/** The v1 infohashes a magnet's `xt` parameters name. */
function magnetBtihs(magnet: string): string[] {
  let url: URL
  try {
    url = new URL(magnet)
  } catch {
    return invalid(`magnet '${magnet}' is not a URL`)
  }
  if (url.protocol !== 'magnet:') invalid(`magnet '${magnet}' is not a magnet: link`)
  const btihs: string[] = []
  for (const [key, value] of url.searchParams) {
    if (!MAGNET_XT.test(key) || !value.toLowerCase().startsWith('urn:btih:')) continue
    btihs.push(normalizeBtih(value.slice('urn:btih:'.length), 'magnet xt', true))
  }
  if (btihs.length === 0) invalid(`magnet '${magnet}' has no xt=urn:btih:<infohash>`)
  return btihs
}

/**
 * Checks a mapping and puts it in its stored form: the FileHash as `sha256:<nix32>`, a CIDv1 in base32,
 * the infohash in lowercase hex (taken from the magnet when only that is given), the date in ISO 8601.
 * Keys it does not know are dropped, so that files from newer writers still import.
 * Throws InvalidNarHashError for the FileHash and InvalidNarLocationError for anything else.
 */
export function normalizeLocation(input: unknown): NarLocation {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) invalid('a mapping must be a JSON object')
  const record = input as Record<string, unknown>
  const fileHash = record.fileHash
  if (typeof fileHash !== 'string') invalid('fileHash is missing or not a string')
  const location: NarLocation = { fileHash: parseNarHash(fileHash).toString() }

  const size = optional<number>(record, 'size', 'number')
  if (size !== undefined) {
    if (!Number.isSafeInteger(size) || size < 0) invalid(`size ${size} is not an integer ≥ 0`)
    location.size = size
  }

  const cid = optional<string>(record, 'cid', 'string')
  if (cid !== undefined) {
    try {
      location.cid = CID.parse(cid).toString()
    } catch (error) {
      throw new InvalidNarLocationError(`cid '${cid}' is not a CID: ${(error as Error).message}`, { cause: error })
    }
  }

  const btih = optional<string>(record, 'btih', 'string')
  if (btih !== undefined) location.btih = normalizeBtih(btih, 'btih', false)

  const magnet = optional<string>(record, 'magnet', 'string')
  if (magnet !== undefined) {
    const named = magnetBtihs(magnet)
    if (location.btih === undefined) location.btih = named[0]
    else if (!named.includes(location.btih)) {
      invalid(`magnet '${magnet}' names infohash ${named.join(', ')}, not btih ${location.btih}`)
    }
    location.magnet = magnet
  }

  const storePath = optional<string>(record, 'storePath', 'string')
  if (storePath !== undefined) {
    if (!STORE_PATH.test(storePath)) invalid(`storePath '${storePath}' is not a store path`)
    location.storePath = storePath
  }

  const url = optional<string>(record, 'url', 'string')
  if (url !== undefined) {
    if (url === '' || url.length > MAX_URL_LENGTH || /[\s\0]/.test(url)) {
      invalid(`url is empty, longer than ${MAX_URL_LENGTH} characters or has white space`)
    }
    location.url = url
  }

  const status = optional<string>(record, 'status', 'string')
  if (status !== undefined) {
    if (status !== 'gone') invalid(`status '${status}' is not 'gone'`)
    location.status = status
  }

  const source = optional<string>(record, 'source', 'string')
  if (source !== undefined) {
    if (source === '' || source.length > MAX_SOURCE_LENGTH || /[\0-\x1f\x7f]/.test(source)) {
      invalid(`source is empty, longer than ${MAX_SOURCE_LENGTH} characters or has control characters`)
    }
    location.source = source
  }

  const updatedAt = optional<string>(record, 'updatedAt', 'string')
  if (updatedAt !== undefined) {
    const time = Date.parse(updatedAt)
    if (Number.isNaN(time)) invalid(`updatedAt '${updatedAt}' is not a date`)
    location.updatedAt = new Date(time).toISOString()
  }
  return location
}

/** One mapping as one line of the NDJSON format (no line terminator), keys always in the same order. */
export function formatLocation(location: NarLocation): string {
  const ordered: Record<string, unknown> = {}
  for (const key of LOCATION_KEYS) if (location[key] !== undefined) ordered[key] = location[key]
  return JSON.stringify(ordered)
}
