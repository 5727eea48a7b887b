import { parseNarHash } from '@narrace/core'
import { compressionExtension, parseNarInfo, rewriteNarInfo, verifyNarInfo } from '@narrace/narinfo'
import { createHash } from 'node:crypto'
import { createServer, type ServerResponse } from 'node:http'
import { Socket, type AddressInfo } from 'node:net'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createProxy } from '../examples/proxy/src/index.js'
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

describe('the proxy over a compressed file without FileHash', () => {
  it('prefers an upstream whose narinfo names a verifiable file, whichever answers first', async () => {
    const small = fixtures.path('small')
    const bare = await startShapeServer({ shape: 'nix-xz', only: ['small'] })
    const named = await startShapeServer({ shape: 'nix-zstd', only: ['small'] })
    const text = fixtures.narinfoText('small').replace(/^FileHash: .*\n/m, '')
    bare.setFile(`${small.hashPart}.narinfo`, { body: Buffer.from(text), type: 'text/x-nix-narinfo' })
    const proxies = [bare.url, named.url].map((first, i) =>
      createProxy({ logger: pino({ level: 'silent' }), upstreams: i === 0 ? [first, named.url] : [first, bare.url], trustedPublicKeys: trusted }),
    )
    try {
      for (const proxy of proxies) {
        await proxy.listen()
        const served = (await get(`${proxy.url}/${small.hashPart}.narinfo`)).body.toString()
        expect(served).toMatch(/^Compression: zstd$/m)
        expect(served).toMatch(/^URL: nar\/[0-9a-z]{52}\.nar\.zst$/m)
      }
      // Alone, the bare one is served under its hash part, to be passed through unverified.
      const alone = createProxy({ logger: pino({ level: 'silent' }), upstreams: [bare.url], trustedPublicKeys: trusted })
      proxies.push(alone)
      await alone.listen()
      const served = (await get(`${alone.url}/${small.hashPart}.narinfo`)).body.toString()
      expect(served).toBe(text.replace(/^URL: .*$/m, `URL: nar/${small.hashPart}.nar.xz`))
      const nar = await get(`${alone.url}/nar/${small.hashPart}.nar.xz`)
      expect(nar.status).toBe(200)
      expect(createHash('sha256').update(nar.body).digest('hex')).toBe(small.fileHashHex)
    } finally {
      await Promise.all(proxies.map((p) => p.close()))
      await Promise.all([bare.close(), named.close()])
    }
  })
})

describe('a client that reads nothing of an unverified NAR', () => {
  it('is cut after --client-timeout, and the upstream request with it', async () => {
    const hashPart = 'a'.repeat(32)
    const size = 64 * 1024 * 1024
    // No FileHash: the file can't be verified, so it passes through, bounded by its NarSize.
    const narinfo = [
      `StorePath: /nix/store/${hashPart}-big`,
      `URL: nar/${hashPart}.nar.xz`,
      'Compression: xz',
      `NarHash: sha256:${'0'.repeat(52)}`,
      `NarSize: ${size}`,
      'References: ',
      '',
    ].join('\n')
    const open = new Set<ServerResponse>()
    const upstream = createServer((req, res) => {
      if (req.url === '/nix-cache-info') return res.end('StoreDir: /nix/store\n')
      if (req.url === `/${hashPart}.narinfo`) return res.end(narinfo)
      if (req.url !== `/nar/${hashPart}.nar.xz`) return res.writeHead(404).end()
      open.add(res)
      res.once('close', () => open.delete(res))
      res.writeHead(200, { 'content-length': String(size) })
      res.end(Buffer.alloc(size, 3))
    })
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve))
    const proxy = createProxy({
      logger: pino({ level: 'silent' }),
      upstreams: [`http://127.0.0.1:${(upstream.address() as AddressInfo).port}/`],
      clientTimeoutMs: 500,
    })
    const client = new Socket()
    try {
      await proxy.listen()
      expect((await get(`${proxy.url}/${hashPart}.narinfo`)).status).toBe(200)
      client.connect(Number(new URL(proxy.url).port), '127.0.0.1')
      client.pause()
      client.write(`GET /nar/${hashPart}.nar.xz HTTP/1.1\r\nHost: x\r\n\r\n`)
      await expect.poll(() => open.size).toBe(1)
      await expect.poll(() => open.size, { timeout: 8000 }).toBe(0)
      const metrics = (await get(`${proxy.url}/metrics`)).body.toString()
      expect(metrics).toMatch(/narrace_nar_requests_total\{outcome="aborted"\} 1/)
    } finally {
      client.destroy()
      await proxy.close()
      upstream.closeAllConnections()
      await new Promise((resolve) => upstream.close(resolve))
    }
  })
})

describe('credentials of a private upstream', () => {
  it('go with every request to it, and never with a redirect to another origin', async () => {
    const token = 'Bearer t0k3n'
    const small = fixtures.path('small')
    const locked = await startShapeServer({ shape: 'cachix', only: ['small'], authorization: token })
    const elsewhere = await startShapeServer({})
    const narinfo = parseNarInfo(Buffer.from(locked.file(`${small.hashPart}.narinfo`)!.body).toString())
    elsewhere.setFile('moved.nar.zst', locked.file(narinfo.url)!)
    locked.setFile(narinfo.url, { body: Buffer.alloc(0), type: 'text/plain', status: 302, headers: { location: `${elsewhere.url}moved.nar.zst` } })
    const proxy = createProxy({
      logger: pino({ level: 'silent' }),
      upstreams: [{ url: locked.url, headers: { authorization: token } }],
      trustedPublicKeys: trusted,
    })
    try {
      await proxy.listen()
      const served = parseNarInfo((await get(`${proxy.url}/${small.hashPart}.narinfo`)).body.toString())
      // Whether the redirect is followed or refused, the token stays with its own origin.
      await get(`${proxy.url}/${served.url}`)
      // Build logs and the other passthrough files go through the same credentials.
      const drv = `${small.hashPart}-small.drv`
      locked.setFile(`log/${drv}`, { body: Buffer.from('a log\n'), type: 'text/plain' })
      const log = await get(`${proxy.url}/log/${drv}`)
      expect(log.status).toBe(200)
      expect(log.body.toString()).toBe('a log\n')
      expect(locked.requests.length).toBeGreaterThanOrEqual(4)
      expect(locked.requests.every((r) => r.headers.authorization === token)).toBe(true)
      expect(elsewhere.requests.filter((r) => r.headers.authorization !== undefined)).toEqual([])
    } finally {
      await proxy.close()
      await Promise.all([locked.close(), elsewhere.close()])
    }
  })
})
