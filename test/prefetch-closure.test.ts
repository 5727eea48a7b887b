import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseNarHash } from '@narrace/core'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { prefetchCommand, type CommandIO, type PrefetchOptions } from '../packages/cli/src/index.js'
import { runCli, startCli } from '../packages/cli/test/support/run-cli.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'

const quiet = (signal?: AbortSignal): CommandIO & { out: string[] } => {
  const out: string[] = []
  const io = { out, stdout: { write: (t: string) => out.push(t) }, stderr: { write: () => true } }
  return signal ? { ...io, signal } : io
}

const root = fixtures.path('closure-root')
const closure = [root, ...fixtures.paths.filter((p) => p.name.startsWith('closure-leaf-'))]

/** The NAR GETs the server saw, by narinfo URL. */
function narRequests(server: CacheServer): string[] {
  return server.requests.filter((r) => r.method === 'GET' && r.path.includes('/nar/')).map((r) => r.path.replace(/^.*\/nar\//, 'nar/'))
}

describe('narrace prefetch: closures into a file:// cache', () => {
  let server: CacheServer
  let work: string
  let out: string
  const options = (over: Partial<PrefetchOptions> = {}): PrefetchOptions => ({
    paths: [root.storePath],
    caches: [server.url],
    output: out,
    trustedKeys: [fixtures.publicKey],
    jobs: 4,
    ...over,
  })

  beforeAll(async () => {
    server = await startCacheServer({ root: fixtures.cacheDir })
    work = await mkdtemp(join(tmpdir(), 'narrace-prefetch-'))
  })
  beforeEach(async ({ task }) => {
    out = join(work, task.id)
    server.clearFaults()
    server.requests.length = 0
  })
  afterAll(async () => {
    await server?.close()
    await rm(work, { recursive: true, force: true })
  })

  it('writes every path of the closure once: nix-cache-info, narinfos unchanged, verified NARs at their URLs', async () => {
    const summary = await prefetchCommand(options(), quiet())
    expect(summary.missing).toEqual([])
    expect(summary.failed).toEqual([])
    expect(summary.paths.map((p) => p.storePath).sort()).toEqual(closure.map((p) => p.storePath).sort())
    expect(summary.paths.every((p) => p.status === 'fetched')).toBe(true)
    expect(summary.bytes).toBe(closure.reduce((n, p) => n + p.fileSize, 0))
    expect(narRequests(server).sort()).toEqual(closure.map((p) => p.url).sort())

    expect(await readFile(join(out, 'nix-cache-info'), 'utf8')).toMatch(/^StoreDir: \/nix\/store$/m)
    for (const path of closure) {
      expect(await readFile(join(out, `${path.hashPart}.narinfo`), 'utf8')).toBe(fixtures.narinfoText(path.name))
      expect(await readFile(join(out, path.url))).toEqual(await readFile(fixtures.narPath(path.name)))
    }
  })

  it('walks a diamond once per path', async () => {
    const top = fixtures.path('diamond-top')
    const summary = await prefetchCommand(options({ paths: [top.hashPart] }), quiet())
    const names = summary.paths.map((p) => p.storePath)
    expect(names.sort()).toEqual(
      ['diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom'].map((n) => fixtures.path(n).storePath).sort(),
    )
    const narinfos = server.requests.filter((r) => r.path.endsWith('.narinfo'))
    expect(narinfos).toHaveLength(4)
    expect(narRequests(server)).toHaveLength(4)
  })

  it('after an abort halfway, leaves no partial file, and a rerun fetches only the missing NARs', async () => {
    // Slow enough that downloads are in flight when the abort lands.
    server.setFaults({ bytesPerSecond: 400_000 })
    const controller = new AbortController()
    let settled = 0
    await expect(
      prefetchCommand(
        options({
          onPath: () => {
            if (++settled === 6) controller.abort(new Error('killed halfway'))
          },
        }),
        quiet(controller.signal),
      ),
    ).rejects.toThrow('killed halfway')

    const nars = await readdir(join(out, 'nar'))
    expect(nars.filter((n) => !n.endsWith('.nar.xz'))).toEqual([])
    const present = closure.filter((p) => nars.includes(p.url.slice('nar/'.length)))
    expect(present.length).toBeGreaterThanOrEqual(6)
    expect(present.length).toBeLessThan(closure.length)
    for (const path of present) {
      expect(await readFile(join(out, path.url))).toEqual(await readFile(fixtures.narPath(path.name)))
    }

    server.clearFaults()
    server.requests.length = 0
    const summary = await prefetchCommand(options(), quiet())
    const missing = closure.filter((p) => !present.includes(p))
    expect(narRequests(server).sort()).toEqual(missing.map((p) => p.url).sort())
    expect(summary.paths.filter((p) => p.status === 'present')).toHaveLength(present.length)
    expect(summary.paths.filter((p) => p.status === 'fetched')).toHaveLength(missing.length)
    for (const path of closure) {
      expect(await readFile(join(out, `${path.hashPart}.narinfo`), 'utf8')).toBe(fixtures.narinfoText(path.name))
    }
  })

  it('keeps at most --jobs NAR downloads in flight', async () => {
    server.setFaults({ firstByteDelayMs: 50 }, /^nar\//)
    let most = 0
    const inFlight = (): number => server.requests.filter((r) => r.path.includes('/nar/') && r.completed === undefined).length
    const poll = setInterval(() => (most = Math.max(most, inFlight())), 5)
    try {
      const summary = await prefetchCommand(options({ jobs: 2 }), quiet())
      expect(summary.paths).toHaveLength(closure.length)
    } finally {
      clearInterval(poll)
    }
    expect(most).toBeGreaterThan(0)
    expect(most).toBeLessThanOrEqual(2)
  })

  it('replaces a NAR that is present but corrupt', async () => {
    const leaf = fixtures.path('closure-leaf-03')
    await prefetchCommand(options({ paths: [leaf.storePath] }), quiet())
    await cp(fixtures.narPath('closure-leaf-04'), join(out, leaf.url))
    server.requests.length = 0
    const summary = await prefetchCommand(options({ paths: [leaf.storePath] }), quiet())
    expect(summary.paths).toMatchObject([{ storePath: leaf.storePath, status: 'fetched' }])
    expect(narRequests(server)).toEqual([leaf.url])
    expect(await readFile(join(out, leaf.url))).toEqual(await readFile(fixtures.narPath(leaf.name)))
  })

  it('reports a path no cache has, exits 1, and still fetches the rest of the closure', async () => {
    // A copy of the cache that lost one leaf's narinfo: the root still references it.
    const partial = join(work, 'partial-cache')
    await cp(fixtures.cacheDir, partial, { recursive: true })
    const lost = fixtures.path('closure-leaf-07')
    await rm(join(partial, `${lost.hashPart}.narinfo`))
    const upstream = await startCacheServer({ root: partial })
    try {
      const run = await runCli([
        'prefetch',
        root.storePath,
        '--cache',
        upstream.url,
        '-o',
        out,
        '--trusted-public-key',
        fixtures.publicKey,
      ])
      expect(run.code).toBe(1)
      expect(run.stdout).toContain(`missing ${lost.storePath}`)
      expect(run.stdout).toMatch(/20 paths: 19 fetched, 0 already present, 1 missing, 0 failed/)
      const narinfos = (await readdir(out)).filter((n) => n.endsWith('.narinfo'))
      expect(narinfos.sort()).toEqual(closure.filter((p) => p !== lost).map((p) => `${p.hashPart}.narinfo`).sort())
    } finally {
      await upstream.close()
    }
  })

  it('refuses a narinfo whose URL climbs out of nar/ (URL: nar/../nix-cache-info) and writes nothing for it', async () => {
    // The URL is not signed, so a cache (or anyone on its path) can point it anywhere and set FileHash to match.
    const evil = join(work, 'evil-cache')
    await cp(fixtures.cacheDir, evil, { recursive: true })
    const chosen = 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 1\n'
    await writeFile(join(evil, 'nix-cache-info'), chosen)
    const leaf = fixtures.path('closure-leaf-05')
    const digest = createHash('sha256').update(chosen).digest('hex')
    const text = fixtures
      .narinfoText(leaf.name)
      .replace(/^URL: .*$/m, 'URL: nar/../nix-cache-info')
      .replace(/^FileHash: .*$/m, `FileHash: ${parseNarHash(`sha256:${digest}`).toString()}`)
      .replace(/^FileSize: .*$/m, `FileSize: ${Buffer.byteLength(chosen)}`)
    await writeFile(join(evil, `${leaf.hashPart}.narinfo`), text)
    const upstream = await startCacheServer({ root: evil })
    try {
      const run = await runCli(['prefetch', leaf.storePath, '--cache', upstream.url, '-o', out, '--trusted-public-key', fixtures.publicKey])
      expect(run.code).toBe(1)
      expect(run.stdout).toMatch(/^failed +\/nix\/store\/\S+: narinfo URL "nar\/\.\.\/nix-cache-info" has a dot segment/m)
      expect(await readFile(join(out, 'nix-cache-info'), 'utf8')).toBe('StoreDir: /nix/store\n')
      expect((await readdir(out)).filter((n) => n.endsWith('.narinfo'))).toEqual([])
      expect(await readdir(join(out, 'nar'))).toEqual([])
      expect(upstream.requests.filter((r) => !r.path.endsWith('.narinfo'))).toEqual([])
    } finally {
      await upstream.close()
    }
  })

  it('walks cycles and self-references safely, each path once, and reports a dangling reference', async () => {
    const cycles = await startCacheServer({ root: fixtures.cycle.cacheDir })
    try {
      const names = ['cycle-root', 'cycle-dangling']
      const paths = names.map((n) => fixtures.cycle.paths.find((p) => p.name === n)!.storePath)
      const summary = await prefetchCommand(options({ paths, caches: [cycles.url], trustedKeys: [] }), quiet())
      const seen = summary.paths.map((p) => p.storePath)
      expect(new Set(seen).size).toBe(seen.length)
      expect(seen.sort()).toEqual(fixtures.cycle.paths.map((p) => p.storePath).sort())
      expect(summary.missing).toEqual([fixtures.cycle.missing.storePath])
      expect(summary.failed).toEqual([])
    } finally {
      await cycles.close()
    }
  })

  it('refuses a narinfo that no trusted key signed', async () => {
    const summary = await prefetchCommand(
      options({ paths: [fixtures.path('small').storePath], trustedKeys: ['other:YZ/zkSVchtgpVRzyLLqyMFCKorcByGwjUXf5v27jw8s='] }),
      quiet(),
    )
    expect(summary.missing).toEqual([fixtures.path('small').storePath])
    expect(narRequests(server)).toEqual([])
  })

  describe('as a user runs it', () => {
    const cli = (...args: string[]): string[] => [
      'prefetch',
      ...args,
      '--cache',
      server.url,
      '-o',
      out,
      '--trusted-public-key',
      fixtures.publicKey,
    ]

    it('takes a --list file, prints progress lines on stderr and the summary table on stdout; a rerun fetches nothing', async () => {
      const list = join(work, 'subscription.txt')
      await writeFile(list, `# nightly\n${root.storePath}\n\n`)
      const first = await runCli(cli('--list', list, '--jobs', '1'))
      expect(first.code).toBe(0)
      expect(first.stdout).toMatch(/^backend +NARs won +bytes +share$/m)
      expect(first.stdout).toMatch(new RegExp(`^${server.url.replace(/\/$/, '')} +20 +[\\d.]+ KiB +100%$`, 'm'))
      expect(first.stdout).toMatch(/20 paths: 20 fetched, 0 already present, 0 missing, 0 failed/)
      expect(first.stderr.match(/^fetched \/nix\/store\//gm)).toHaveLength(20)
      expect(first.stderr + first.stdout).not.toMatch(/[\r\x1b]/)
      expect(narRequests(server)).toHaveLength(20)

      server.requests.length = 0
      const again = await runCli(cli('--list', list))
      expect(again.code).toBe(0)
      expect(again.stdout).toMatch(/20 paths: 0 fetched, 20 already present, 0 missing, 0 failed/)
      expect(narRequests(server)).toEqual([])
    })

    it('after kill -9 halfway, a rerun clears the partial files and fetches only the missing NARs', async () => {
      server.setFaults({ bytesPerSecond: 400_000 })
      const child = startCli(cli(root.storePath))
      let stderr = ''
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`too few NARs fetched in time: ${stderr}`)), 20_000)
        child.stderr!.on('data', (d: Buffer) => {
          stderr += d.toString()
          if ((stderr.match(/^fetched /gm) ?? []).length >= 5) {
            clearTimeout(timer)
            resolve()
          }
        })
        child.once('exit', () => reject(new Error(`prefetch ended before the kill: ${stderr}`)))
      })
      child.kill('SIGKILL')
      expect((await child.done).signal).toBe('SIGKILL')

      // What a kill in the middle of a write leaves, whether or not this one did.
      const complete = closure.filter((p) => existsSync(join(out, p.url)))
      const leftover = join(out, 'nar', `.${closure[0]!.url.slice('nar/'.length)}.0123456789ab.partial`)
      await writeFile(leftover, 'half a NAR')
      const missing = closure.filter((p) => !complete.includes(p))
      expect(missing.length).toBeGreaterThan(0)

      server.clearFaults()
      server.requests.length = 0
      const rerun = await runCli(cli(root.storePath))
      expect(rerun.code).toBe(0)
      expect(narRequests(server).sort()).toEqual(missing.map((p) => p.url).sort())
      expect((await readdir(join(out, 'nar'))).filter((n) => !n.endsWith('.nar.xz'))).toEqual([])
      for (const path of closure) {
        expect(await readFile(join(out, path.url))).toEqual(await readFile(fixtures.narPath(path.name)))
        expect(await readFile(join(out, `${path.hashPart}.narinfo`), 'utf8')).toBe(fixtures.narinfoText(path.name))
      }
    })

    it.each([
      ['a --list file that is not there', 2, () => cli('--list', join(work, 'absent.txt'))],
      ['a --list line that is no store path', 2, async () => {
        const list = join(work, 'bad-list.txt')
        await writeFile(list, `${root.storePath}\nhello\n`)
        return cli('--list', list)
      }],
      ['--jobs 0', 2, () => cli(root.storePath, '--jobs', '0')],
      ['an -o folder inside a file', 1, async () => {
        await writeFile(join(work, 'a-file'), '')
        return ['prefetch', root.storePath, '--cache', server.url, '-o', join(work, 'a-file', 'cache')]
      }],
    ])('stops with one line for %s (exit %i), before any download', async (_, code, args) => {
      const run = await runCli(await args())
      expect(run.code).toBe(code)
      expect(run.stderr).toMatch(/^narrace: [^\n]+\n$/)
      expect(narRequests(server)).toEqual([])
    })
  })
})
