import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto'
import { InvalidNarInfoError } from '@narrace/core'

const ED25519_PUBLIC_KEY_BYTES = 32
/** Nix stores an ed25519 secret key as libsodium does: the 32-byte seed, then the 32-byte public key. */
const ED25519_SECRET_KEY_BYTES = 64
const ED25519_SIGNATURE_BYTES = 64

/** A `name:base64` string split into its name and bytes, as Nix writes keys and signatures. */
interface Named {
  name: string
  bytes: Buffer
}

/** Decodes strict, padded base64 of an exact length; Buffer.from alone skips bad characters silently. */
function decodeNamed(text: string, bytes: number, what: string): Named {
  if (typeof text !== 'string') throw new InvalidNarInfoError(`${what} must be a string, got ${typeof text}`)
  const colon = text.indexOf(':')
  if (colon <= 0) throw new InvalidNarInfoError(`${what} '${text}' is not 'name:base64'`)
  const name = text.slice(0, colon)
  const base64 = text.slice(colon + 1)
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(base64) || base64.length % 4 !== 0) {
    throw new InvalidNarInfoError(`${what} '${name}' has bad base64 '${base64}'`)
  }
  const decoded = Buffer.from(base64, 'base64')
  if (decoded.toString('base64') !== base64) {
    throw new InvalidNarInfoError(`${what} '${name}' has non-canonical base64 '${base64}'`)
  }
  if (decoded.length !== bytes) {
    throw new InvalidNarInfoError(`${what} '${name}' is ${decoded.length} bytes; an ed25519 ${what} is ${bytes}`)
  }
  return { name, bytes: decoded }
}

/** Keys are often read from files; a trailing newline is not part of the key. */
function trim(key: string): string {
  return typeof key === 'string' ? key.trim() : key
}

/** A signature from a narinfo `Sig` line: the name of the key that made it, and 64 bytes. */
export function parseSignature(sig: string): Named {
  return decodeNamed(sig, ED25519_SIGNATURE_BYTES, 'signature')
}

/** Nix's public key, `name:base64(32 bytes)`, as a node:crypto KeyObject. */
export function parsePublicKey(key: string): { name: string; key: KeyObject } {
  const { name, bytes } = decodeNamed(trim(key), ED25519_PUBLIC_KEY_BYTES, 'public key')
  try {
    const jwk = { kty: 'OKP', crv: 'Ed25519', x: bytes.toString('base64url') }
    return { name, key: createPublicKey({ key: jwk, format: 'jwk' }) }
  } catch (cause) {
    throw new InvalidNarInfoError(`public key '${name}' is not an ed25519 key`, { cause })
  }
}

/** Nix's secret key, `name:base64(64 bytes)`, as a node:crypto KeyObject. */
export function parseSecretKey(key: string): { name: string; key: KeyObject } {
  const { name, bytes } = decodeNamed(trim(key), ED25519_SECRET_KEY_BYTES, 'secret key')
  const seed = bytes.subarray(0, 32).toString('base64url')
  const pub = bytes.subarray(32).toString('base64url')
  let privateKey: KeyObject
  try {
    privateKey = createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: seed, x: pub }, format: 'jwk' })
  } catch (cause) {
    throw new InvalidNarInfoError(`secret key '${name}' is not an ed25519 key`, { cause })
  }
  // The signature is made from the seed alone; a mismatched public half means a corrupt key file.
  if (createPublicKey(privateKey).export({ format: 'jwk' }).x !== pub) {
    throw new InvalidNarInfoError(`secret key '${name}': its public half does not belong to its seed`)
  }
  return { name, key: privateKey }
}
