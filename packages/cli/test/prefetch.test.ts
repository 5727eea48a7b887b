import { describe, expect, it } from 'vitest'
import { UsageError } from '../src/args.js'
import { formatSummary, parsePrefetchArgs, type PrefetchSummary } from '../src/prefetch.js'

const PATH = '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt'

describe('parsePrefetchArgs', () => {
  it('reads every flag, repeated ones as lists', () => {
    const options = parsePrefetchArgs([
      PATH,
      '--cache',
      'http://a/',
      '--cache',
      'https://b',
      '-o',
      'dir',
      '--trusted-public-key',
      'k:1',
      '--ipfs-api',
      'http://127.0.0.1:5001',
      '--torrent',
      '--index',
      'i.sqlite',
      '--publish',
      '--no-seed',
      '--jobs',
      '8',
      '--list',
      'subscription.txt',
    ])
    expect(options).toEqual({
      paths: [PATH],
      caches: ['http://a', 'https://b'],
      output: 'dir',
      trustedKeys: ['k:1'],
      ipfsApi: 'http://127.0.0.1:5001',
      torrent: true,
      announce: [],
      indexPath: 'i.sqlite',
      publish: true,
      seed: false,
      jobs: 8,
      list: 'subscription.txt',
    })
  })

  it.each([
    [[PATH, '--cache', 'http://a'], /-o DIR/],
    [[PATH, '-o', 'd'], /--cache URL/],
    [[PATH, '-o', 'd', '--cache', 'http://a', '--jobs', '0'], /--jobs/],
    [[PATH, '-o', 'd', '--cache', 'file:///x'], /--cache/],
  ])('refuses %j', (args, message) => {
    expect(() => parsePrefetchArgs(args)).toThrow(UsageError)
    expect(() => parsePrefetchArgs(args)).toThrow(message)
  })
})

describe('formatSummary', () => {
  it('prints a row per backend with NARs won and share of bytes, then the totals and every problem', () => {
    const summary: PrefetchSummary = {
      paths: [
        { storePath: '/nix/store/a', status: 'fetched', size: 3072, winner: 'http://c' },
        { storePath: '/nix/store/b', status: 'fetched', size: 1024, winner: 'ipfs' },
        { storePath: '/nix/store/c', status: 'present', size: 10 },
        { storePath: '/nix/store/d', status: 'failed', size: 5, error: 'boom' },
      ],
      missing: ['/nix/store/e'],
      failed: [{ storePath: '/nix/store/d', status: 'failed', size: 5, error: 'boom' }],
      bytes: 4096,
      ms: 1000,
      byBackend: new Map([
        ['ipfs', 1024],
        ['http://c', 3072],
      ]),
      wins: new Map([
        ['ipfs', 1],
        ['http://c', 1],
      ]),
    }
    expect(formatSummary(summary)).toBe(
      [
        'backend   NARs won     bytes  share',
        '--------  --------  --------  -----',
        'http://c         1  3.00 KiB    75%',
        'ipfs             1  1.00 KiB    25%',
        '5 paths: 2 fetched, 1 already present, 1 missing, 1 failed; 4.00 KiB in 1.00 s, 4.00 KiB/s',
        'missing /nix/store/e',
        'failed  /nix/store/d: boom',
        '',
      ].join('\n'),
    )
  })
})
