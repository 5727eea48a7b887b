/** The built proxy command, `node examples/proxy/dist/main.js`, as a user runs it. */
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { openIndex } from '@narrace/index'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { get, raw } from '../examples/proxy/test/support/client.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import { built, run, startProxy } from './support/proxy-process.js'

const root = fileURLToPath(new URL('..', import.meta.url))
if (!built) console.warn('test/proxy-cli.test.ts: skipped, examples/proxy is not built (run `pnpm build`)')
const pnpmAvailable = spawnSync('pnpm', ['--version'], { stdio: 'ignore' }).status === 0

/** Waits, bounded, for `check` to hold. */
async function until(check: () => boolean, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !check(); ) {
    if (Date.now() > end) throw new Error('condition not reached in time')
    await sleep(10)
  }
}

describe.skipIf(!built)('the proxy command', () => {
  let upstream: CacheServer
  /** The upstream as the proxy names it in logs and metrics: the URL given, without a trailing slash. */
  const cacheName = (): string => upstream.url.replace(/\/$/, '')
  beforeAll(async () => {
    upstream = await startCacheServer({ root: fixtures.cacheDir })
  })
  afterAll(async () => {
    await upstream?.close()
  })

  it('keeps what it learned in the default index of `narrace index` when no --index is given', async () => {
    const small = fixtures.path('small')
    const dir = await mkdtemp(join(tmpdir(), 'narrace-proxy-cli-'))
    const env = { ...process.env, XDG_DATA_HOME: dir, NARRACE_INDEX: '' }
    const proxy = await startProxy(['--upstream', upstream.url], env)
    try {
      expect((await get(`${proxy.url}/${small.hashPart}.narinfo`)).status).toBe(200)
    } finally {
      expect(await proxy.stop()).toBe(0)
    }
    const index = openIndex(join(dir, 'narrace', 'index.sqlite'))
    try {
      expect(index.upstreamUrls(small.fileHash)).toEqual(new Map([[cacheName(), small.url]]))
    } finally {
      index.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('lists every flag with --help', () => {
    const { status, stdout } = run(['--help'])
    expect(status).toBe(0)
    for (const flag of ['--listen', '--upstream', '--trusted-public-key', '--index', '--ipfs-api', '--torrent', '--announce', '--verify-first-below', '--priority', '--netrc-file', '--upstream-header', '--max-passthrough-bytes', '--help']) {
      expect(stdout).toContain(flag)
    }
  })

  it.each([
    [['--upstream', 'http://127.0.0.1:1', '--bogus']],
    [[]],
    [['--upstream', 'http://127.0.0.1:1', '--verify-first-below', 'lots']],
    [['--upstream', 'http://127.0.0.1:1', '--listen', 'nowhere']],
  ])('stops on a wrong command line %j with one line and exit code 2', (args) => {
    const { status, stdout, stderr } = run(args)
    expect(status).toBe(2)
    expect(stdout).toBe('')
    expect(stderr.trim().split('\n')).toHaveLength(1)
  })

  it('serves on the port it picked, fetches a NAR, and exits cleanly on SIGTERM', async () => {
    const small = fixtures.path('small')
    const dir = await mkdtemp(join(tmpdir(), 'narrace-proxy-cli-'))
    const indexPath = join(dir, 'index.sqlite')
    const proxy = await startProxy(['--upstream', upstream.url, '--trusted-public-key', fixtures.publicKey, '--priority', '20', '--index', indexPath])
    try {
      expect((await get(`${proxy.url}/nix-cache-info`)).body.toString()).toContain('Priority: 20')
      expect((await get(`${proxy.url}/${small.hashPart}.narinfo`)).body.toString()).toBe(fixtures.narinfoText('small'))
      const nar = await get(`${proxy.url}/${small.url}`)
      expect(nar.status).toBe(200)
      expect(nar.headers['content-length']).toBe(String(small.fileSize))
    } finally {
      expect(await proxy.stop()).toBe(0)
    }
    // The narinfo was remembered in the index file, for the next run and for other tools.
    const index = openIndex(indexPath)
    try {
      expect(index.get(small.fileHash)).toMatchObject({ size: small.fileSize, storePath: small.storePath })
      expect(index.upstreamUrls(small.fileHash)).toEqual(new Map([[cacheName(), small.url]]))
    } finally {
      index.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('writes JSON lines only to stdout: its address first, one line per NAR, and one when it stops', async () => {
    const big = fixtures.path('5m')
    const proxy = await startProxy(['--upstream', upstream.url])
    await get(`${proxy.url}/${big.hashPart}.narinfo`)
    expect((await get(`${proxy.url}/${big.url}`)).status).toBe(200)
    expect(await proxy.stop('SIGINT')).toBe(0)
    const lines = proxy.stdout.map((line) => JSON.parse(line) as Record<string, unknown>)
    expect(lines[0]).toMatchObject({ url: proxy.url, msg: expect.stringContaining(`listening on ${proxy.url} `) })
    const nars = lines.filter((line) => line.msg === 'nar')
    expect(nars).toHaveLength(1)
    expect(nars[0]).toMatchObject({
      nar: big.url.slice('nar/'.length, -'.nar.xz'.length),
      storePath: big.storePath,
      outcome: 'ok',
      winner: cacheName(),
      size: big.fileSize,
      tried: [cacheName()],
    })
    expect(typeof nars[0]!.ms).toBe('number')
    expect(lines.at(-1)).toMatchObject({ msg: 'narrace proxy stopped', signal: 'SIGINT' })
  })

  it('answers HEAD, and a NAR asked for before its narinfo', async () => {
    const small = fixtures.path('small')
    const proxy = await startProxy(['--upstream', upstream.url])
    try {
      const nar = await get(`${proxy.url}/${small.url}`)
      expect(nar.status).toBe(200)
      expect(createHash('sha256').update(nar.body).digest('hex')).toBe(small.fileHashHex)
      const headNar = await get(`${proxy.url}/${small.url}`, { method: 'HEAD' })
      expect(headNar.status).toBe(200)
      expect(headNar.headers['content-length']).toBe(String(small.fileSize))
      expect(headNar.body).toHaveLength(0)
      const headInfo = await get(`${proxy.url}/${small.hashPart}.narinfo`, { method: 'HEAD' })
      expect(headInfo.status).toBe(200)
      expect(headInfo.headers['content-length']).toBe(String(Buffer.byteLength(fixtures.narinfoText('small'))))
      expect(headInfo.body).toHaveLength(0)
      expect((await get(`${proxy.url}/${'0'.repeat(32)}.narinfo`, { method: 'HEAD' })).status).toBe(404)
      expect((await get(`${proxy.url}/healthz`, { method: 'HEAD' })).status).toBe(200)
    } finally {
      expect(await proxy.stop()).toBe(0)
    }
  })

  it('counts wins, failures, bytes, first-byte latency and hash mismatches on /metrics', async () => {
    const small = fixtures.path('small')
    const big = fixtures.path('5m')
    const proxy = await startProxy(['--upstream', upstream.url])
    try {
      upstream.setFaults({ flipByteAt: 10 }, small.url)
      expect((await get(`${proxy.url}/${small.url}`)).status).toBe(502)
      expect((await get(`${proxy.url}/${big.url}`)).status).toBe(200)
      const answer = await get(`${proxy.url}/metrics`)
      expect(answer.status).toBe(200)
      expect(answer.headers['content-type']).toMatch(/^text\/plain/)
      const text = answer.body.toString()
      const backend = `backend="${cacheName()}"`
      expect(text).toContain(`narrace_backend_wins_total{${backend}} 2`)
      expect(text).toContain(`narrace_backend_failures_total{${backend},code="NARRACE_HASH_MISMATCH"} 1`)
      expect(text).toContain(`narrace_backend_bytes_total{${backend}} ${big.fileSize}`)
      expect(text).toContain(`narrace_backend_first_byte_seconds_count{${backend}} 2`)
      expect(text).toContain('# TYPE narrace_backend_first_byte_seconds histogram')
      expect(text).toContain(`narrace_hash_mismatches_total{${backend}} 1`)
      expect(text).toContain('narrace_nar_requests_total{outcome="ok"} 1')
      expect(text).toContain('narrace_nar_requests_total{outcome="hash_mismatch"} 1')
    } finally {
      upstream.clearFaults()
      expect(await proxy.stop()).toBe(0)
    }
  })

  it('refuses bad requests at once, none of them reaching the upstream', async () => {
    const small = fixtures.path('small')
    const proxy = await startProxy(['--upstream', upstream.url])
    const port = Number(new URL(proxy.url).port)
    upstream.requests.length = 0
    try {
      for (const [target, status] of [
        ['/nar/../x', 400],
        ['/nar/%2e%2e/x', 400],
        ['/nar/..%2F..%2Fetc%2Fpasswd', 400],
        [`/${small.hashPart.slice(1)}.narinfo`, 400],
        [`/${small.hashPart.toUpperCase()}.narinfo`, 400],
        [`/${'e'.repeat(32)}.narinfo`, 400],
        [`/nar/${'u'.repeat(52)}.nar.xz`, 400],
        [`/${'a'.repeat(4096)}.narinfo`, 400],
        ['/robots.txt', 404],
      ] as const) {
        expect(await raw(port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`), target).toMatch(
          new RegExp(`^HTTP/1\\.1 ${status} `),
        )
      }
      expect(await raw(port, `GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`)).toMatch(/^HTTP\/1\.1 400 /)
      for (const method of ['POST', 'PUT', 'DELETE']) {
        const answer = await get(`${proxy.url}/${small.url}`, { method })
        expect(answer.status).toBe(405)
        expect(answer.headers.allow).toBe('GET, HEAD')
      }
      expect(upstream.requests).toHaveLength(0)
    } finally {
      expect(await proxy.stop()).toBe(0)
    }
  })

  it('stops on SIGINT with a download in flight: exit code 0, and the client sees a broken transfer', async () => {
    const big = fixtures.path('5m')
    // Slow enough that the download is still running when the signal comes.
    upstream.setFaults({ bytesPerSecond: 500_000 }, big.url)
    upstream.requests.length = 0
    const proxy = await startProxy(['--upstream', upstream.url, '--verify-first-below', '0'])
    try {
      const pending = get(`${proxy.url}/${big.url}`).catch((error: unknown) => error as Error)
      await until(() => upstream.requests.some((r) => r.path === `/${big.url}`))
      expect(await proxy.stop('SIGINT')).toBe(0)
      const answer = await pending
      if (!(answer instanceof Error)) {
        expect(answer.error).toBeDefined()
        expect(answer.body.length).toBeLessThan(big.fileSize)
      }
      await until(() => upstream.requests.find((r) => r.path === `/${big.url}`)?.completed === false)
    } finally {
      upstream.clearFaults()
      await proxy.stop()
    }
  })

  it.skipIf(!pnpmAvailable)('runs as `pnpm proxy -- <flags>` from the root', () => {
    const help = spawnSync('pnpm', ['--silent', 'proxy', '--', '--help'], { cwd: root, encoding: 'utf8', timeout: 30_000 })
    expect(help.status).toBe(0)
    expect(help.stdout).toContain('--verify-first-below')
    const wrong = spawnSync('pnpm', ['--silent', 'proxy', '--', '--upstream', 'http://127.0.0.1:1', '--bogus'], { cwd: root, encoding: 'utf8', timeout: 30_000 })
    expect(wrong.status).toBe(2)
    expect(wrong.stderr).toContain("narrace-proxy: Unknown option '--bogus'")
  })

  it('starts with the IPFS and torrent backends enabled', async () => {
    const proxy = await startProxy([
      '--upstream', upstream.url,
      '--ipfs-api', 'http://127.0.0.1:5001',
      '--torrent', '--announce', 'http://127.0.0.1:1/announce',
      '--verify-first-below', '0',
    ])
    try {
      expect((await get(`${proxy.url}/healthz`)).status).toBe(200)
    } finally {
      expect(await proxy.stop()).toBe(0)
    }
  })
})
