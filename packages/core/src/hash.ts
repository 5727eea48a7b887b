import { InvalidNarHashError } from './errors.js'

/** Nix's base-32 alphabet: no e, o, u, t, so that no words appear in store paths. */
const NIX32_ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz'
const SHA256_BYTES = 32
const NIX32_LENGTH = 52
const HEX_LENGTH = 64
const BASE64_LENGTH = 44
const NIX32_INDEX = new Map([...NIX32_ALPHABET].map((c, i) => [c, i]))
const NAR_URL = /(?:^|\/)nar\/([^/]+)\.nar(?:\.(?:xz|zst|bz2|lz4|br))?$/
const OTHER_ALGORITHMS = ['md5', 'sha1', 'sha512']

/** A SHA-256 in every form Nix writes it. narrace uses it for the FileHash. */
export class NarHash {
  readonly bytes: Uint8Array
  readonly hex: string
  readonly nix32: string
  readonly sri: string

  /** @internal use parseNarHash */
  constructor(bytes: Uint8Array) {
    if (bytes.length !== SHA256_BYTES) {
      throw new InvalidNarHashError(`a SHA-256 has ${SHA256_BYTES} bytes, got ${bytes.length}`)
    }
    this.bytes = Uint8Array.from(bytes)
    this.hex = Buffer.from(bytes).toString('hex')
    this.nix32 = encodeNix32(bytes)
    this.sri = `sha256-${Buffer.from(bytes).toString('base64')}`
  }

  /** `sha256:<nix32>`, the form narinfo files use. */
  toString(): string {
    return `sha256:${this.nix32}`
  }

  toJSON(): string {
    return this.toString()
  }

  equals(other: NarHash): boolean {
    return this.hex === other.hex
  }
}

/** Encodes bytes in Nix's base-32, least significant bits first, as `printHash32` does. */
export function encodeNix32(bytes: Uint8Array): string {
  const length = Math.ceil((bytes.length * 8) / 5)
  let out = ''
  for (let n = length - 1; n >= 0; n--) {
    const b = n * 5
    const i = b >> 3
    const j = b & 7
    const lo = bytes[i]! >> j
    const hi = i + 1 < bytes.length ? bytes[i + 1]! << (8 - j) : 0
    out += NIX32_ALPHABET[(lo | hi) & 0x1f]
  }
  return out
}

/** Decodes Nix's base-32; rejects characters outside the alphabet and set overflow bits. */
export function decodeNix32(text: string, size: number = SHA256_BYTES): Uint8Array {
  const bytes = new Uint8Array(size)
  for (let n = 0; n < text.length; n++) {
    const c = text[text.length - n - 1]!
    const digit = NIX32_INDEX.get(c)
    if (digit === undefined) {
      throw new InvalidNarHashError(
        `invalid character '${c}' at position ${text.length - n - 1} of nix32 hash '${text}' (the alphabet is ${NIX32_ALPHABET})`,
      )
    }
    const b = n * 5
    const i = b >> 3
    const j = b & 7
    bytes[i]! |= (digit << j) & 0xff
    const carry = digit >> (8 - j)
    if (i + 1 < size) bytes[i + 1]! |= carry
    else if (carry !== 0) {
      throw new InvalidNarHashError(`nix32 hash '${text}' has non-zero overflow bits: it is not a ${size}-byte hash`)
    }
  }
  return bytes
}

function fromHex(text: string): Uint8Array {
  if (!/^[0-9a-fA-F]+$/.test(text)) {
    throw new InvalidNarHashError(`invalid character in hex hash '${text}'`)
  }
  return Uint8Array.from(Buffer.from(text, 'hex'))
}

function fromBase64(text: string, input: string): Uint8Array {
  if (text.length !== BASE64_LENGTH || !/^[A-Za-z0-9+/]{43}=$/.test(text)) {
    throw new InvalidNarHashError(`'${input}' is not a base64 SHA-256 (44 characters ending in '=')`)
  }
  return Uint8Array.from(Buffer.from(text, 'base64'))
}

/** Reads a digest with no algorithm prefix, choosing the encoding by its length as Nix does. */
function fromDigest(digest: string, input: string): Uint8Array {
  switch (digest.length) {
    case NIX32_LENGTH:
      return decodeNix32(digest)
    case HEX_LENGTH:
      return fromHex(digest)
    case BASE64_LENGTH:
      return fromBase64(digest, input)
    case 0:
      throw new InvalidNarHashError(`'${input}' has no digest`)
    default:
      throw new InvalidNarHashError(
        `'${input}' has a digest of ${digest.length} characters; a SHA-256 is ${NIX32_LENGTH} in nix32, ${HEX_LENGTH} in hex or ${BASE64_LENGTH} in base64`,
      )
  }
}

/**
 * Parses a SHA-256 as Nix writes it: `sha256:<nix32|hex|base64>`, bare nix32 or hex, SRI
 * `sha256-<base64>`, or a NAR path or URL ending in `nar/<nix32>.nar[.xz|.zst|.bz2|.lz4|.br]`.
 * Throws InvalidNarHashError (NARRACE_INVALID_HASH) for anything else.
 */
export function parseNarHash(input: string | NarHash): NarHash {
  if (input instanceof NarHash) return input
  // A NarHash made by another copy of this package (say, a bundled one) is just as good.
  const bytes = (input as { bytes?: unknown } | null)?.bytes
  if (typeof input === 'object' && bytes instanceof Uint8Array) return new NarHash(bytes)
  if (typeof input !== 'string') {
    throw new InvalidNarHashError(`a hash must be a string, got ${input === null ? 'null' : typeof input}`)
  }
  const text = input.trim()
  if (text === '') throw new InvalidNarHashError('empty hash string')

  const nar = NAR_URL.exec(text.split(/[?#]/, 1)[0]!)
  if (nar) {
    const digest = nar[1]!
    if (digest.length !== NIX32_LENGTH) {
      throw new InvalidNarHashError(
        `NAR file name '${digest}' in '${input}' is not a ${NIX32_LENGTH}-character nix32 FileHash`,
      )
    }
    return new NarHash(decodeNix32(digest))
  }
  const sri = /^([a-z0-9]+)-([A-Za-z0-9+/=]*)$/.exec(text)
  if (sri) {
    checkAlgorithm(sri[1]!, input)
    return new NarHash(fromBase64(sri[2]!, input))
  }
  const prefixed = /^([a-z0-9]+):([A-Za-z0-9+/=]*)$/.exec(text)
  if (prefixed) {
    checkAlgorithm(prefixed[1]!, input)
    return new NarHash(fromDigest(prefixed[2]!, input))
  }
  if (text.includes('/')) {
    throw new InvalidNarHashError(`'${input}' is neither a hash nor a NAR URL ending in nar/<nix32>.nar[.xz|.zst|.bz2|.lz4|.br]`)
  }
  if (text.length === NIX32_LENGTH || text.length === HEX_LENGTH) return new NarHash(fromDigest(text, input))
  throw new InvalidNarHashError(
    `'${input}' is ${text.length} characters; expected sha256:<nix32>, ${NIX32_LENGTH}-character nix32, ${HEX_LENGTH}-character hex, sha256-<base64> or a NAR URL`,
  )
}

function checkAlgorithm(algorithm: string, input: string): void {
  if (algorithm === 'sha256') return
  if (OTHER_ALGORITHMS.includes(algorithm)) {
    throw new InvalidNarHashError(`'${input}' is a ${algorithm} hash; narrace fetches by SHA-256 only`)
  }
  throw new InvalidNarHashError(`'${input}' names an unknown hash algorithm '${algorithm}'`)
}
