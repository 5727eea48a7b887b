/**
 * SIGTERM drains: downloads in flight finish within --shutdown-grace, then the proxy exits 0; and it exits
 * even when nobody reads its log.
 */
import { createHash, randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseNarHash } from '@narrace/core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { get } from '../examples/proxy/test/support/client.js'
import { startCacheServer, type CacheServer } from './support/cache-server.js'
import { built, main, startProxy } from './support/proxy-process.js'

if (!built) console.warn('test/proxy-shutdown.test.ts: skipped, examples/proxy is not built (run `pnpm build`)')

const FILES = 50
const FILE_BYTES = 256 * 1024

/** Waits, bounded, for `check` to hold. */
async function until(check: () => boolean, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; !check(); ) {
    if (Date.now() > end) throw new Error('condition not reached in time')
    await sleep(10)
  }
}

describe.skipIf(!built)('the proxy on SIGTERM', () => {
  let dir: string
  let upstream: CacheServer
  const files: { url: string; hex: string }[] = []

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narrace-shutdown-'))
    await mkdir(join(dir, 'nar'))
    await writeFile(join(dir, 'nix-cache-info'), 'StoreDir: /nix/store\n')
    for (let i = 0; i < FILES; i++) {
      const bytes = randomBytes(FILE_BYTES)
      const hex = createHash('sha256').update(bytes).digest('hex')
      const url = `nar/${parseNarHash(hex).nix32}.nar.xz`
      await writeFile(join(dir, url), bytes)
      files.push({ url, hex })
    }
    upstream = await startCacheServer({ root: dir })
  })
  afterAll(async () => {
    await upstream?.close()
    await rm(dir, { recursive: true, force: true })
  })

  it(`lets ${FILES} downloads in flight finish within the grace, then exits 0`, async () => {
    // Each file takes about 1.3 s at this rate: all are in flight when the signal comes.
    upstream.setFaults({ bytesPerSecond: 200_000 })
    const proxy = await startProxy(['--upstream', upstream.url, '--index', ':memory:', '--shutdown-grace', '10', '--verify-first-below', '0'])
    upstream.requests.length = 0
    const answers = files.map((file) => get(`${proxy.url}/${file.url}`))
    await until(() => upstream.requests.filter((r) => r.path.startsWith('/nar/')).length === FILES)
    const signalled = performance.now()
    const code = proxy.stop('SIGTERM')
    const results = await Promise.all(answers)
    expect(await code).toBe(0)
    expect(performance.now() - signalled).toBeLessThan(10_000)
    results.forEach((answer, i) => {
      expect(answer.status).toBe(200)
      expect(answer.error).toBeUndefined()
      expect(createHash('sha256').update(answer.body).digest('hex')).toBe(files[i]!.hex)
    })
  })

  it('aborts what is still running when the grace is over, and exits 0', async () => {
    // About 26 s a file: nothing can finish within one second of grace.
    upstream.setFaults({ bytesPerSecond: 10_000 })
    const proxy = await startProxy(['--upstream', upstream.url, '--index', ':memory:', '--shutdown-grace', '1', '--verify-first-below', '0'])
    upstream.requests.length = 0
    const answers = files.slice(0, 5).map((file) => get(`${proxy.url}/${file.url}`))
    await until(() => upstream.requests.filter((r) => r.path.startsWith('/nar/')).length === 5)
    const signalled = performance.now()
    expect(await proxy.stop('SIGTERM')).toBe(0)
    const elapsed = performance.now() - signalled
    expect(elapsed).toBeGreaterThanOrEqual(900)
    expect(elapsed).toBeLessThan(8_000)
    for (const answer of await Promise.all(answers)) expect(answer.error).toBeDefined()
  })

  it('exits within seconds when nobody reads its stdout, with log lines still waiting', async () => {
    // An upstream that refuses every connection: each narinfo is a 503 and a warning of about 3 KiB.
    const proxy = await startProxy(['--upstream', 'http://127.0.0.1:1', '--index', ':memory:'])
    try {
      // The reader stops: the pipe fills, and the lines after wait in the proxy.
      proxy.child.stdout!.pause()
      const hashPart = '0'.repeat(32)
      for (let i = 0; i < 30; i++) {
        const answers = await Promise.all(Array.from({ length: 20 }, () => get(`${proxy.url}/${hashPart}.narinfo`)))
        for (const answer of answers) expect(answer.status).toBe(503)
      }
      const signalled = performance.now()
      const code = await Promise.race([proxy.stop('SIGTERM'), sleep(15_000, 'still running', { ref: false })])
      expect(code).toBe(0)
      // Its log gets a bounded wait (2 s) at exit, not one as long as the reader's.
      expect(performance.now() - signalled).toBeLessThan(8_000)
    } finally {
      proxy.child.kill('SIGKILL')
      proxy.child.stdout!.resume()
    }
  })

  it('stops cleanly, exit 0, on a signal that comes while it listens but still warms up', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const child = spawn(process.execPath, [main, '--listen', '127.0.0.1:0', '--upstream', upstream.url, '--index', ':memory:'], {
        stdio: ['ignore', 'pipe', 'inherit'],
      })
      let out = ''
      child.stdout!.on('data', (data: Buffer) => (out += data.toString()))
      const exited = once(child, 'exit')
      try {
        // The signal goes as soon as the process has a listening socket: its warm-up takes 0.2 s or more.
        for (let i = 0; i < 2000 && !(await listening(child.pid!)); i++) await sleep(2)
        child.kill(signal)
        const [code] = (await exited) as [number | null]
        expect(code).toBe(0)
        expect(out).toMatch(/"msg":"narrace proxy stopped"/)
        // It never said it listens: the signal came during the warm-up.
        expect(out).not.toMatch(/listening on/)
      } finally {
        child.kill('SIGKILL')
      }
    }
  })
})

/** Whether process `pid` has a TCP socket listening: its descriptors' inodes against /proc/net/tcp. */
async function listening(pid: number): Promise<boolean> {
  const inodes = new Set<string>()
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [])) {
    const match = /^socket:\[(\d+)\]$/.exec(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''))
    if (match) inodes.add(match[1]!)
  }
  const table = await readFile(`/proc/${pid}/net/tcp`, 'utf8').catch(() => '')
  return table.split('\n').some((line) => {
    const fields = line.trim().split(/\s+/)
    return fields[3] === '0A' && inodes.has(fields[9]!)
  })
}
