/**
 * Every cache shape real servers write, through the proxy, with real Nix: `nix copy --from` the proxy
 * with `require-sigs`, then `nix-store --verify-path`; alone, mixed, and across a restart of the proxy.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { impliedFile, parseNarInfo } from '@narrace/narinfo'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createProxy, type Proxy, type ProxyOptions } from '../examples/proxy/src/index.js'
import { get } from '../examples/proxy/test/support/client.js'
import { fixtures } from './fixtures/index.js'
import { CACHE_SHAPES, SHAPED_PATHS, type CacheShape } from './support/cache-shapes.js'
import { nixAvailable, nixSandbox, type NixRun, type NixSandbox } from './support/nix.js'
import { built, startProxy } from './support/proxy-process.js'
import { startShapeServer, type ShapeServer } from './support/shape-server.js'

if (!nixAvailable) console.warn('test/nix-cache-shapes.test.ts: skipped, no `nix` on PATH (install Debian\'s nix-bin to run it)')

const key = fixtures.publicKey
/** What Nix is asked for: the diamond brings its three references along. */
const roots = ['small', '200k', 'diamond-top'].map((name) => fixtures.path(name).storePath)
const everyPath = SHAPED_PATHS.map((name) => fixtures.path(name).storePath)
/** The URL the proxy serves: the FileHash, and the extension of a compression. */
const SERVED_URL = /^URL: nar\/[0-9a-df-np-sv-z]{52}\.nar(\.xz|\.zst|\.bz2)?$/m

function ok(run: NixRun): void {
  expect(run.code, `nix failed:\n${run.stderr}`).toBe(0)
}

/** Sums every series of a metric whose labels contain `labels`. */
function sample(text: string, name: string, labels = ''): number {
  let sum = 0
  for (const line of text.split('\n')) {
    if ((line.startsWith(`${name}{`) || line.startsWith(`${name} `)) && line.includes(labels)) {
      sum += Number(line.slice(line.lastIndexOf(' ') + 1))
    }
  }
  return sum
}

/** The FileHashes (nix32) of the files a server holds, as its narinfo imply them. */
function heldFiles(server: ShapeServer): Set<string> {
  const held = new Set<string>()
  for (const target of server.targets.filter((t) => t.endsWith('.narinfo'))) {
    const file = impliedFile(parseNarInfo(Buffer.from(server.file(target)!.body).toString()))
    if (file) held.add(file.fileHash.nix32)
  }
  return held
}

/**
 * The NAR requests a server failed although it holds the file: none, when every upstream is asked under
 * its own name. (A 404 for a file it does not hold, say the zstd one of another upstream, is fine.)
 */
function wrongNarRequests(server: ShapeServer): string[] {
  const held = heldFiles(server)
  return server.requests
    .filter((r) => r.target.startsWith('nar/') && r.status !== 200 && r.status !== 206)
    .filter((r) => {
      const standard = /^nar\/([0-9a-z]{52})\.nar(?:\.\w+)?$/.exec(r.target)
      return !standard || held.has(standard[1]!)
    })
    .map((r) => `${r.status} ${r.target}`)
}

