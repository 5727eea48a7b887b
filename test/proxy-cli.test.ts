/** The built proxy command, `node examples/proxy/dist/main.js`, as a user runs it. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openIndex } from '@narrace/index'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { get } from '../examples/proxy/test/support/client.js'
import { fixtures } from './fixtures/index.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'

const main = fileURLToPath(new URL('../examples/proxy/dist/main.js', import.meta.url))
const built = existsSync(main)
if (!built) console.warn('test/proxy-cli.test.ts: skipped, examples/proxy is not built (run `pnpm build`)')

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [main, ...args], { encoding: 'utf8', timeout: 20_000 })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

/** Starts the proxy and waits for the line that gives its address. */
async function startProxy(args: string[]): Promise<{ child: ChildProcess; url: string; stop(): Promise<number | null> }> {
  const child = spawn(process.execPath, [main, '--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no address within 20 s:\n${output}`)), 20_000)
    const onData = (data: Buffer): void => {
      output += data.toString()
      const match = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)
      if (match) {
        clearTimeout(timer)
        resolve(match[1]!)
      }
    }
    child.stdout!.on('data', onData)
    child.stderr!.on('data', onData)
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`the proxy exited with ${code}:\n${output}`))
    })
  })
  return {
    child,
    url,
    async stop() {
      child.removeAllListeners('exit')
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      const [code] = (await exited) as [number | null]
      return code
    },
  }
}

describe.skipIf(!built)('the proxy command', () => {
  let upstream: CacheServer
  beforeAll(async () => {
    upstream = await startCacheServer({ root: fixtures.cacheDir })
  })
  afterAll(async () => {
    await upstream?.close()
  })

  it('lists every flag with --help', () => {
    const { status, stdout } = run(['--help'])
    expect(status).toBe(0)
    for (const flag of ['--listen', '--upstream', '--trusted-public-key', '--index', '--ipfs-api', '--torrent', '--announce', '--verify-first-below', '--priority', '--help']) {
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
      expect(index.get(small.fileHash)).toMatchObject({ size: small.fileSize, url: small.url })
    } finally {
      index.close()
      await rm(dir, { recursive: true, force: true })
    }
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
