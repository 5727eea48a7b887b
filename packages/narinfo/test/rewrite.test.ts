import { InvalidNarInfoError, parseNarHash } from '@narrace/core'
import {
  compressionExtension,
  impliedFile,
  narFileName,
  parseNarInfo,
  rewriteNarInfo,
  verifyNarInfo,
} from '@narrace/narinfo'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'

const trusted = [fixtures.publicKey]

describe('compressionExtension and narFileName', () => {
  it('follow Nix: .xz .zst .bz2 .br .lz4 .lzip, nothing for none or a method Nix has no extension for', () => {
    const names = { xz: '.xz', zstd: '.zst', bzip2: '.bz2', br: '.br', lz4: '.lz4', lzip: '.lzip', none: '', gzip: '' }
    for (const [compression, ext] of Object.entries(names)) expect(compressionExtension(compression)).toBe(ext)
    expect(compressionExtension('toString')).toBe('')
    const hash = parseNarHash(fixtures.path('small').fileHash)
    expect(narFileName(hash, 'xz')).toBe(fixtures.path('small').url)
    expect(narFileName(`sha256:${hash.hex}`, 'zstd')).toBe(`nar/${hash.nix32}.nar.zst`)
  })

  it('name every Nix-written file as Nix named it, in every compression', () => {
    for (const compression of ['zstd', 'bzip2', 'none'] as const) {
      const dir = fixtures.compressedCacheDir(compression)
      const info = parseNarInfo(readFileSync(join(dir, `${fixtures.path('200k').hashPart}.narinfo`), 'utf8'))
      expect(narFileName(info.fileHash!, info.compression)).toBe(info.url)
    }
  })
})

describe('rewriteNarInfo', () => {
  it('changes only the URL line of a Nix-written narinfo, and the signature still verifies', () => {
    for (const { name } of fixtures.paths) {
      const text = fixtures.narinfoText(name)
      const out = rewriteNarInfo(text, 'nar/elsewhere.nar.xz')
      const before = text.split('\n')
      const after = out.text.split('\n')
      expect(after).toHaveLength(before.length)
      const changed = after.flatMap((line, i) => (line === before[i] ? [] : [[before[i], line]]))
      expect(changed).toEqual([[`URL: ${fixtures.path(name).url}`, 'URL: nar/elsewhere.nar.xz']])
      expect(verifyNarInfo(parseNarInfo(out.text), trusted).valid).toBe(true)
    }
  })

  it('names the file by its FileHash by default: Nix-written narinfo come back unchanged', () => {
    for (const { name } of fixtures.paths) expect(rewriteNarInfo(fixtures.narinfoText(name)).text).toBe(fixtures.narinfoText(name))
  })

  it('adds FileHash and FileSize after Compression for an uncompressed file without them (nix-serve)', () => {
    const none = readFileSync(join(fixtures.compressedCacheDir('none'), `${fixtures.path('small').hashPart}.narinfo`), 'utf8')
    const text = none.replace(/^File(Hash|Size): .*\n/gm, '').replace(/^URL: .*$/m, 'URL: nar/x-y.nar')
    const info = parseNarInfo(text)
    const out = rewriteNarInfo(text)
    const lines = out.text.split('\n')
    const at = lines.indexOf('Compression: none')
    expect(lines.slice(at + 1, at + 3)).toEqual([`FileHash: ${parseNarHash(info.narHash).toString()}`, `FileSize: ${info.narSize}`])
    expect(out.fileSize).toBe(info.narSize)
    // harmonia keeps its FileSize: only the FileHash is added.
    const harmonia = rewriteNarInfo(none.replace(/^FileHash: .*\n/m, '')).text
    expect(harmonia.match(/^FileSize: /gm)).toHaveLength(1)
    expect(harmonia.match(/^FileHash: /gm)).toHaveLength(1)
  })

  it('keeps a narinfo with no final newline and unknown lines as they were', () => {
    const text = `${fixtures.narinfoText('small').trimEnd()}\nSystem: x86_64-linux`
    const out = rewriteNarInfo(text, 'nar/x.nar.xz').text
    expect(out.endsWith('\nSystem: x86_64-linux')).toBe(true)
    expect(out.replace('URL: nar/x.nar.xz', `URL: ${fixtures.path('small').url}`)).toBe(text)
  })

  it('refuses a compressed file without a FileHash unless given a URL, and a URL with white space', () => {
    const text = fixtures.narinfoText('small').replace(/^FileHash: .*\n/m, '')
    expect(() => rewriteNarInfo(text)).toThrow(InvalidNarInfoError)
    expect(impliedFile(parseNarInfo(text))).toBeUndefined()
    const out = rewriteNarInfo(text, `nar/${fixtures.path('small').hashPart}.nar.xz`)
    expect(out.fileHash).toBeUndefined()
    expect(out.text).not.toMatch(/^FileHash/m)
    expect(() => rewriteNarInfo(fixtures.narinfoText('small'), 'nar/a b')).toThrow(InvalidNarInfoError)
    expect(() => rewriteNarInfo(fixtures.narinfoText('small'), 'nar/a\nSig: x')).toThrow(InvalidNarInfoError)
    expect(() => rewriteNarInfo('StorePath: nonsense\n')).toThrow(InvalidNarInfoError)
  })
})
