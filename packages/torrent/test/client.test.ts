import { describe, expect, it } from 'vitest'
import { buildMagnet, createClient, isUsableTracker, parseMagnet } from '../src/client.js'

const HEX = '0123456789abcdef0123456789abcdef01234567'

describe('parseMagnet', () => {
  it('reads a hex infohash and keeps only HTTP(S) and UDP trackers', () => {
    const magnet =
      `magnet:?xt=urn:btih:${HEX.toUpperCase()}&dn=x.nar.xz` +
      '&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce&tr=udp%3A%2F%2F127.0.0.1%3A2&tr=wss%3A%2F%2Ftracker.example' +
      '&ws=http%3A%2F%2Fseed.example%2Fx&xs=http%3A%2F%2Fsource.example%2Fx.torrent'
    expect(parseMagnet(magnet)).toEqual({
      infoHash: HEX,
      trackers: ['http://127.0.0.1:1/announce', 'udp://127.0.0.1:2'],
    })
  })

  it('reads a base32 infohash', () => {
    const base32 = 'AERUKZ4JVPG66AJDIVTYTK6N54ASGRLH'
    expect(parseMagnet(`magnet:?xt=urn:btih:${base32}`).infoHash).toBe(HEX)
  })

  it('has no infohash for a link without a v1 xt', () => {
    expect(parseMagnet('magnet:?dn=nothing').infoHash).toBeUndefined()
    expect(parseMagnet('not a magnet').infoHash).toBeUndefined()
  })
})

describe('buildMagnet', () => {
  it('writes the infohash, the name and each tracker once, and nothing else', () => {
    const magnet = buildMagnet(HEX, 'x.nar.xz', ['http://127.0.0.1:1/announce', 'http://127.0.0.1:1/announce'])
    expect(magnet).toBe(`magnet:?xt=urn:btih:${HEX}&dn=x.nar.xz&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce`)
    expect(parseMagnet(magnet)).toEqual({ infoHash: HEX, trackers: ['http://127.0.0.1:1/announce'] })
  })
})

describe('isUsableTracker', () => {
  it('accepts http, https and udp, and rejects WebSocket trackers and junk', () => {
    expect(['http://a/announce', 'https://a/announce', 'udp://a:1'].map(isUsableTracker)).toEqual([true, true, true])
    expect(['ws://a', 'wss://a', 'not a url', ''].map(isUsableTracker)).toEqual([false, false, false, false])
  })
})

describe('createClient', () => {
  it('offers protocol encryption only when asked', async () => {
    const client = createClient({ encrypt: true }) as unknown as { secure: number; destroy(cb: () => void): void }
    expect(client.secure).toBe(1)
    await new Promise<void>((resolve) => client.destroy(resolve))
  })

  it('turns off DHT, LSD, uTP, web seeds and NAT port mapping', async () => {
    const client = createClient() as unknown as Record<string, unknown> & { destroy(cb: () => void): void }
    try {
      expect(client.dht).toBe(false)
      expect(client.lsd).toBe(false)
      expect(client.utp).toBe(false)
      expect(client.enableWebSeeds).toBe(false)
      expect(client.natUpnp).toBe(false)
      expect(client.natPmp).toBe(false)
      expect(client.natTraversal).toBeUndefined()
      expect(client.secure).toBe(0)
    } finally {
      await new Promise<void>((resolve) => client.destroy(resolve))
    }
  })
})
