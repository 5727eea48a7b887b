/**
 * Real Nix accepts narinfo signed by signNarInfo, and refuses it once tampered with. Needs `nix` on PATH
 * (Debian's nix-bin is enough: it runs daemonless against a store in a temp dir).
 */
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { formatNarInfo, parseNarInfo, signNarInfo, verifyNarInfo, type NarInfo } from '@narrace/narinfo'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'
import { nixAvailable, nixSandbox, type NixSandbox } from './support/nix.js'

if (!nixAvailable) console.warn('nix-narinfo.test.ts: skipped, `nix` is not on PATH (install Debian nix-bin to run it)')

describe.skipIf(!nixAvailable)('narinfo signed by signNarInfo, checked by real Nix', () => {
  let nix: NixSandbox
  let dir: string
  let secretKey: string
  let publicKey: string

  beforeAll(async () => {
    nix = await nixSandbox()
    dir = nix.dir
    const keyFiles = [join(dir, 'secret.key'), join(dir, 'public.key')]
    const keys = await nix.run('nix-store', ['--generate-binary-cache-key', 'narrace-nix-test-1', ...keyFiles])
    expect(keys.code, keys.stderr).toBe(0)
    secretKey = readFileSync(join(dir, 'secret.key'), 'utf8').trim()
    publicKey = readFileSync(join(dir, 'public.key'), 'utf8').trim()
  })

  afterAll(async () => {
    await nix?.close()
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
    const store = nix.store()
    const copy = await nix.copyFrom(`file://${cache}`, store, [storePath], trustedKey, { 'require-sigs': 'true' })
    return { ok: copy.code === 0, stderr: copy.stderr, store }
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
      expect((await nix.run('nix-store', ['--store', store, '--verify-path', storePath])).code).toBe(0)
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
    expect((await nix.run('nix-store', ['--store', store, '--verify-path', self.storePath])).code).toBe(0)
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