describe.skipIf(!nixAvailable)('every cache shape through the proxy, with real Nix', () => {
  let nix: NixSandbox
  const servers = new Map<CacheShape, ShapeServer>()
  const proxies: Proxy[] = []
  const server = (shape: CacheShape): ShapeServer => servers.get(shape)!

  async function proxyOver(upstreams: string[], options: Partial<ProxyOptions> = {}): Promise<Proxy> {
    const proxy = createProxy({ logger: pino({ level: 'silent' }), upstreams, trustedPublicKeys: [key], ...options })
    proxies.push(proxy)
    await proxy.listen()
    return proxy
  }

  /** `nix copy --from url` of the roots into a new store, signatures required, then every path verified. */
  async function copyAndVerify(url: string): Promise<void> {
    const store = nix.store()
    ok(await nix.copyFrom(url, store, roots, key, { 'require-sigs': 'true' }))
    for (const path of everyPath) ok(await nix.run('nix-store', ['--store', store, '--verify-path', path]))
  }

  beforeAll(async () => {
    nix = await nixSandbox()
    for (const shape of CACHE_SHAPES) servers.set(shape, await startShapeServer({ shape, prefix: '/cache/' }))
  })
  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.close()))
    await Promise.all([...servers.values()].map((s) => s.close()))
    await nix?.close()
  })

  it.each(CACHE_SHAPES)('%s alone: Nix takes it directly and through the proxy, which serves nar/<FileHash>', async (shape) => {
    const upstream = server(shape)
    // The shape is one Nix itself reads.
    await copyAndVerify(upstream.url)
    upstream.requests.length = 0
    const proxy = await proxyOver([upstream.url])
    await copyAndVerify(proxy.url)
    for (const name of SHAPED_PATHS) {
      const narinfo = await get(`${proxy.url}/${fixtures.path(name).hashPart}.narinfo`)
      expect(narinfo.body.toString()).toMatch(SERVED_URL)
      expect(narinfo.body.toString()).toMatch(/^FileHash: /m)
    }
    expect(wrongNarRequests(upstream)).toEqual([])
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
    expect(sample(metrics, 'narrace_nar_requests_total', 'outcome="ok"')).toBe(SHAPED_PATHS.length)
  })

  it.each([
    ['cachix', 'nix-serve'],
    ['harmonia', 'attic'],
    ['snix', 'absolute'],
    ['nix-zstd', 'nix-bzip2'],
  ] as [CacheShape, CacheShape][])('mixed: %s and %s both hold every path; each is asked under its own name', async (a, b) => {
    server(a).requests.length = 0
    server(b).requests.length = 0
    const proxy = await proxyOver([server(a).url, server(b).url])
    await copyAndVerify(proxy.url)
    expect(wrongNarRequests(server(a))).toEqual([])
    expect(wrongNarRequests(server(b))).toEqual([])
  })

  it('mixed: the uncompressed shapes hold the same file under four names; none is asked under a name it does not use', async () => {
    const shapes: CacheShape[] = ['nix-none', 'nix-serve', 'harmonia', 'snix']
    for (const shape of shapes) server(shape).requests.length = 0
    const proxy = await proxyOver(shapes.map((shape) => server(shape).url))
    await copyAndVerify(proxy.url)
    // NarHash is the FileHash: each of them may serve every NAR, and each that was asked was asked right.
    for (const shape of shapes) expect(wrongNarRequests(server(shape)), shape).toEqual([])
  })

  it('mixed: a path held only in one shape by one upstream, the others only in another shape by the other', async () => {
    const serve = await startShapeServer({ shape: 'nix-serve', only: ['small', 'diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom'] })
    const cachix = await startShapeServer({ shape: 'cachix', only: ['200k'] })
    try {
      const proxy = await proxyOver([serve.url, cachix.url])
      await copyAndVerify(proxy.url)
      expect(wrongNarRequests(cachix)).toEqual([])
      expect(cachix.requests.some((r) => r.target.endsWith('.nar.zst'))).toBe(true)
    } finally {
      await Promise.all([serve.close(), cachix.close()])
    }
  })

  describe.skipIf(!built)('a restart of the proxy command with the same --index', () => {
    let dir: string
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'narrace-restart-'))
    })
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true })
    })

    /**
     * Nix asks the first proxy for the narinfo only (`nix path-info`, which keeps them in Nix's own disk
     * cache); then the proxy restarts on the same address, and Nix asks the new one for the NARs alone.
     */
    async function acrossRestart(upstream: string, index: string, paths = everyPath, wanted = roots): Promise<NixRun> {
      const flags = ['--upstream', upstream, '--trusted-public-key', key, '--index', index]
      const first = await startProxy(flags)
      const port = new URL(first.url).port
      let store: string
      try {
        ok(await nix.run('nix', ['path-info', '--store', first.url, '--option', 'trusted-public-keys', key, ...paths]))
      } finally {
        expect(await first.stop()).toBe(0)
      }
      const second = await startProxy(['--listen', `127.0.0.1:${port}`, ...flags])
      try {
        store = nix.store()
        const run = await nix.copyFrom(second.url, store, wanted, key, { 'require-sigs': 'true' })
        if (run.code === 0) for (const path of paths) ok(await nix.run('nix-store', ['--store', store, '--verify-path', path]))
        const metrics = (await get(`${second.url}/metrics`)).body.toString()
        // Nix took every narinfo from its own cache: the restarted proxy was asked for NARs only.
        expect(sample(metrics, 'narrace_narinfo_requests_total')).toBe(0)
        return run
      } finally {
        expect(await second.stop()).toBe(0)
      }
    }

    it.each(CACHE_SHAPES)('%s: Nix gets every NAR whose narinfo it cached before the restart', async (shape) => {
      ok(await acrossRestart(server(shape).url, join(dir, `${shape}.sqlite`)))
    })

    it('a compressed file without FileHash, served under its hash part, is found again through its narinfo', async () => {
      const bare = await startShapeServer({ shape: 'cachix', only: ['small'] })
      try {
        const small = fixtures.path('small')
        const target = `${small.hashPart}.narinfo`
        const text = Buffer.from(bare.file(target)!.body).toString().replace(/^FileHash: .*\n/m, '')
        bare.setFile(target, { body: Buffer.from(text), type: 'text/x-nix-narinfo' })
        ok(await acrossRestart(bare.url, join(dir, 'bare.sqlite'), [small.storePath], [small.storePath]))
        expect(bare.requests.filter((r) => r.target.startsWith('nar/') && r.status !== 200)).toEqual([])
      } finally {
        await bare.close()
      }
    })

    it('without an index (--index :memory:), a cachix NAR is not found after the restart: the index is what keeps it', async () => {
      const run = await acrossRestart(server('cachix').url, ':memory:')
      expect(run.code).not.toBe(0)
    })
  })

  it('a compressed file without FileHash comes only from the upstream that served its narinfo, unverified, and counted so', async () => {
    const hashPart = fixtures.path('small').hashPart
    const bare = await startShapeServer({ shape: 'nix-xz', only: ['small'] })
    const other = await startShapeServer({ shape: 'nix-xz', only: ['small'] })
    try {
      const narinfo = Buffer.from(bare.file(`${hashPart}.narinfo`)!.body).toString()
      const stripped = narinfo.replace(/^FileHash: .*\n/m, '').replace(/^URL: .*$/m, `URL: nar/opaque-${hashPart}.nar.xz`)
      bare.setFile(`nar/opaque-${hashPart}.nar.xz`, bare.file(fixtures.path('small').url)!)
      bare.setFile(`${hashPart}.narinfo`, { body: Buffer.from(stripped), type: 'text/x-nix-narinfo' })
      // The other upstream holds the same file but no narinfo: it is never asked for the file.
      other.setFile(`${hashPart}.narinfo`, undefined)
      const proxy = await proxyOver([bare.url, other.url])
      const served = (await get(`${proxy.url}/${hashPart}.narinfo`)).body.toString()
      expect(served).toMatch(new RegExp(`^URL: nar/${hashPart}\\.nar\\.xz$`, 'm'))
      expect(served).not.toMatch(/^FileHash/m)
      const store = nix.store()
      ok(await nix.copyFrom(proxy.url, store, [fixtures.path('small').storePath], key, { 'require-sigs': 'true' }))
      ok(await nix.run('nix-store', ['--store', store, '--verify-path', fixtures.path('small').storePath]))
      expect(bare.requests.filter((r) => r.target.startsWith('nar/')).map((r) => r.target)).toEqual([`nar/opaque-${hashPart}.nar.xz`])
      expect(other.requests.filter((r) => r.target.startsWith('nar/'))).toEqual([])
      const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
      expect(sample(metrics, 'narrace_nar_requests_total', 'outcome="unverified"')).toBe(1)
    } finally {
      await Promise.all([bare.close(), other.close()])
    }
  })

  describe('a private upstream', () => {
    const token = 'Bearer s3cret-t0ken'
    let locked: ShapeServer
    let open: ShapeServer
    beforeAll(async () => {
      locked = await startShapeServer({ shape: 'cachix', authorization: token, prefix: '/private/' })
      open = await startShapeServer({ shape: 'nix-serve' })
    })
    afterAll(async () => {
      await Promise.all([locked.close(), open.close()])
    })

    it('refuses Nix without the right Authorization', async () => {
      const run = await nix.copyFrom(locked.url, nix.store(), [roots[0]!], key)
      expect(run.code).not.toBe(0)
      const proxy = await proxyOver([locked.url])
      expect((await get(`${proxy.url}/${fixtures.path('small').hashPart}.narinfo`)).status).not.toBe(200)
    })

    it.skipIf(!built)('--upstream-header gives it its token; the other upstream never sees it', async () => {
      locked.requests.length = 0
      open.requests.length = 0
      const lockedUrl = locked.url.replace(/\/$/, '')
      const proxy = await startProxy([
        '--upstream', lockedUrl, '--upstream', open.url, '--trusted-public-key', key,
        '--upstream-header', `${lockedUrl}=Authorization: ${token}`,
      ])
      try {
        await copyAndVerify(proxy.url)
      } finally {
        expect(await proxy.stop()).toBe(0)
      }
      expect(locked.requests.length).toBeGreaterThan(0)
      expect(locked.requests.every((r) => r.headers.authorization === token)).toBe(true)
      expect(open.requests.length).toBeGreaterThan(0)
      expect(open.requests.filter((r) => r.headers.authorization !== undefined)).toEqual([])
    })

    it.skipIf(!built)('--netrc-file gives it Basic credentials, as Nix\'s netrc-file does', async () => {
      const basic = `Basic ${Buffer.from('alice:pa55 word').toString('base64')}`
      const netrcLocked = await startShapeServer({ shape: 'harmonia', authorization: basic })
      const dir = await mkdtemp(join(tmpdir(), 'narrace-netrc-'))
      try {
        await writeFile(join(dir, 'netrc'), 'machine 127.0.0.1\n  login alice\n  password "pa55 word"\n')
        const proxy = await startProxy(['--upstream', netrcLocked.url, '--trusted-public-key', key, '--netrc-file', join(dir, 'netrc')])
        try {
          await copyAndVerify(proxy.url)
        } finally {
          expect(await proxy.stop()).toBe(0)
        }
        expect(netrcLocked.requests.every((r) => r.headers.authorization === basic)).toBe(true)
      } finally {
        await netrcLocked.close()
        await rm(dir, { recursive: true, force: true })
      }
    })
  })
})
