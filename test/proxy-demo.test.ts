/** `pnpm demo` end to end: the built demo must verify every NAR, finish on its own, and clean up after itself. */
import { execFile, spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'

const main = fileURLToPath(new URL('../examples/demo/dist/main.js', import.meta.url))
const built = existsSync(main)
if (!built) console.warn('test/proxy-demo.test.ts: skipped, examples/demo is not built (run `pnpm build`)')
const nixOnPath = spawnSync('nix', ['--version'], { stdio: 'ignore' }).status === 0

describe.skipIf(!built)('the demo', () => {
  // A temporary folder of the demo's own, so that what it leaves behind can be told apart from others' files.
  let tmp: string
  beforeEach(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'narrace-demo-test-'))
  })
  afterEach(async () => {
    await rm(tmp, { recursive: true, force: true })
  })

  it('fetches every fixture NAR through the proxy, verified, and exits 0', async () => {
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [main], { timeout: 55_000, env: { ...process.env, TMPDIR: tmp } }, (error, stdout, stderr) =>
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout, stderr }),
      )
    })
    expect(code, `${stdout}\n${stderr}`).toBe(0)
    // With nix on PATH, the demo also fetches a NAR that Nix made on the spot, and runs `nix copy`.
    const total = fixtures.paths.length + (nixOnPath ? 1 : 0)
    expect(stdout).toContain(`${total} of ${total} NARs verified`)
    expect(stdout).toMatch(/^NAR +size +winner +first byte +MB\/s +verified$/m)
    expect(stdout).toMatch(/wins: .*ipfs \d+/)
    expect(stdout).toMatch(/wins: .*torrent \d+/)
    // The second pass comes from the proxy's store, and what entered the store was donated.
    expect(stdout).toContain(`${total} of ${total} NARs served from the store, verified`)
    for (const path of fixtures.paths) expect(stdout).toMatch(new RegExp(`^${path.name} .* store .* yes$`, 'm'))
    expect(stdout).toMatch(new RegExp(`^donated +${total} NARs`, 'm'))
    for (const path of fixtures.paths) expect(stdout).toMatch(new RegExp(`^${path.name} .* yes$`, 'm'))
    // Proxy B knows only the narinfo (the NAR files gone) and the first proxy's IPFS node as its DHT
    // bootstrap: every NAR comes from IPFS, found by FileHash; those over 1 MiB through a mapping from the DHT.
    expect(stdout).toContain('\nthird pass:')
    const third = stdout.slice(stdout.indexOf('\nthird pass:'))
    expect(third).toMatch(/^NAR +size +winner +found by +first byte +MB\/s +verified$/m)
    for (const path of fixtures.paths) {
      const foundBy = path.fileSize > 1024 * 1024 ? 'dht' : 'raw CID'
      expect(third).toMatch(new RegExp(`^${path.name} +\\S+ (KiB|MiB) +ipfs +${foundBy} .* yes$`, 'm'))
    }
    const large = fixtures.paths.filter((p) => p.fileSize > 1024 * 1024).length + (nixOnPath ? 1 : 0)
    expect(large).toBeGreaterThan(0)
    expect(third).toContain(`${total} of ${total} NARs served by proxy B from IPFS, verified: ${large} over 1 MiB by a mapping found in the DHT`)
    if (nixOnPath) {
      expect(stdout).toMatch(/^fresh-2m .* yes$/m)
      expect(third).toMatch(/^fresh-2m +\S+ MiB +ipfs +dht .* yes$/m)
      expect(stdout).toMatch(new RegExp(`^nix copy --from http://127\\.0\\.0\\.1:\\d+: ${total} store paths`, 'm'))
    } else {
      expect(stdout).toContain('skipped nix copy')
    }
    expect(await readdir(tmp)).toEqual([])
  })

  it('stops on Ctrl-C, cleaning up, with exit code 130', async () => {
    const child = spawn(process.execPath, [main], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } })
    const exited = once(child, 'exit')
    let stdout = ''
    let stderr = ''
    child.stderr.on('data', (data: Buffer) => (stderr += data.toString()))
    try {
      // Interrupt once everything is up, as a user would while the NARs are being fetched.
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (data: Buffer) => {
          stdout += data.toString()
          if (/^proxy /m.test(stdout)) resolve()
        })
        void exited.then(() => reject(new Error(`the demo exited early:\n${stdout}\n${stderr}`)), reject)
      })
      child.kill('SIGINT')
      const [code] = (await exited) as [number | null]
      expect(code, `${stdout}\n${stderr}`).toBe(130)
      expect(stderr).toContain('demo: interrupted')
      expect(await readdir(tmp)).toEqual([])
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    }
  })
})
