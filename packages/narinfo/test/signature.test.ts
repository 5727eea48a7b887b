import { InvalidNarInfoError, parseNarHash } from '@narrace/core'
import {
  formatNarInfo,
  generateSigningKey,
  narInfoFingerprint,
  parseNarInfo,
  signNarInfo,
  verifyNarInfo,
  type NarInfo,
} from '@narrace/narinfo'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'

const trusted = [fixtures.publicKey]
const nixSigned = fixtures.paths.map((p) => [p.name, parseNarInfo(fixtures.narinfoText(p.name))] as const)
const top = parseNarInfo(fixtures.narinfoText('diamond-top'))
const other = generateSigningKey('other-1')

describe('narInfoFingerprint', () => {
  it('is what Nix signs: full store paths, nix32 NarHash, sorted full references', () => {
    const left = fixtures.path('diamond-left').storePath
    const right = fixtures.path('diamond-right').storePath
    expect(narInfoFingerprint(top)).toBe(
      `1;${top.storePath};${top.narHash};${top.narSize};${[left, right].sort().join(',')}`,
    )
    expect(narInfoFingerprint(parseNarInfo(fixtures.narinfoText('small')))).toMatch(/;1152;$/)
  })

  it('does not depend on the order of References or the encoding of NarHash', () => {
    const hash = parseNarHash(top.narHash)
    const fingerprint = narInfoFingerprint(top)
    expect(narInfoFingerprint({ ...top, references: [...top.references].reverse() })).toBe(fingerprint)
    expect(narInfoFingerprint({ ...top, narHash: `sha256:${hash.hex}` })).toBe(fingerprint)
    expect(narInfoFingerprint({ ...top, narHash: hash.sri })).toBe(fingerprint)
  })

  it('refuses a NarInfo that could not have been parsed', () => {
    expect(() => narInfoFingerprint({ ...top, narSize: 0 })).toThrow(InvalidNarInfoError)
    expect(() => narInfoFingerprint({ ...top, storePath: '/tmp/x' })).toThrow(InvalidNarInfoError)
  })
})

describe('verifyNarInfo', () => {
  it.each(nixSigned)("accepts Nix's own signature on %s", (_name, info) => {
    expect(verifyNarInfo(info, trusted)).toEqual({ valid: true, keyName: 'narrace-test-1' })
  })

  it('rejects a changed NarHash, NarSize, reference or store path', () => {
    const narHash = parseNarInfo(fixtures.narinfoText('small')).narHash
    expect(verifyNarInfo({ ...top, narHash }, trusted).valid).toBe(false)
    expect(verifyNarInfo({ ...top, narSize: top.narSize + 1 }, trusted).valid).toBe(false)
    const bottom = fixtures.path('diamond-bottom').storePath.slice('/nix/store/'.length)
    expect(verifyNarInfo({ ...top, references: [top.references[0]!, bottom] }, trusted).valid).toBe(false)
    expect(verifyNarInfo({ ...top, references: [top.references[0]!] }, trusted).valid).toBe(false)
    expect(verifyNarInfo({ ...top, storePath: fixtures.path('small').storePath }, trusted).valid).toBe(false)
  })

  it('ignores what the signature does not cover: URL, Compression, FileHash', () => {
    const moved = { ...top, url: 'nar/elsewhere.nar.zst', compression: 'zstd', fileHash: undefined }
    expect(verifyNarInfo(moved, trusted).valid).toBe(true)
  })

  it('rejects a signature by another key, and a forged signature under the trusted name', () => {
    expect(verifyNarInfo(top, [other.publicKey])).toEqual({ valid: false })
    const forged = signNarInfo({ ...top, sigs: [] }, other.secretKey.replace(/^other-1:/, 'narrace-test-1:'))
    expect(verifyNarInfo(forged, trusted).valid).toBe(false)
  })

  it('is not valid without trusted keys or without signatures', () => {
    expect(verifyNarInfo(top, [])).toEqual({ valid: false })
    expect(verifyNarInfo({ ...top, sigs: [] }, trusted)).toEqual({ valid: false })
  })

  it.each(['hex', 'sha256:base64', 'SRI'] as const)(
    "verifies Nix's signature on a real narinfo whose NarHash an attic-like cache wrote in %s, keeping the text",
    (form) => {
      for (const name of ['small', 'diamond-top', '900k']) {
        const text = fixtures.narinfoText(name)
        const hash = parseNarHash(parseNarInfo(text).narHash)
        const written = { hex: `sha256:${hash.hex}`, 'sha256:base64': `sha256:${hash.sri.slice('sha256-'.length)}`, SRI: hash.sri }[form]
        const rewritten = text.replace(/^NarHash: .*$/m, `NarHash: ${written}`)
        expect(rewritten).not.toBe(text)
        const info = parseNarInfo(rewritten)
        expect(info.narHash).toBe(written)
        expect(formatNarInfo(info)).toBe(rewritten)
        expect(narInfoFingerprint(info)).toBe(narInfoFingerprint(parseNarInfo(text)))
        expect(verifyNarInfo(info, trusted)).toEqual({ valid: true, keyName: 'narrace-test-1' })
        // The normalised form is only for the fingerprint: a wrong digest in any form still fails.
        const wrong = parseNarHash(fixtures.path(name === 'small' ? '200k' : 'small').narHash)
        expect(verifyNarInfo({ ...info, narHash: `sha256:${wrong.hex}` }, trusted).valid).toBe(false)
      }
    },
  )

  it('finds the one trusted signature among several keys and signatures', () => {
    const both = signNarInfo(top, other.secretKey)
    expect(both.sigs).toHaveLength(2)
    expect(verifyNarInfo(both, [other.publicKey])).toEqual({ valid: true, keyName: 'other-1' })
    expect(verifyNarInfo(both, [generateSigningKey('third').publicKey, ...trusted]).keyName).toBe('narrace-test-1')
  })

  it('accepts keys read from a file with a trailing newline', () => {
    expect(verifyNarInfo(top, [`${fixtures.publicKey}\n`]).valid).toBe(true)
    expect(signNarInfo({ ...top, sigs: [] }, `${fixtures.secretKey}\n`)).toStrictEqual(top)
  })

  it('accepts the signatures on the synthetic cycle cache', () => {
    for (const path of fixtures.cycle.paths) {
      const text = readFileSync(join(fixtures.cycle.cacheDir, `${path.hashPart}.narinfo`), 'utf8')
      expect(verifyNarInfo(parseNarInfo(text), trusted).valid).toBe(true)
    }
  })

  it('skips a malformed signature rather than throwing', () => {
    const info: NarInfo = { ...top, sigs: ['garbage', 'narrace-test-1:AAAA', ...top.sigs] }
    expect(verifyNarInfo(info, trusted).valid).toBe(true)
  })

  it('throws InvalidNarInfoError, not a TypeError, for trusted keys or a narinfo of the wrong type', () => {
    expect(() => verifyNarInfo(top, fixtures.publicKey as unknown as string[])).toThrow(InvalidNarInfoError)
    expect(() => verifyNarInfo(null as unknown as NarInfo, trusted)).toThrow(InvalidNarInfoError)
    expect(() => narInfoFingerprint(undefined as unknown as NarInfo)).toThrow(InvalidNarInfoError)
    expect(() => signNarInfo(null as unknown as NarInfo, fixtures.secretKey)).toThrow(InvalidNarInfoError)
    const { sigs: _sigs, ...unsigned } = top
    expect(verifyNarInfo(unsigned as NarInfo, trusted)).toEqual({ valid: false })
    expect(verifyNarInfo(signNarInfo(unsigned as NarInfo, fixtures.secretKey), trusted).valid).toBe(true)
  })

  it.each([
    ['a key of the wrong length', `k:${Buffer.alloc(31).toString('base64')}`, /31 bytes; an ed25519 public key is 32/],
    ['a secret key where a public key goes', fixtures.secretKey, /64 bytes; an ed25519 public key is 32/],
    ['bad base64', 'k:not*base64', /bad base64/],
    ['unpadded base64', fixtures.publicKey.replace(/=$/, ''), /bad base64/],
    ['no name', fixtures.publicKey.replace(/^[^:]*/, ''), /not 'name:base64'/],
    ['no colon', 'abc', /not 'name:base64'/],
  ])('throws InvalidNarInfoError for a trusted key with %s', (_what, key, message) => {
    expect(() => verifyNarInfo(top, [key])).toThrow(message)
    expect(() => verifyNarInfo(top, [key])).toThrow(InvalidNarInfoError)
  })
})

