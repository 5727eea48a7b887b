import { parseNarHash } from '@narrace/core'
import { compressionExtension, parseNarInfo, rewriteNarInfo, verifyNarInfo } from '@narrace/narinfo'
import { createHash } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { get } from '../examples/proxy/test/support/client.js'
import { fixtures } from './fixtures/index.js'
import { CACHE_SHAPES, SHAPED_PATHS, shapedNarInfo } from './support/cache-shapes.js'
import { startShapeServer, type ShapeServer } from './support/shape-server.js'

const trusted = [fixtures.publicKey]
/** The lines of `text` that are not URL, FileHash or FileSize. */
const kept = (text: string): string[] => text.split('\n').filter((line) => !/^(URL|FileHash|FileSize): /.test(line))

describe('rewriteNarInfo over every cache shape', () => {
  it.each(CACHE_SHAPES)('%s: URL becomes nar/<FileHash>.nar<ext>, every other line byte for byte, and it verifies', (shape) => {
    for (const name of SHAPED_PATHS) {
      const text = shapedNarInfo(shape, name)
      const out = rewriteNarInfo(text)
      const info = parseNarInfo(text)
      const fileHash = parseNarHash(info.fileHash ?? info.narHash)
      expect(out.url).toBe(`nar/${fileHash.nix32}.nar${compressionExtension(info.compression)}`)
      expect(out.fileHash?.equals(fileHash)).toBe(true)
      expect(kept(out.text)).toEqual(kept(text))
      // Lines of the original that say FileHash and FileSize stay as they were (hex included).
      for (const line of text.split('\n').filter((l) => /^(FileHash|FileSize): /.test(l))) expect(out.text).toContain(`${line}\n`)
      const served = parseNarInfo(out.text)
      expect(served.url).toBe(out.url)
      expect(parseNarHash(served.fileHash!).equals(fileHash)).toBe(true)
      expect(served.fileSize).toBe(info.compression === 'none' ? info.narSize : info.fileSize)
      expect(verifyNarInfo(served, trusted)).toEqual({ valid: true, keyName: 'narrace-test-1' })
    }
  })
})

describe('the shape server', () => {
  const servers: ShapeServer[] = []
  beforeAll(async () => {
    for (const shape of CACHE_SHAPES) servers.push(await startShapeServer({ shape, prefix: '/cache/' }))
  })
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()))
  })

  it('serves each shape\'s files under the narinfo URL, query string included, and they hash to what it says', async () => {
    for (const [i, shape] of CACHE_SHAPES.entries()) {
      const server = servers[i]!
      const narinfo = await get(`${server.url}${fixtures.path('200k').hashPart}.narinfo`)
      expect(narinfo.status).toBe(200)
      const info = parseNarInfo(narinfo.body.toString())
      const nar = await get(new URL(info.url, server.url).href)
      expect(nar.status, `${shape} ${info.url}`).toBe(200)
      const expected = parseNarHash(info.fileHash ?? info.narHash)
      expect(createHash('sha256').update(nar.body).digest('hex')).toBe(expected.hex)
      const ranged = await get(new URL(info.url, server.url).href, { headers: { range: 'bytes=10-' } })
      expect(ranged.status).toBe(206)
      expect(ranged.body.equals(nar.body.subarray(10))).toBe(true)
    }
    expect(servers[CACHE_SHAPES.indexOf('harmonia')]!.targets.some((t) => /^nar\/\w{52}\.nar\?hash=\w{32}$/.test(t))).toBe(true)
    expect(servers[CACHE_SHAPES.indexOf('snix')]!.targets.some((t) => /^nar\/snix-castore\/[\w-]+\?narsize=\d+$/.test(t))).toBe(true)
  })
})
