import { InvalidNarInfoError, parseNarHash } from '@narrace/core'
import { formatNarInfo, parseNarInfo, type NarInfo } from '@narrace/narinfo'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'

const small = fixtures.narinfoText('small')

function narinfosIn(dir: string): [string, string][] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.narinfo'))
    .map((f) => [f, readFileSync(join(dir, f), 'utf8')])
}

/** Replaces one line of the small fixture's narinfo, or removes it when `value` is undefined. */
function withLine(key: string, value: string | undefined, text = small): string {
  const lines = text.split('\n').filter((line) => !line.startsWith(`${key}:`) || value !== undefined)
  return lines.map((line) => (line.startsWith(`${key}:`) ? `${key}: ${value}` : line)).join('\n')
}

function expectInvalid(text: string, message: RegExp): void {
  let error: unknown
  try {
    parseNarInfo(text)
  } catch (e) {
    error = e
  }
  expect(error).toBeInstanceOf(InvalidNarInfoError)
  expect((error as InvalidNarInfoError).code).toBe('NARRACE_INVALID_NARINFO')
  expect((error as Error).message).toMatch(message)
}

describe('parseNarInfo and formatNarInfo on Nix-written narinfo', () => {
  const nixWritten = narinfosIn(fixtures.cacheDir)

  it('has every fixture path in the cache', () => {
    expect(nixWritten).toHaveLength(fixtures.paths.length)
  })

  it.each(nixWritten)('round-trips %s byte for byte', (_file, text) => {
    const info = parseNarInfo(text)
    expect(formatNarInfo(info)).toBe(text)
    expect(parseNarInfo(formatNarInfo(info))).toStrictEqual(info)
  })

  it.each(narinfosIn(fixtures.cycle.cacheDir))('round-trips the synthetic %s', (_file, text) => {
    expect(formatNarInfo(parseNarInfo(text))).toBe(text)
  })

  it('reads every field as the manifest records it', () => {
    for (const path of fixtures.paths) {
      const info = parseNarInfo(fixtures.narinfoText(path.name))
      expect(info).toMatchObject({
        storePath: path.storePath,
        url: path.url,
        compression: 'xz',
        fileHash: path.fileHash,
        fileSize: path.fileSize,
        narHash: path.narHash,
        narSize: path.narSize,
        references: path.references,
      })
      expect(info.sigs).toHaveLength(1)
      expect(info.sigs[0]!.startsWith('narrace-test-1:')).toBe(true)
      expect(info.ca).toMatch(/^(fixed:r|text):sha256:/)
    }
  })

  it('gives FileHash values that match sha256sum of the .nar.xz', () => {
    for (const path of fixtures.paths) {
      const hash = parseNarHash(parseNarInfo(fixtures.narinfoText(path.name)).fileHash!)
      expect(hash.hex).toBe(path.fileHashHex)
      expect(path.url).toBe(`nar/${hash.nix32}.nar.xz`)
    }
  })

  it('reads the References of the diamond and the 20-path closure', () => {
    const top = parseNarInfo(fixtures.narinfoText('diamond-top'))
    expect(top.references).toEqual(
      [fixtures.path('diamond-left'), fixtures.path('diamond-right')].map((p) => p.storePath.slice('/nix/store/'.length)).sort(),
    )
    expect(parseNarInfo(fixtures.narinfoText('closure-root')).references).toHaveLength(19)
    expect(parseNarInfo(fixtures.narinfoText('small')).references).toEqual([])
  })
})

describe('the synthetic cycle cache', () => {
  it('has the References its manifest describes: A → B → A and a self-reference', () => {
    const byName = new Map(fixtures.cycle.paths.map((p) => [p.name, p]))
    const refsOf = (name: string) => {
      const path = byName.get(name)!
      const text = readFileSync(join(fixtures.cycle.cacheDir, `${path.hashPart}.narinfo`), 'utf8')
      return parseNarInfo(text).references.map((ref) => ref.slice(33))
    }
    expect(refsOf('cycle-root')).toEqual(['cycle-a', 'cycle-self'])
    expect(refsOf('cycle-a')).toEqual(['cycle-b'])
    expect(refsOf('cycle-b')).toEqual(['cycle-a'])
    expect(refsOf('cycle-self')).toEqual(['cycle-self'])
    expect(refsOf('cycle-dangling')).toEqual(['cycle-missing'])
    expect(readdirSync(fixtures.cycle.cacheDir)).not.toContain(`${fixtures.cycle.missing.hashPart}.narinfo`)
  })
})