describe('signNarInfo', () => {
  it.each(nixSigned)('makes the very signature Nix made on %s (ed25519 is deterministic)', (_name, info) => {
    expect(signNarInfo({ ...info, sigs: [] }, fixtures.secretKey)).toStrictEqual(info)
  })

  it('returns a copy, keeps signatures sorted and unique, and signing twice changes nothing', () => {
    const unsigned = { ...top, sigs: [] }
    const once = signNarInfo(unsigned, fixtures.secretKey)
    expect(unsigned.sigs).toEqual([])
    expect(signNarInfo(once, fixtures.secretKey)).toStrictEqual(once)
    const twice = signNarInfo(once, other.secretKey)
    expect(twice.sigs).toEqual([...twice.sigs].sort())
    expect(verifyNarInfo(twice, [other.publicKey]).valid).toBe(true)
  })

  it.each([
    ['a key of the wrong length', `k:${Buffer.alloc(32).toString('base64')}`, /32 bytes; an ed25519 secret key is 64/],
    ['a public key where the secret key goes', fixtures.publicKey, /32 bytes; an ed25519 secret key is 64/],
    ['bad base64', fixtures.secretKey.replace(/.{4}==$/, '@@@@=='), /bad base64/],
    [
      'a public half that does not belong to its seed',
      `k:${Buffer.concat([Buffer.from(fixtures.secretKey.split(':')[1]!, 'base64').subarray(0, 32), Buffer.alloc(32, 1)]).toString('base64')}`,
      /public half does not belong to its seed/,
    ],
  ])('throws InvalidNarInfoError for a secret key with %s', (_what, key, message) => {
    expect(() => signNarInfo(top, key)).toThrow(message)
    expect(() => signNarInfo(top, key)).toThrow(InvalidNarInfoError)
  })
})

describe('generateSigningKey', () => {
  it("writes keys in Nix's forms", () => {
    const { secretKey, publicKey } = generateSigningKey('cache.example.org-1')
    expect(secretKey).toMatch(/^cache\.example\.org-1:[A-Za-z0-9+/]{86}==$/)
    expect(publicKey).toMatch(/^cache\.example\.org-1:[A-Za-z0-9+/]{43}=$/)
    expect(Buffer.from(secretKey.split(':')[1]!, 'base64').subarray(32).toString('base64')).toBe(publicKey.split(':')[1])
  })

  it('rejects a name Nix could not read back', () => {
    expect(() => generateSigningKey('a:b')).toThrow(InvalidNarInfoError)
    expect(() => generateSigningKey('')).toThrow(InvalidNarInfoError)
  })
})
