import { describe, expect, it } from 'vitest'
import { InvalidNarHashError, NarraceError, decodeNix32, encodeNix32, parseNarHash } from '../src/index.js'

// hex, nix32 and SRI of the same digests, as printed by `nix hash to-base32` / `to-sri`.
const VECTORS = [
  {
    hex: '8ae07f3ef389e3d88f93de106ce9c6a705f8667b8a2b6c588e20f549ff37ed9d',
    nix32: '17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a',
  },
  {
    hex: 'ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb',
    nix32: '1fs8xspqaxw0p5r4wz0lz3pqd9sdvhirmcriqbxcmg8vr89835ya',
    sri: 'sha256-ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs=',
  },
  {
    hex: '3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d',
    nix32: '1780kkasxvkkrd52rm4801xbv2rln7hn8ragi4rlln9r00bfh8ry',
    sri: 'sha256-PiPoFgA5WUoziU9lZOGxNIu9egCI1CxKy3PurtWcAJ0=',
  },
  {
    hex: '18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4',
    nix32: '1r7qyhs0kbqghcln8hv5ypixjs8i4qszk4qfa468j5ph8drkxb0q',
    sri: 'sha256-GKw+c0PwFokMUQ6T+TUmEWnZ4/VlQ2Qpgw+vCTT0+OQ=',
  },
  { hex: '00'.repeat(32), nix32: '0'.repeat(52) },
  { hex: 'ff'.repeat(32), nix32: '1' + 'z'.repeat(51) },
]

describe('nix32', () => {
  it.each(VECTORS)('encodes and decodes $nix32', ({ hex, nix32 }) => {
    expect(encodeNix32(Buffer.from(hex, 'hex'))).toBe(nix32)
    expect(Buffer.from(decodeNix32(nix32)).toString('hex')).toBe(hex)
  })
})

describe('parseNarHash', () => {
  const [first] = VECTORS
  const { hex, nix32 } = first!
  const sri = `sha256-${Buffer.from(hex, 'hex').toString('base64')}`
  const accepted = [
    `sha256:${nix32}`,
    nix32,
    `sha256:${hex}`,
    hex,
    hex.toUpperCase(),
    sri,
    `sha256:${Buffer.from(hex, 'hex').toString('base64')}`,
    `nar/${nix32}.nar.xz`,
    `/nar/${nix32}.nar`,
    `https://cache.nixos.org/nar/${nix32}.nar.xz`,
    `http://127.0.0.1:8080/prefix/nar/${nix32}.nar.zst`,
    `nar/${nix32}.nar.bz2`,
    `nar/${nix32}.nar.lz4`,
    `nar/${nix32}.nar.br`,
    `  sha256:${nix32}\n`,
  ]
  it.each(accepted)('accepts %s', (input) => {
    const hash = parseNarHash(input)
    expect(hash.hex).toBe(hex)
    expect(hash.nix32).toBe(nix32)
    expect(hash.sri).toBe(sri)
    expect(hash.bytes).toEqual(new Uint8Array(Buffer.from(hex, 'hex')))
    expect(hash.toString()).toBe(`sha256:${nix32}`)
    expect(String(hash)).toBe(`sha256:${nix32}`)
    expect(JSON.stringify({ hash })).toBe(`{"hash":"sha256:${nix32}"}`)
  })

  it.each(VECTORS.filter((v) => v.sri))('reads the SRI form $sri', ({ hex, sri }) => {
    expect(parseNarHash(sri!).hex).toBe(hex)
  })

  it('returns the same value for every form', () => {
    expect(parseNarHash(hex)).toEqual(parseNarHash(`sha256:${nix32}`))
    expect(parseNarHash(hex).equals(parseNarHash(sri))).toBe(true)
  })

  const rejected: [string, RegExp][] = [
    ['', /empty/],
    ['   ', /empty/],
    [nix32.slice(1), /51 characters/],
    [`sha256:${nix32}0`, /53 characters/],
    [hex.slice(2), /62 characters/],
    [`sha256:${hex}00`, /66 characters/],
    [`${nix32.slice(0, 51)}e`, /invalid character 'e'/],
    [`${nix32.slice(0, 51)}u`, /invalid character 'u'/],
    [`${nix32.slice(0, 51)}O`, /invalid character 'O'/],
    [`sha256:${hex.slice(0, 63)}g`, /invalid character/],
    [`2${nix32.slice(1)}`, /overflow bits/],
    [`z${nix32.slice(1)}`, /overflow bits/],
    ['md5:d41d8cd98f00b204e9800998ecf8427e', /md5 hash; narrace fetches by SHA-256 only/],
    ['sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709', /sha1 hash/],
    [`sha512:${'ab'.repeat(64)}`, /sha512 hash/],
    [`sha512-${Buffer.alloc(64).toString('base64')}`, /sha512 hash/],
    [`blake3:${hex}`, /unknown hash algorithm 'blake3'/],
    ['sha256-abc', /not a base64 SHA-256/],
    ['sha256:', /no digest/],
    [`nar/${nix32}.nar.gzz`, /neither a hash nor a NAR URL/],
    [`nar/${hex}.nar.xz`, /not a 52-character nix32 FileHash/],
    [`nar/${nix32.slice(0, 51)}e.nar.xz`, /invalid character 'e'/],
    [`/nix/store/${nix32.slice(0, 32)}-hello`, /neither a hash nor a NAR URL/],
    [`nar/${nix32}.narinfo`, /neither a hash nor a NAR URL/],
    [`${nix32}.nar.xz`, /59 characters/],
    [`SHA256:${nix32}`, /59 characters/],
    [`sha256:${nix32.toUpperCase()}`, /invalid character 'A'/],
    [`sha256:${nix32} x`, /61 characters/],
    [`sha256:sha256:${nix32}`, /66 characters/],
    [sri.slice('sha256-'.length), /neither a hash nor a NAR URL/],
    [sri.slice(0, -1), /not a base64 SHA-256/],
    [`sha1-${Buffer.alloc(20).toString('base64')}`, /sha1 hash/],
    [`md5-${Buffer.alloc(16).toString('base64')}`, /md5 hash/],
    ['x'.repeat(52), /overflow bits/],
  ]
  it.each(rejected)('rejects %j', (input, message) => {
    let error: unknown
    try {
      parseNarHash(input)
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidNarHashError)
    expect(error).toBeInstanceOf(NarraceError)
    expect(error).toMatchObject({ name: 'InvalidNarHashError', code: 'NARRACE_INVALID_HASH' })
    expect((error as Error).message).toMatch(message)
  })

  it('keeps its own copy of the bytes', () => {
    const bytes = new Uint8Array(Buffer.from(hex, 'hex'))
    const hash = parseNarHash(hex)
    hash.bytes.fill(0)
    expect(parseNarHash(hex).bytes).toEqual(bytes)
    expect(Object.keys(parseNarHash(hex)).sort()).toEqual(['bytes', 'hex', 'nix32', 'sri'])
  })

  it('takes a NarHash made by another copy of the package', () => {
    const foreign = { ...parseNarHash(hex) }
    expect(parseNarHash(foreign as never).nix32).toBe(nix32)
    expect(() => parseNarHash({ bytes: new Uint8Array(20) } as never)).toThrow(InvalidNarHashError)
  })

  it('rejects values that are not strings with a typed error', () => {
    expect(() => parseNarHash(undefined as unknown as string)).toThrow(InvalidNarHashError)
    expect(() => parseNarHash(42 as unknown as string)).toThrow(InvalidNarHashError)
  })
})
