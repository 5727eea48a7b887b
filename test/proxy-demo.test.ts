/** `pnpm demo` end to end: the built demo must verify every NAR and finish on its own. */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'

const main = fileURLToPath(new URL('../examples/demo/dist/main.js', import.meta.url))
const built = existsSync(main)
if (!built) console.warn('test/proxy-demo.test.ts: skipped, examples/demo is not built (run `pnpm build`)')

describe.skipIf(!built)('the demo', () => {
  it('fetches every fixture NAR through the proxy, verified, and exits 0', async () => {
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [main], { timeout: 55_000 }, (error, stdout, stderr) =>
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout, stderr }),
      )
    })
    expect(code, `${stdout}\n${stderr}`).toBe(0)
    const total = fixtures.paths.length
    expect(stdout).toContain(`${total} of ${total} NARs verified`)
    expect(stdout).toMatch(/wins: .*ipfs \d+/)
    expect(stdout).toMatch(/wins: .*torrent \d+/)
    for (const path of fixtures.paths) expect(stdout).toMatch(new RegExp(`^${path.name} .* yes$`, 'm'))
  })
})
