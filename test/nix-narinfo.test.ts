/**
 * Real Nix accepts narinfo signed by signNarInfo, and refuses it once tampered with. Needs `nix` on PATH
 * (Debian's nix-bin is enough: it runs daemonless against a store in a temp dir).
 */
import { execFile, spawnSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { formatNarInfo, parseNarInfo, signNarInfo, verifyNarInfo, type NarInfo } from '@narrace/narinfo'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'

const run = promisify(execFile)
const hasNix = spawnSync('nix', ['--version'], { stdio: 'ignore' }).status === 0
if (!hasNix) console.warn('nix-narinfo.test.ts: skipped, `nix` is not on PATH (install Debian nix-bin to run it)')

describe.skipIf(!hasNix)('narinfo signed by signNarInfo, checked by real Nix', () => {
  let dir: string
  let env: NodeJS.ProcessEnv
  let secretKey: string
  let publicKey: string

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'narrace-nix-narinfo-'))
    env = {
      ...process.env,
      NIX_CONFIG: 'experimental-features = nix-command\nsandbox = false\nbuild-users-group =',
      NIX_REMOTE: '',
      // Nix caches narinfo lookups per cache URL under XDG_CACHE_HOME; a fresh one per run keeps runs apart.
      XDG_CACHE_HOME: join(dir, 'xdg-cache'),
      XDG_CONFIG_HOME: join(dir, 'xdg-config'),
      XDG_DATA_HOME: join(dir, 'xdg-data'),
    }
    const keyFiles = [join(dir, 'secret.key'), join(dir, 'public.key')]
    await run('nix-store', ['--generate-binary-cache-key', 'narrace-nix-test-1', ...keyFiles], { env, timeout: 30_000 })
    secretKey = readFileSync(join(dir, 'secret.key'), 'utf8').trim()
    publicKey = readFileSync(join(dir, 'public.key'), 'utf8').trim()
  })

  afterAll(() => {
    // Nix makes store paths read-only; rmSync with force still removes them as their owner.
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  /**
   * A file:// cache holding the named fixtures as `edit` rewrites them. The CA line is dropped: Nix takes a
   * content-addressed path without any signature, and these tests are about signatures.
   */
  function makeCache(name: string, paths: string[], edit: (info: NarInfo) => NarInfo): string {
    const cache = join(dir, name)
    mkdirSync(join(cache, 'nar'), { recursive: true })
    copyFileSync(join(fixtures.cacheDir, 'nix-cache-info'), join(cache, 'nix-cache-info'))
    for (const path of paths) {
      const { hashPart, url } = fixtures.path(path)
      copyFileSync(fixtures.narPath(path), join(cache, url))
      const info = edit({ ...parseNarInfo(fixtures.narinfoText(path)), ca: undefined })
      writeFileSync(join(cache, `${hashPart}.narinfo`), formatNarInfo(info))
    }
    return cache
  }

  /** Runs `nix copy --from file://cache` into a fresh store trusting one key: by default the one from beforeAll. */
  async function nixCopy(
    cache: string,
    storePath: string,
    trustedKey = publicKey,
  ): Promise<{ ok: boolean; stderr: string; store: string }> {
    const store = join(dir, `store-${cache.split('/').pop()}`)
    const args = ['copy', '--store', store, '--from', `file://${cache}`, '--option', 'trusted-public-keys', trustedKey]
    args.push('--option', 'require-sigs', 'true', '--option', 'substituters', '', storePath)
    try {
      const { stderr } = await run('nix', args, { env, timeout: 60_000 })
      return { ok: true, stderr, store }
    } catch (error) {
      return { ok: false, stderr: String((error as { stderr?: string }).stderr ?? error), store }
    }
  }

  const diamond = ['diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom']
  const resign = (info: NarInfo): NarInfo => signNarInfo({ ...info, sigs: [] }, secretKey)

  it('accepts a closure signed only by signNarInfo, and the paths verify', async () => {
    const cache = makeCache('signed', diamond, resign)
    const top = fixtures.path('diamond-top').storePath
    const { ok, stderr, store } = await nixCopy(cache, top)
    expect(stderr).not.toMatch(/error/)
    expect(ok).toBe(true)
    for (const name of diamond) {
      const { storePath } = fixtures.path(name)
      expect(existsSync(join(store, storePath))).toBe(true)
      await run('nix-store', ['--store', store, '--verify-path', storePath], { env, timeout: 30_000 })
    }
  })

  it('accepts a narinfo and NAR made entirely by narrace, with a self-reference and no CA', async () => {
    const self = fixtures.cycle.paths.find((p) => p.name === 'cycle-self')!
    // Nix adds log/ and realisations/ to a file:// cache it reads from: give it a copy.
    const cache = join(dir, 'cycle')
    cpSync(fixtures.cycle.cacheDir, cache, { recursive: true })
    const { ok, stderr, store } = await nixCopy(cache, self.storePath, fixtures.publicKey)
    expect(stderr).not.toMatch(/error/)
    expect(ok).toBe(true)
    await run('nix-store', ['--store', store, '--verify-path', self.storePath], { env, timeout: 30_000 })
  })

  it('refuses a signed narinfo whose NarHash was changed afterwards', async () => {
    const otherNarHash = fixtures.path('200k').narHash
    const cache = makeCache('tampered', ['small'], (info) => ({ ...resign(info), narHash: otherNarHash }))
    const tampered = parseNarInfo(readFileSync(join(cache, `${fixtures.path('small').hashPart}.narinfo`), 'utf8'))
    expect(verifyNarInfo(tampered, [publicKey]).valid).toBe(false)

    const { ok, stderr, store } = await nixCopy(cache, fixtures.path('small').storePath)
    expect(ok).toBe(false)
    expect(stderr).toMatch(/signature/)
    expect(existsSync(join(store, fixtures.path('small').storePath))).toBe(false)
  })

  it('refuses a narinfo signed by a key it does not trust', async () => {
    const cache = makeCache('untrusted', ['small'], (info) => info) // signed by the fixture key, untrusted here
    const { ok, stderr } = await nixCopy(cache, fixtures.path('small').storePath)
    expect(ok).toBe(false)
    expect(stderr).toMatch(/signature/)
  })
})