describe('parseNarInfo fields', () => {
  it('takes a missing Compression to mean bzip2', () => {
    expect(parseNarInfo(withLine('Compression', undefined)).compression).toBe('bzip2')
  })

  it('keeps unknown keys and writes them back after the known ones', () => {
    const text = `${small}System: x86_64-linux\nX-Custom: a: b\n`
    const info = parseNarInfo(text)
    expect(info.extra).toEqual([
      { key: 'System', value: 'x86_64-linux' },
      { key: 'X-Custom', value: 'a: b' },
    ])
    expect(formatNarInfo(info)).toBe(text)
  })

  it('reads a Deriver and several Sig lines, in order', () => {
    const [sig] = parseNarInfo(small).sigs
    const other = `other-1:${Buffer.alloc(64, 7).toString('base64')}`
    const text = withLine('CA', undefined, small).replace(
      /^Sig: .*$/m,
      `Deriver: ${'0'.repeat(32)}-small.drv\nSig: ${sig}\nSig: ${other}`,
    )
    const info = parseNarInfo(text)
    expect(info.deriver).toBe(`${'0'.repeat(32)}-small.drv`)
    expect(info.sigs).toEqual([sig, other])
    expect(formatNarInfo(info)).toBe(text)
    expect(parseNarInfo(withLine('Deriver', 'unknown-deriver', text)).deriver).toBe('unknown-deriver')
  })

  it('accepts a narinfo without a final newline, without FileHash and with an empty References line', () => {
    const text = withLine('FileSize', undefined, withLine('FileHash', undefined)).replace(/\n$/, '')
    const info = parseNarInfo(text)
    expect(info.fileHash).toBeUndefined()
    expect(info.fileSize).toBeUndefined()
    expect(parseNarInfo(withLine('References', '', text)).references).toEqual([])
    expect(parseNarInfo(text.replace('References: ', 'References:')).references).toEqual([])
  })

  it('accepts hex and SRI SHA-256 forms and keeps their text', () => {
    const hash = parseNarHash(parseNarInfo(small).narHash)
    expect(parseNarInfo(withLine('NarHash', `sha256:${hash.hex}`)).narHash).toBe(`sha256:${hash.hex}`)
    expect(parseNarInfo(withLine('NarHash', hash.sri)).narHash).toBe(hash.sri)
  })
})

describe('parseNarInfo on bad input', () => {
  it.each(['StorePath', 'NarHash', 'URL', 'NarSize'])('rejects a narinfo without %s', (key) => {
    expectInvalid(withLine(key, undefined), new RegExp(`no ${key} line`))
  })

  it('names every missing field at once, and rejects an empty document', () => {
    expectInvalid('', /no StorePath, URL, NarHash, NarSize lines/)
  })

  it.each([
    ['FileHash', 'sha256:0y1cxziavkrvh2b75k1c70avdg6pxgk71zppgwkvald4gamrc9b', /line 4 \(FileHash\).*51 characters/],
    ['FileHash', 'sha256:0y1cxziavkrvh2b75k1c70avdg6pxgk71zppgwkvald4gamrc9be', /line 4 \(FileHash\).*invalid character 'e'/],
    ['FileHash', '0y1cxziavkrvh2b75k1c70avdg6pxgk71zppgwkvald4gamrc9bl', /line 4 \(FileHash\).*not a SHA-256/],
    ['FileHash', 'nar/0y1cxziavkrvh2b75k1c70avdg6pxgk71zppgwkvald4gamrc9bl.nar.xz', /line 4 \(FileHash\)/],
    ['NarHash', 'md5:d41d8cd98f00b204e9800998ecf8427e', /line 6 \(NarHash\).*not a SHA-256/],
    ['NarHash', 'sha256:', /line 6 \(NarHash\)/],
    ['NarHash', 'sha256:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz', /line 6 \(NarHash\).*overflow/],
  ])('rejects a bad hash: %s %s', (key, value, message) => {
    expectInvalid(withLine(key, value), message)
  })

  it.each([
    ['FileSize', 'abc'],
    ['FileSize', '-1'],
    ['FileSize', '1.5'],
    ['FileSize', '1e3'],
    ['FileSize', '012'],
    ['FileSize', ''],
    ['NarSize', '-1152'],
    ['NarSize', ' 1152'],
    ['NarSize', '99999999999999999999'],
  ])('rejects a non-numeric, negative or odd size: %s %j', (key, value) => {
    expectInvalid(withLine(key, value), new RegExp(`line \\d \\(${key}\\)`))
  })

  it('rejects a NarSize of 0, as Nix does', () => {
    expectInvalid(withLine('NarSize', '0'), /line 7 \(NarSize\): must be greater than 0/)
  })

  it('rejects CRLF line endings', () => {
    expectInvalid(small.replaceAll('\n', '\r\n'), /line 1 ends in CR/)
  })

  it('rejects a line over 64 KiB and a document over 1 MiB', () => {
    expectInvalid(`${small}X-Long: ${'a'.repeat(64 * 1024)}\n`, /line 11 is over 65536 bytes/)
    const filler = Array.from({ length: 17 }, (_, i) => `X-Fill-${i}: ${'a'.repeat(63 * 1024)}\n`).join('')
    expectInvalid(small + filler, /over 1048576 bytes/)
    // Multi-byte characters count in bytes, not UTF-16 units.
    expectInvalid(`${small}X-Long: ${'é'.repeat(33 * 1024)}\n`, /line 11 is over 65536 bytes/)
  })

  it('rejects bad base64 in a Sig, and a signature of the wrong length', () => {
    const sig = parseNarInfo(small).sigs[0]!
    expectInvalid(withLine('Sig', sig.replace(/.{4}==$/, '!!!!==')), /line 9 \(Sig\).*bad base64/)
    expectInvalid(withLine('Sig', sig.replace(/==$/, '')), /line 9 \(Sig\).*bad base64/)
    expectInvalid(withLine('Sig', `narrace-test-1:${Buffer.alloc(63).toString('base64')}`), /line 9 \(Sig\).*63 bytes/)
    expectInvalid(withLine('Sig', Buffer.alloc(64).toString('base64')), /line 9 \(Sig\).*not 'name:base64'/)
  })

  it('rejects a store path outside /nix/store, and malformed store paths', () => {
    const base = parseNarInfo(small).storePath.slice('/nix/store/'.length)
    expectInvalid(withLine('StorePath', `/gnu/store/${base}`), /line 1 \(StorePath\).*not in \/nix\/store/)
    expectInvalid(withLine('StorePath', `/nix/store/${base}/bin/x`), /line 1 \(StorePath\).*inside a store path/)
    expectInvalid(withLine('StorePath', `/nix/store/${base.replace(/^./, 'e')}`), /line 1 \(StorePath\)/)
    expectInvalid(withLine('StorePath', `/nix/store/${base.slice(0, 32)}-..`), /line 1 \(StorePath\).*invalid store path name/)
    expectInvalid(withLine('References', `/nix/store/${base}`), /line 8 \(References\)/)
    expectInvalid(withLine('References', `${base}  ${base}`), /line 8 \(References\)/)
    expectInvalid(`${small}Deriver: ${base.slice(0, 31)}-x.drv\n`, /line 11 \(Deriver\)/)
  })

  it('rejects repeated single fields, lines that are not Key: value, and a bad CA or URL', () => {
    expectInvalid(`${small}NarSize: 1\n`, /line 11 \(NarSize\): appears twice \(first on line 7\)/)
    expectInvalid(small.replace('\nCompression', '\n\nCompression'), /line 3 is not 'Key: value'/)
    expectInvalid(`${small}garbage\n`, /line 11 is not 'Key: value'/)
    expectInvalid(small.replace('URL: ', 'URL:'), /line 2 is not 'Key: value'/)
    expectInvalid(`<html>\n${small}`, /line 1 is not 'Key: value'/)
    expectInvalid(withLine('CA', 'sha256:abc'), /line 10 \(CA\)/)
    expectInvalid(withLine('URL', 'nar/a b.nar.xz'), /line 2 \(URL\)/)
  })

  it('rejects what is not a string', () => {
    expect(() => parseNarInfo(undefined as unknown as string)).toThrow(InvalidNarInfoError)
    expect(() => parseNarInfo(Buffer.from(small) as unknown as string)).toThrow(InvalidNarInfoError)
  })
})

