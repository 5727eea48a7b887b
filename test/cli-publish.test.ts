import { createHash } from 'node:crypto'
import { cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openIndex } from '@narrace/index'
import { Server } from 'bittorrent-tracker'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { prefetchCommand, type CommandIO } from '../packages/cli/src/index.js'
import { runCli, startCli } from '../packages/cli/test/support/run-cli.js'
import { fixtures } from './fixtures/index.js'
import { startKuboRpc, type KuboRpc } from './support/kubo-rpc.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'

const PUBLISHED = ['diamond-bottom', '200k', '5m']

/** A binary-cache folder holding a few fixture paths, as `nix copy --to file://` leaves it. */
async function smallCache(dir: string, names: string[]): Promise<string> {
  await mkdir(join(dir, 'nar'), { recursive: true })
  await cp(join(fixtures.cacheDir, 'nix-cache-info'), join(dir, 'nix-cache-info'))
  for (const name of names) {
    await cp(fixtures.narinfoPath(name), join(dir, `${fixtures.path(name).hashPart}.narinfo`))
    await cp(fixtures.narPath(name), join(dir, fixtures.path(name).url))
  }
  return dir
}

const sha256 = async (path: string): Promise<string> => createHash('sha256').update(await readFile(path)).digest('hex')

/** `narrace publish` donating a cache folder or an HTTP cache, then `narrace fetch` finding it there. */
describe('narrace publish', () => {
  let work: string
  let cache: string
  let http: CacheServer
  let api = ''
  let kubo: KuboRpc | undefined

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'narrace-cli-publish-'))
    cache = await smallCache(join(work, 'cache'), PUBLISHED)
    http = await startCacheServer({ root: fixtures.cacheDir })
    kubo = await startKuboRpc(work)
    api = kubo.url
  })

  afterAll(async () => {
    await kubo?.stop()
    await http?.close()
    await rm(work, { recursive: true, force: true })
  })

  describe('to IPFS', () => {
    const index = (): string => join(work, 'ipfs-index.sqlite')

    it('adds every NAR of a cache folder, records the mappings and exports them', async () => {
      const exported = join(work, 'mappings.ndjson')
      const run = await runCli(['publish', '--cache', `file://${cache}`, '--ipfs-api', api, '--index', index(), '--export', exported])
      expect(run.stderr).toBe('')
      expect(run.code).toBe(0)
      expect(run.stdout).toContain('published 3, skipped 0, failed 0')
      const lines = (await readFile(exported, 'utf8')).trim().split('\n').map((l) => JSON.parse(l))
      expect(lines.map((l) => l.fileHash).sort()).toEqual(PUBLISHED.map((n) => fixtures.path(n).fileHash).sort())
      for (const line of lines) {
        const path = fixtures.paths.find((p) => p.fileHash === line.fileHash)!
        expect(line).toMatchObject({ size: path.fileSize, storePath: path.storePath, url: path.url })
        expect(line.cid).toMatch(/^baf/)
      }
    })

    it('skips what the index already has on a re-run', async () => {
      const run = await runCli(['publish', '--cache', cache, '--ipfs-api', api, '--index', index()])
      expect(run.code).toBe(0)
      expect(run.stdout).toContain('published 0, skipped 3, failed 0')
    })

    it('lets `narrace fetch` find a large NAR through the mapping alone', async () => {
      const out = join(work, '5m.nar.xz')
      const run = await runCli(['fetch', fixtures.path('5m').fileHash, '-o', out, '--ipfs-api', api, '--index', index()])
      expect(run.stderr).not.toMatch(/narrace:/)
      expect(run.code).toBe(0)
      expect(run.stdout).toMatch(/winner ipfs/)
      expect(await sha256(out)).toBe(fixtures.path('5m').fileHashHex)
    })

    it('prefetch takes NARs the HTTP cache lost from IPFS, and credits IPFS with their bytes', async () => {
      const lost = await startCacheServer({ root: fixtures.cacheDir })
      lost.setFaults({ status: 404 }, /^nar\//)
      try {
        const io: CommandIO = { stdout: { write: () => true }, stderr: { write: () => true } }
        const summary = await prefetchCommand(
          {
            paths: ['200k', '5m'].map((n) => fixtures.path(n).storePath),
            caches: [lost.url],
            output: join(work, 'from-ipfs'),
            trustedKeys: [fixtures.publicKey],
            ipfsApi: api,
            indexPath: index(),
          },
          io,
        )
        expect(summary.failed).toEqual([])
        expect(summary.paths.map((p) => p.winner)).toEqual(['ipfs', 'ipfs'])
        expect(summary.byBackend.get('ipfs')).toBe(fixtures.path('200k').fileSize + fixtures.path('5m').fileSize)
        expect(summary.byBackend.get(lost.url.replace(/\/$/, '')) ?? 0).toBe(0)
        for (const name of ['200k', '5m']) {
          expect(await sha256(join(work, 'from-ipfs', fixtures.path(name).url))).toBe(fixtures.path(name).fileHashHex)
        }
      } finally {
        await lost.close()
      }
    })

    it('publishes the closure of store paths from an HTTP cache', async () => {
      const httpIndex = join(work, 'http-index.sqlite')
      const top = fixtures.path('diamond-top')
      const run = await runCli([
        'publish',
        '--cache',
        http.url,
        top.storePath,
        '--trusted-public-key',
        fixtures.publicKey,
        '--ipfs-api',
        api,
        '--index',
        httpIndex,
      ])
      expect(run.code).toBe(0)
      expect(run.stdout).toContain('published 4, skipped 0, failed 0')
      const mapped = openIndex(httpIndex)
      try {
        for (const name of ['diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom']) {
          expect(mapped.get(fixtures.path(name).fileHash)).toMatchObject({ storePath: fixtures.path(name).storePath })
          expect(mapped.get(fixtures.path(name).fileHash)?.cid).toMatch(/^baf/)
        }
      } finally {
        mapped.close()
      }
    })

    it('counts a NAR whose bytes are not its FileHash as failed, exit 1, and publishes the rest', async () => {
      const bad = await smallCache(join(work, 'bad-cache'), ['small', 'diamond-left'])
      await cp(fixtures.narPath('200k'), join(bad, fixtures.path('small').url))
      const run = await runCli(['publish', '--cache', bad, '--ipfs-api', api, '--index', join(work, 'bad-index.sqlite')])
      expect(run.code).toBe(1)
      expect(run.stdout).toContain('published 1, skipped 0, failed 1')
      expect(run.stderr).toMatch(/failed .*small/)
    })

    it('interrupted with Ctrl-C and re-run, skips what the first run published', async () => {
      const idx = join(work, 'interrupted-index.sqlite')
      // Each NAR answers late, so that Ctrl-C lands between two of them.
      const slow = await startCacheServer({ root: fixtures.cacheDir })
      slow.setFaults({ firstByteDelayMs: 300 }, /^nar\//)
      const args = ['publish', '--cache', slow.url, fixtures.path('diamond-top').storePath, '--ipfs-api', api, '--index', idx]
      try {
        const first = startCli(args)
        let stdout = ''
        let stderr = ''
        first.stderr!.on('data', (d: Buffer) => (stderr += d.toString()))
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`nothing published in time: ${stdout} ${stderr}`)), 30_000)
          first.stdout!.on('data', (d: Buffer) => {
            stdout += d.toString()
            if (/^published \/nix\/store\//m.test(stdout)) {
              clearTimeout(timer)
              resolve()
            }
          })
          first.once('exit', () => reject(new Error(`publish exited before Ctrl-C: ${stdout} ${stderr}`)))
        })
        first.kill('SIGINT')
        const interrupted = await first.done
        expect(interrupted.code).toBe(130)
        expect(interrupted.stderr).toMatch(/^narrace: interrupted$/m)
        const done = (interrupted.stdout.match(/^published \/nix\/store\//gm) ?? []).length
        expect(done).toBeGreaterThan(0)

        slow.clearFaults()
        const again = await runCli(args)
        expect(again.code).toBe(0)
        expect(again.stdout).toContain(`published ${4 - done}, skipped ${done}, failed 0`)
      } finally {
        await slow.close()
      }
    })

    it('prefetch --publish donates each NAR it fetched through the same code', async () => {
      const prefetchIndex = join(work, 'prefetch-index.sqlite')
      const io: CommandIO = { stdout: { write: () => true }, stderr: { write: () => true } }
      const summary = await prefetchCommand(
        {
          paths: [fixtures.path('diamond-top').storePath],
          caches: [http.url],
          output: join(work, 'prefetched'),
          ipfsApi: api,
          indexPath: prefetchIndex,
          publish: true,
        },
        io,
      )
      expect(summary.paths).toHaveLength(4)
      const mapped = openIndex(prefetchIndex)
      try {
        for (const name of ['diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom']) {
          expect(mapped.get(fixtures.path(name).fileHash)?.cid).toMatch(/^baf/)
        }
      } finally {
        mapped.close()
      }
    })
  })

  describe('as torrents', () => {
    let tracker: Server
    let announce = ''
    beforeAll(async () => {
      tracker = new Server({ http: true, udp: false, ws: false, stats: false })
      tracker.on('warning', () => {})
      await new Promise<void>((resolve, reject) => {
        tracker.once('error', reject)
        tracker.listen(0, '127.0.0.1', resolve)
      })
      announce = `http://127.0.0.1:${(tracker.http!.address() as AddressInfo).port}/announce`
    })
    afterAll(async () => {
      tracker.http?.closeAllConnections()
      await new Promise<void>((resolve) => tracker.close(() => resolve()))
    })

    it('seeds until Ctrl-C, and `narrace fetch --torrent` gets the NAR from that seeder', async () => {
      const index = join(work, 'torrent-index.sqlite')
      const seeder = startCli(['publish', '--cache', cache, '--torrent', '--announce', announce, '--index', index])
      try {
        let stderr = ''
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no seeding line in time: ${stderr}`)), 30_000)
          seeder.stderr!.on('data', (d: Buffer) => {
            stderr += d.toString()
            if (stderr.includes('seeding 3 torrents')) {
              clearTimeout(timer)
              resolve()
            }
          })
          seeder.once('exit', () => reject(new Error(`publish exited early: ${stderr}`)))
        })
        const out = join(work, 'torrent-200k.nar.xz')
        const fetched = await runCli(['fetch', fixtures.path('200k').fileHash, '-o', out, '--torrent', '--index', index])
        expect(fetched.stderr).not.toMatch(/narrace:/)
        expect(fetched.code).toBe(0)
        expect(fetched.stdout).toMatch(/winner torrent/)
        expect(await sha256(out)).toBe(fixtures.path('200k').fileHashHex)

        // Without --index, the default index (here $NARRACE_INDEX) is where torrents are looked up.
        const viaEnv = await runCli(['fetch', fixtures.path('5m').fileHash, '-o', join(work, 'torrent-5m.nar.xz'), '--torrent'], {
          env: { NARRACE_INDEX: index },
        })
        expect(viaEnv.stderr).not.toMatch(/narrace:/)
        expect(viaEnv.code).toBe(0)
        expect(viaEnv.stdout).toMatch(/winner torrent/)
      } finally {
        seeder.kill('SIGINT')
      }
      const run = await seeder.done
      expect(run.code).toBe(0)
      expect(run.stdout).toContain('published 3, skipped 0, failed 0')
    })

    it('with --no-seed, records the mappings and exits; a re-run skips them', async () => {
      const index = join(work, 'noseed-index.sqlite')
      const args = ['publish', '--cache', cache, '--torrent', '--announce', announce, '--index', index, '--no-seed']
      const first = await runCli(args)
      expect(first.code).toBe(0)
      expect(first.stdout).toContain('published 3, skipped 0, failed 0')
      const mapped = openIndex(index)
      try {
        for (const name of PUBLISHED) expect(mapped.get(fixtures.path(name).fileHash)?.btih).toMatch(/^[0-9a-f]{40}$/)
      } finally {
        mapped.close()
      }
      const again = await runCli(args)
      expect(again.code).toBe(0)
      expect(again.stdout).toContain('published 0, skipped 3, failed 0')
    })
  })

  it.each([
    [['publish', '--index', 'x', '--ipfs-api', 'http://127.0.0.1:1']],
    [['publish', '--cache', 'x', '--ipfs-api', 'http://127.0.0.1:1']],
    [['publish', '--cache', 'x', '--index', 'x']],
    [['publish', '--cache', 'x', '--index', 'x', '--torrent']],
    [['publish', '--cache', 'x', '--index', 'x', '--torrent', '--announce', 'ws://127.0.0.1:1']],
  ])('exits 2 for %j', async (args) => {
    const run = await runCli(args)
    expect(run.code).toBe(2)
    expect(run.stderr).toMatch(/^narrace: .*\n$/)
  })
})
