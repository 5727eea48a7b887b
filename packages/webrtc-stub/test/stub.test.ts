import { readdirSync, realpathSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import webrtc, { RTCPeerConnection, WebRTCUnavailableError } from '../index.js'

const stub = fileURLToPath(new URL('..', import.meta.url))
const store = fileURLToPath(new URL('../../../node_modules/.pnpm', import.meta.url))

describe('webrtc-polyfill stand-in', () => {
  it('throws a clear error when a WebRTC class is constructed', () => {
    expect(() => new RTCPeerConnection()).toThrow(WebRTCUnavailableError)
    expect(() => new RTCPeerConnection()).toThrow(/TCP-only/)
    expect(() => new webrtc.RTCDataChannel()).toThrow(WebRTCUnavailableError)
  })

  it('is the webrtc-polyfill every installed simple-peer gets', () => {
    const peers = readdirSync(store).filter((name) => name.startsWith('@thaunknown+simple-peer@'))
    expect(peers.length).toBeGreaterThan(0)
    for (const peer of peers) {
      expect(realpathSync(join(store, peer, 'node_modules', 'webrtc-polyfill'))).toBe(realpathSync(stub))
    }
    expect(readdirSync(store).filter((name) => name.startsWith('webrtc-polyfill@'))).toEqual([])
  })
})
