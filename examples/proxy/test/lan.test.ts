import { describe, expect, it } from 'vitest'
import { peerUrl } from '../src/lan.js'

/** A service as an mDNS answer from `address` gives it. */
const service = (address: string, port: number, txt?: Record<string, unknown>) => ({
  port,
  txt,
  referer: { address, family: 'IPv4' as const, port: 5353, size: 100 },
})

describe('peerUrl: what a LAN answer may make the proxy dial', () => {
  it('is the address the answer came from, the SRV port and the TXT path', () => {
    expect(peerUrl(service('192.168.1.7', 8080, { path: '/' }))).toBe('http://192.168.1.7:8080')
    expect(peerUrl(service('10.0.0.2', 80))).toBe('http://10.0.0.2:80')
    expect(peerUrl(service('10.0.0.2', 8080, { path: '/cache/' }))).toBe('http://10.0.0.2:8080/cache')
    expect(peerUrl(service('10.0.0.2', 8080, { path: Buffer.from('/c') }))).toBe('http://10.0.0.2:8080/c')
  })
  it('never a loopback, wildcard, multicast or IPv6 sender', () => {
    for (const address of ['127.0.0.1', '127.9.9.9', '0.0.0.0', '224.0.0.251', '255.255.255.255', 'fe80::1', '::1']) {
      expect(peerUrl(service(address, 8080)), address).toBeUndefined()
    }
    expect(peerUrl({ port: 8080, txt: undefined, referer: undefined })).toBeUndefined()
  })
  it('never a port out of range or a path that is not a plain one', () => {
    for (const port of [0, 65536, -1, 1.5, Number.NaN]) expect(peerUrl(service('10.0.0.2', port)), String(port)).toBeUndefined()
    for (const path of ['cache', '/../admin', '/a?b', '/a#b', '//evil.example/x', '/%2e%2e', 'http://x/', 7, `/${'a'.repeat(300)}`]) {
      expect(peerUrl(service('10.0.0.2', 8080, { path })), String(path)).toBeUndefined()
    }
  })
})
