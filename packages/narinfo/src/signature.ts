import { generateKeyPairSync, sign, verify } from 'node:crypto'
import { InvalidNarInfoError, parseNarHash } from '@narrace/core'
import { parsePublicKey, parseSecretKey, parseSignature } from './keys.js'
import { checkNarInfoHash, checkNarInfoObject, type NarInfo } from './narinfo.js'
import { parseStoreBasename, parseStorePath } from './store-path.js'

/**
 * The string a narinfo signature covers, as Nix builds it:
 * `1;<storePath>;sha256:<nix32 NarHash>;<NarSize>;<references as full store paths, sorted, comma-joined>`.
 * Compression, URL and FileHash are not covered: narrace verifies the FileHash against the bytes instead.
 */
export function narInfoFingerprint(info: NarInfo): string {
  checkNarInfoObject(info)
  const storePath = parseStorePath(info.storePath).path
  const narHash = parseNarHash(checkNarInfoHash(info.narHash)).toString()
  if (!Number.isSafeInteger(info.narSize) || info.narSize <= 0) {
    throw new InvalidNarInfoError(`narinfo NarSize ${info.narSize} is not a positive integer`)
  }
  // Nix keeps references in a sorted set of basenames; under one store directory that sorts the full paths too.
  const references = [...new Set(info.references ?? [])].sort().map((ref) => parseStoreBasename(ref).path)
  return `1;${storePath};${narHash};${info.narSize};${references.join(',')}`
}

/**
 * Checks the narinfo's signatures against trusted keys, `name:base64(32-byte ed25519 public key)` as in
 * Nix's `trusted-public-keys`. Valid when one signature made by a trusted key verifies; `keyName` names
 * it. Signatures by unknown keys are ignored. A malformed trusted key throws InvalidNarInfoError.
 */
export function verifyNarInfo(info: NarInfo, trustedKeys: string[]): { valid: boolean; keyName?: string } {
  if (!Array.isArray(trustedKeys)) throw new InvalidNarInfoError('trustedKeys must be an array of public keys')
  const keys = trustedKeys.map(parsePublicKey)
  checkNarInfoObject(info)
  const sigs = info.sigs ?? []
  if (keys.length === 0 || sigs.length === 0) return { valid: false }
  const fingerprint = Buffer.from(narInfoFingerprint(info))
  for (const sig of sigs) {
    let signature: ReturnType<typeof parseSignature>
    try {
      signature = parseSignature(sig)
    } catch {
      continue // A malformed signature verifies nothing; another may still be good.
    }
    for (const { name, key } of keys) {
      if (name === signature.name && verify(null, fingerprint, key, signature.bytes)) {
        return { valid: true, keyName: name }
      }
    }
  }
  return { valid: false }
}

/**
 * Signs a narinfo with Nix's secret key, `name:base64(64 bytes)` as `nix-store --generate-binary-cache-key`
 * writes it, and returns a copy with the signature added. Signatures stay sorted and unique, as Nix keeps them.
 */
export function signNarInfo(info: NarInfo, secretKey: string): NarInfo {
  const { name, key } = parseSecretKey(secretKey)
  checkNarInfoObject(info)
  const signature = sign(null, Buffer.from(narInfoFingerprint(info)), key)
  const sig = `${name}:${signature.toString('base64')}`
  return { ...info, sigs: [...new Set([...(info.sigs ?? []), sig])].sort() }
}

/**
 * Makes a new ed25519 key pair in Nix's formats, as `nix-store --generate-binary-cache-key name` does:
 * `secretKey` for signNarInfo, `publicKey` for verifyNarInfo and Nix's `trusted-public-keys`.
 */
export function generateSigningKey(name: string): { secretKey: string; publicKey: string } {
  if (typeof name !== 'string' || name === '' || name.includes(':') || /\s/.test(name)) {
    throw new InvalidNarInfoError(`key name '${name}' must be non-empty, without ':' or spaces`)
  }
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const jwk = privateKey.export({ format: 'jwk' })
  const pub = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url')
  const secret = Buffer.concat([Buffer.from(jwk.d!, 'base64url'), pub])
  return { secretKey: `${name}:${secret.toString('base64')}`, publicKey: `${name}:${pub.toString('base64')}` }
}
