import { createHash } from 'node:crypto'
import { parseNarHash } from '@narrace/core'
import { describe, expect, it } from 'vitest'
import { narCid } from '../src/index.js'

describe('narCid', () => {
  it('is the CIDv1 raw sha2-256 CID of the file, from the FileHash alone', () => {
    // The well-known CID of the empty file, as `ipfs add --cid-version=1 --raw-leaves` gives it.
    const empty = createHash('sha256').digest('hex')
    expect(narCid(empty).toString()).toBe('bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku')
  })

  it('takes every hash form and a NarHash', () => {
    const hash = parseNarHash(createHash('sha256').update('nar').digest('hex'))
    const cid = narCid(hash)
    expect(cid.version).toBe(1)
    expect(cid.code).toBe(0x55)
    expect(cid.multihash.code).toBe(0x12)
    expect(Buffer.from(cid.multihash.digest).equals(Buffer.from(hash.bytes))).toBe(true)
    for (const form of [hash.toString(), hash.hex, hash.sri, `nar/${hash.nix32}.nar.xz`]) {
      expect(narCid(form).equals(cid)).toBe(true)
    }
  })
})