describe('formatNarInfo', () => {
  const info = parseNarInfo(small)

  it('writes a narinfo built by hand in Nix order', () => {
    const built: NarInfo = {
      sigs: [],
      references: [],
      narSize: info.narSize,
      narHash: info.narHash,
      compression: 'xz',
      url: info.url,
      storePath: info.storePath,
    }
    expect(formatNarInfo(built)).toBe(
      `StorePath: ${info.storePath}\nURL: ${info.url}\nCompression: xz\nNarHash: ${info.narHash}\nNarSize: ${info.narSize}\nReferences: \n`,
    )
  })

  it('refuses values that would add lines or fail to parse', () => {
    expect(() => formatNarInfo({ ...info, url: 'nar/x.nar.xz\nStorePath: /nix/store/evil' })).toThrow(/line break/)
    expect(() => formatNarInfo({ ...info, extra: [{ key: 'Sig', value: 'a:b' }] })).toThrow(InvalidNarInfoError)
    expect(() => formatNarInfo({ ...info, narSize: -1 })).toThrow(InvalidNarInfoError)
    expect(() => formatNarInfo({ ...info, references: ['not-a-path'] })).toThrow(InvalidNarInfoError)
  })

  it('reads a missing Compression, References or Sig list as parseNarInfo would', () => {
    const { compression: _c, references: _r, sigs: _s, ...bare } = info
    const text = formatNarInfo(bare as NarInfo)
    expect(text).toMatch(/^Compression: bzip2$/m)
    expect(text).toMatch(/^References: $/m)
    expect(text).not.toMatch(/^Sig:/m)
    expect(parseNarInfo(text)).toMatchObject({ compression: 'bzip2', references: [], sigs: [] })
  })

  it('throws InvalidNarInfoError, not a TypeError, for what is not a NarInfo', () => {
    for (const bad of [null, undefined, 'StorePath: x', [], { ...info, references: 'a b' }, { ...info, sigs: [1] }]) {
      expect(() => formatNarInfo(bad as unknown as NarInfo)).toThrow(InvalidNarInfoError)
    }
  })
})
