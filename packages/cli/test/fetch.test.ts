import { describe, expect, it } from 'vitest'
import { UsageError } from '../src/args.js'
import { parseFetchArgs, parseFetchTarget } from '../src/fetch.js'

const NIX32 = '0y1cxziavkrvh2b75k1c70avdg6pxgk71zppgwkvald4gamrc9bl'

describe('parseFetchTarget', () => {
  it('takes a hash in any form Nix writes it', () => {
    const target = parseFetchTarget(`sha256:${NIX32}`)
    expect(target.hash.nix32).toBe(NIX32)
    expect(target.cache).toBeUndefined()
    expect(parseFetchTarget(target.hash.hex).hash.nix32).toBe(NIX32)
  })

  it('splits a NAR URL into its cache and the relative narinfo URL', () => {
    const target = parseFetchTarget(`http://127.0.0.1:8080/cache/nar/${NIX32}.nar.xz`)
    expect(target.hash.nix32).toBe(NIX32)
    expect(target.cache).toBe('http://127.0.0.1:8080/cache')
    expect(target.url).toBe(`nar/${NIX32}.nar.xz`)
    expect(parseFetchTarget(`https://cache.example/nar/${NIX32}.nar`).cache).toBe('https://cache.example')
  })
})

describe('parseFetchArgs', () => {
  it('reads every flag', () => {
    const options = parseFetchArgs([
      NIX32,
      '-o',
      'out.nar.xz',
      '--http',
      'http://a/',
      '--http',
      'http://b',
      '--ipfs-api',
      'http://127.0.0.1:5001',
      '--index',
      'i.sqlite',
      '--torrent',
    ])
    expect(options).toMatchObject({
      target: NIX32,
      output: 'out.nar.xz',
      http: ['http://a', 'http://b'],
      ipfsApi: 'http://127.0.0.1:5001',
      indexPath: 'i.sqlite',
      torrent: true,
    })
  })

  it.each([
    [[NIX32], /-o FILE/],
    [['-o', 'x'], /exactly one/],
    [['nothash', '-o', 'x'], /nothash/],
    [[NIX32, '-o', 'x', '--bogus'], /bogus/],
    [[NIX32, '-o', 'x', '--http', 'ftp://a'], /--http/],
  ])('refuses %j with a UsageError', (args, message) => {
    expect(() => parseFetchArgs(args)).toThrow(UsageError)
    expect(() => parseFetchArgs(args)).toThrow(message)
  })
})
