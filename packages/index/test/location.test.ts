import { createHash } from 'node:crypto'
import { InvalidNarHashError, parseNarHash } from '@narrace/core'
import { base32 } from 'multiformats/bases/base32'
import { CID } from 'multiformats/cid'
import { create as createDigest } from 'multiformats/hashes/digest'
import { describe, expect, it } from 'vitest'
import { InvalidNarLocationError, normalizeLocation } from '../src/index.js'

const bytes = createHash('sha256').update('a nar').digest()
const hash = parseNarHash(bytes.toString('hex'))
const cid = CID.create(1, 0x55, createDigest(0x12, bytes))
const btih = 'c9e15763f722f23e98a29decdfae341b98d53056'

describe('normalizeLocation', () => {
  it('stores the FileHash as sha256:<nix32>, whatever form it came in', () => {
    for (const form of [hash.hex, `sha256:${hash.hex}`, hash.sri, hash.nix32, `nar/${hash.nix32}.nar.xz`]) {
      expect(normalizeLocation({ fileHash: form })).toEqual({ fileHash: hash.toString() })
    }
  })

  it('writes a CIDv1 in base32 and keeps a CIDv0', () => {
    expect(normalizeLocation({ fileHash: hash.hex, cid: cid.toString(base32) }).cid).toBe(cid.toString())
    const v0 = 'QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG'
    expect(normalizeLocation({ fileHash: hash.hex, cid: v0 }).cid).toBe(v0)
  })

  it('takes the infohash from a magnet, in hex or base32', () => {
    const hex = normalizeLocation({ fileHash: hash.hex, magnet: `magnet:?xt=urn:btih:${btih.toUpperCase()}&dn=x` })
    expect(hex.btih).toBe(btih)
    const b32 = base32.baseEncode(Buffer.from(btih, 'hex')).toUpperCase()
    const fromBase32 = normalizeLocation({ fileHash: hash.hex, btih, magnet: `magnet:?xt=urn:btih:${b32}` })
    expect(fromBase32).toMatchObject({ btih, magnet: `magnet:?xt=urn:btih:${b32}` })
  })

  it('treats null as absent, drops unknown keys and normalises the date', () => {
    const location = normalizeLocation({ fileHash: hash.hex, cid: null, extra: 1, updatedAt: '2025-01-02T03:04:05Z' })
    expect(location).toEqual({ fileHash: hash.toString(), updatedAt: '2025-01-02T03:04:05.000Z' })
  })

  it('rejects a bad hash with InvalidNarHashError', () => {
    expect(() => normalizeLocation({ fileHash: 'sha256:nope' })).toThrow(InvalidNarHashError)
    expect(() => normalizeLocation({ cid: cid.toString() })).toThrow(InvalidNarLocationError)
  })

  it.each([
    ['a non-object', 'text'],
    ['an array', [hash.hex]],
    ['a bad CID', { cid: 'bafy-not-a-cid' }],
    ['a numeric CID', { cid: 5 }],
    ['a short btih', { btih: btih.slice(1) }],
    ['a base32 btih outside a magnet', { btih: base32.baseEncode(Buffer.from(btih, 'hex')) }],
    ['a negative size', { size: -1 }],
    ['a fractional size', { size: 1.5 }],
    ['a string size', { size: '10' }],
    ['a magnet for another torrent', { btih, magnet: `magnet:?xt=urn:btih:${'0'.repeat(40)}` }],
    ['a magnet without btih', { magnet: 'magnet:?dn=x' }],
    ['a non-magnet URL', { magnet: `https://example.invalid/?xt=urn:btih:${btih}` }],
    ['a bad store path', { storePath: '/nix/store/not-a-hash' }],
    ['a url with spaces', { url: 'nar/a b.nar' }],
    ['a bad date', { updatedAt: 'yesterday' }],
  ])('rejects %s', (_, fields) => {
    const input = typeof fields === 'object' && !Array.isArray(fields) ? { fileHash: hash.hex, ...fields } : fields
    expect(() => normalizeLocation(input)).toThrow(InvalidNarLocationError)
  })
})
