import { describe, expect, it } from 'vitest'
import {
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MEMORY_BUDGET,
  DEFAULT_PRIORITY,
  DEFAULT_SHUTDOWN_GRACE_MS,
  DEFAULT_STORE_MAX_BYTES,
  DEFAULT_VERIFY_FIRST_BELOW,
  parseProxyArgs,
  ProxyUsageError,
} from '../src/args.js'
import { DEFAULT_CLIENT_TIMEOUT_MS } from '../src/send.js'

const key = 'narrace-test-1:YZ/zkSVchtgpVRzyLLqyMFCKorcByGwjUXf5v27jw8s='

describe('parseProxyArgs', () => {
  it('reads every flag', () => {
    const args = parseProxyArgs([
      '--listen', '127.0.0.1:0',
      '--upstream', 'http://127.0.0.1:1/',
      '--upstream', 'https://cache.example.org',
      '--trusted-public-key', key,
      '--index', 'map.sqlite',
      '--ipfs-api', 'http://127.0.0.1:5001',
      '--torrent',
      '--announce', 'http://127.0.0.1:8000/announce',
      '--verify-first-below', '1024',
      '--priority', '10',
      '--netrc-file', '/etc/nix/netrc',
      '--upstream-header', 'https://cache.example.org/=Authorization: Bearer t0k3n',
      '--upstream-header', 'http://127.0.0.1:1=X-Api-Key:k',
      '--max-passthrough-bytes', '1000',
    ])
    expect(args).toEqual({
      help: false,
      listen: { host: '127.0.0.1', port: 0 },
      upstreams: ['http://127.0.0.1:1', 'https://cache.example.org'],
      trustedPublicKeys: [key],
      index: 'map.sqlite',
      ipfsApi: 'http://127.0.0.1:5001',
      torrent: true,
      announce: ['http://127.0.0.1:8000/announce'],
      verifyFirstBelow: 1024,
      priority: 10,
      netrcFile: '/etc/nix/netrc',
      upstreamHeaders: [
        { url: 'https://cache.example.org/', name: 'Authorization', value: 'Bearer t0k3n' },
        { url: 'http://127.0.0.1:1', name: 'X-Api-Key', value: 'k' },
      ],
      maxPassthroughBytes: 1000,
      memoryBudget: DEFAULT_MEMORY_BUDGET,
      maxConnections: DEFAULT_MAX_CONNECTIONS,
      shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS,
      clientTimeoutMs: DEFAULT_CLIENT_TIMEOUT_MS,
      store: undefined,
      storeMaxBytes: DEFAULT_STORE_MAX_BYTES,
      donate: false,
      mappingsFrom: [],
      ipfs: undefined,
      ipfsListen: ['/ip4/127.0.0.1/tcp/0'],
      ipfsBootstrap: [],
      discover: true,
      peers: [],
      lan: false,
    })
  })

  it('reads the store, donation and mappings flags', () => {
    const args = parseProxyArgs([
      '--upstream', 'http://127.0.0.1:1',
      '--store', 'cache',
      '--store-max-bytes', '1000000',
      '--donate',
      '--torrent',
      '--mappings-from', 'http://127.0.0.1:2/',
      '--mappings-from', 'http://127.0.0.1:3',
    ])
    expect(args).toMatchObject({ store: 'cache', storeMaxBytes: 1_000_000, donate: true, mappingsFrom: ['http://127.0.0.1:2', 'http://127.0.0.1:3'] })
    expect(() => parseProxyArgs(['--upstream', 'http://127.0.0.1:1', '--donate'])).toThrow(/--donate needs --store/)
    expect(() => parseProxyArgs(['--upstream', 'http://127.0.0.1:1', '--store-max-bytes', '5'])).toThrow(/needs --store/)
    expect(() => parseProxyArgs(['--upstream', 'http://127.0.0.1:1', '--store', 'x', '--store-max-bytes', '0'])).toThrow(/at least 1/)
    expect(() => parseProxyArgs(['--upstream', 'http://127.0.0.1:1', '--mappings-from', 'ftp://x'])).toThrow(/--mappings-from/)
  })

  it('reads the load flags: --memory-budget, --max-connections, --shutdown-grace', () => {
    const up = ['--upstream', 'http://127.0.0.1:1']
    const args = parseProxyArgs([...up, '--memory-budget', '1048576', '--max-connections', '4', '--shutdown-grace', '2.5'])
    expect(args).toMatchObject({ memoryBudget: 1_048_576, maxConnections: 4, shutdownGraceMs: 2500 })
    const defaults = parseProxyArgs(up)
    expect(defaults).toMatchObject({ memoryBudget: 256 * 1024 * 1024, maxConnections: 25, shutdownGraceMs: 10_000 })
    expect(parseProxyArgs([...up, '--memory-budget', '0']).memoryBudget).toBe(0)
    expect(() => parseProxyArgs([...up, '--max-connections', '0'])).toThrow(/--max-connections: must be at least 1/)
    expect(() => parseProxyArgs([...up, '--memory-budget', '1G'])).toThrow(/--memory-budget/)
    expect(() => parseProxyArgs([...up, '--shutdown-grace', '-1'])).toThrow(/--shutdown-grace/)
  })

  it('reads --client-timeout in seconds, 300 by default, never 0', () => {
    const up = ['--upstream', 'http://127.0.0.1:1']
    expect(parseProxyArgs(up).clientTimeoutMs).toBe(300_000)
    expect(parseProxyArgs([...up, '--client-timeout', '1.5']).clientTimeoutMs).toBe(1500)
    expect(() => parseProxyArgs([...up, '--client-timeout', '0'])).toThrow(/--client-timeout: '0' is not a number of seconds above 0/)
    expect(() => parseProxyArgs([...up, '--client-timeout', 'soon'])).toThrow(/--client-timeout/)
  })

  it('has defaults, and takes the separator pnpm passes through', () => {
    const args = parseProxyArgs(['--', '--upstream', 'http://127.0.0.1:1', '--listen', '[::1]:8080'])
    expect(args.listen).toEqual({ host: '::1', port: 8080 })
    expect(args.verifyFirstBelow).toBe(DEFAULT_VERIFY_FIRST_BELOW)
    expect(args.verifyFirstBelow).toBe(8 * 1024 * 1024)
    expect(args.priority).toBe(DEFAULT_PRIORITY)
    expect(args.torrent).toBe(false)
    expect(args.index).toBeUndefined()
    expect(args.maxPassthroughBytes).toBe(64 * 1024 * 1024)
    expect(args.upstreamHeaders).toEqual([])
  })

  it('needs no upstream for --help', () => {
    expect(parseProxyArgs(['--help']).help).toBe(true)
  })

  it.each([
    [[], /--upstream/],
    [['--upstream', 'http://a', '--bogus'], /bogus/],
    [['--upstream', 'http://a', 'stray'], /stray/],
    [['--upstream', 'ftp://a'], /http/],
    [['--upstream', 'not a url'], /not a URL/],
    [['--upstream'], /upstream/],
    [['--upstream', 'http://a', '--listen', 'localhost'], /HOST:PORT/],
    [['--upstream', 'http://a', '--listen', '127.0.0.1:70000'], /65535/],
    [['--upstream', 'http://a', '--verify-first-below', '-1'], /verify-first-below/],
    [['--upstream', 'http://a', '--verify-first-below', '8MiB'], /verify-first-below/],
    [['--upstream', 'http://a', '--priority', 'x'], /priority/],
    [['--upstream', 'http://a', '--trusted-public-key', 'nokey'], /trusted-public-key/],
    [['--upstream', 'http://a', '--trusted-public-key', 'k:c2hvcnQ='], /trusted-public-key/],
    [['--upstream', 'http://a', '--announce', 'http://t/announce'], /--torrent/],
    [['--upstream', 'http://a', '--index', ''], /index/],
    [['--upstream', 'http://a', '--netrc-file', ''], /netrc-file/],
    [['--upstream', 'http://a', '--max-passthrough-bytes', '1e6'], /max-passthrough-bytes/],
    [['--upstream', 'http://a', '--upstream-header', 'http://b=Authorization: x'], /not an upstream/],
    [['--upstream', 'http://a', '--upstream-header', 'Authorization: x'], /URL=Name: value/],
    [['--upstream', 'http://a', '--upstream-header', 'http://a=Bad Name: x'], /URL=Name: value/],
    [['--upstream', 'http://a', '--upstream-header', 'http://a=X: a\r\nY: b'], /URL=Name: value/],
  ])('refuses %j with a one-line error', (argv, pattern) => {
    let caught: unknown
    try {
      parseProxyArgs(argv as string[])
    } catch (error) {
      caught = error
    }
    expect(caught).toBeInstanceOf(ProxyUsageError)
    expect((caught as Error).message).toMatch(pattern)
    expect((caught as Error).message).not.toContain('\n')
  })
})

describe('parseProxyArgs: the embedded IPFS node, discovery and peers', () => {
  const up = ['--upstream', 'http://127.0.0.1:1']
  it('listens on loopback, bootstraps from nobody and discovers by default', () => {
    const args = parseProxyArgs([...up, '--ipfs', 'embedded'])
    expect(args).toMatchObject({ ipfs: 'embedded', ipfsListen: ['/ip4/127.0.0.1/tcp/0'], ipfsBootstrap: [], discover: true, peers: [] })
  })
  it('takes --ipfs-listen, --ipfs-bootstrap (amino included), --no-discover and --peer', () => {
    const args = parseProxyArgs([
      ...up, '--ipfs', 'embedded', '--ipfs-listen', '/ip4/10.0.0.1/tcp/4001', '--ipfs-bootstrap', 'amino',
      '--ipfs-bootstrap', '/ip4/127.0.0.1/tcp/1/p2p/12D3KooWKnDdG3iXw9eTFijk3EWSunZcFi54Zka4wmtqtt6rPxc8',
      '--no-discover', '--peer', 'http://127.0.0.1:2/', '--peer', 'http://127.0.0.1:3',
    ])
    expect(args.ipfsListen).toEqual(['/ip4/10.0.0.1/tcp/4001'])
    expect(args.ipfsBootstrap[0]).toBe('amino')
    expect(args.discover).toBe(false)
    expect(args.peers).toEqual(['http://127.0.0.1:2', 'http://127.0.0.1:3'])
  })
  it('refuses what makes no sense', () => {
    expect(() => parseProxyArgs([...up, '--ipfs', 'kubo'])).toThrow(ProxyUsageError)
    expect(() => parseProxyArgs([...up, '--ipfs', 'embedded', '--ipfs-api', 'http://127.0.0.1:5001'])).toThrow(/not both/)
    expect(() => parseProxyArgs([...up, '--ipfs-bootstrap', 'amino'])).toThrow(/need --ipfs embedded/)
    expect(() => parseProxyArgs([...up, '--peer', 'ftp://x'])).toThrow(/--peer/)
  })
})

describe('parseProxyArgs: --lan', () => {
  const up = ['--upstream', 'http://127.0.0.1:1']
  it('is off by default, and on with an address the LAN reaches', () => {
    expect(parseProxyArgs(up).lan).toBe(false)
    expect(parseProxyArgs([...up, '--lan', '--listen', '0.0.0.0:8080']).lan).toBe(true)
    expect(parseProxyArgs([...up, '--lan', '--listen', '192.168.1.5:0']).lan).toBe(true)
  })
  it('refuses a loopback --listen, which no peer could reach', () => {
    expect(() => parseProxyArgs([...up, '--lan'])).toThrow(/--lan needs --listen on an address the LAN reaches/)
    expect(() => parseProxyArgs([...up, '--lan', '--listen', '127.0.0.1:8080'])).toThrow(ProxyUsageError)
  })
})
