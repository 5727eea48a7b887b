import { NarBackendError, NarUnavailableError, parseNarHash, resolveNar } from '@narrace/core'
import { once } from 'node:events'
import { createServer, type Server, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { refusedPort } from '../../../test/support/cache-server.js'
import { fixtures } from '../../../test/fixtures/index.js'
import { httpBackend, resolveNarInfo, UpstreamHealth, type HttpBackend } from '../src/index.js'

const small = fixtures.path('small')

/** A TCP listener that counts connections and resets each one at once: a cache that is down. */
async function startResetter(): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  let count = 0
  const sockets = new Set<Socket>()
  const server: Server = createServer((socket) => {
    count++
    sockets.add(socket)
    socket.resetAndDestroy()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    port: (server.address() as { port: number }).port,
    connections: () => count,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}

describe('UpstreamHealth', () => {
  it('goes down after 3 connection failures in a row, probes once after a doubling backoff, and comes back up', () => {
    let now = 0
    const health = new UpstreamHealth('http://u/', { now: () => now })
    const changes: boolean[] = []
    health.on('change', (up) => changes.push(up))
    const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })
    for (let i = 0; i < 2; i++) health.admit()('connection-failed', refused)
    health.admit()('answered')
    expect(health.failures).toBe(0)
    for (let i = 0; i < 3; i++) health.admit()('connection-failed', refused)
    expect(health.isUp()).toBe(false)
    expect(changes).toEqual([false])
    expect(() => health.admit()).toThrow(NarBackendError)
    expect(() => health.admit()).toThrow(/skipped after 3 connection failures in a row; next try in 1 s/)

    now = 1000
    const probe = health.admit()
    expect(health.state).toBe('probing')
    expect(() => health.admit()).toThrow(/a probe is under way/)
    probe('connection-failed', refused)
    expect(health.retryAt).toBe(3000)
    now = 2999
    expect(() => health.admit()).toThrow(/next try in 1 s/)
    now = 3000
    health.admit()('connection-failed', refused)
    expect(health.retryAt).toBe(7000)
    // An aborted probe gives no verdict: the next request probes at once.
    now = 7000
    health.admit()('none')
    expect(health.state).toBe('down')
    health.admit()('answered')
    expect(health.isUp()).toBe(true)
    expect(changes).toEqual([false, true])

    for (let i = 0; i < 3; i++) health.admit()('connection-failed', refused)
    for (let i = 0; i < 10; i++) {
      now = health.retryAt
      health.admit()('connection-failed', refused)
    }
    expect(health.retryAt - now).toBe(60_000)
  })
})

describe('a dead upstream', () => {
  const backends: HttpBackend[] = []
  afterEach(async () => {
    await Promise.all(backends.splice(0).map((b) => b.close()))
  })

  it('costs no connection once it is down, fails fast as unavailable, and resolveNarInfo shares the breaker', async () => {
    const dead = await startResetter()
    try {
      const url = `http://127.0.0.1:${dead.port}/`
      const http = httpBackend({ url })
      backends.push(http)
      const changes: boolean[] = []
      http.health.on('change', (up) => changes.push(up))
      for (let i = 0; i < 3; i++) {
        await expect(resolveNar(small.fileHash, { backends: [http] })).rejects.toBeInstanceOf(NarUnavailableError)
      }
      const seen = dead.connections()
      expect(seen).toBeGreaterThanOrEqual(3)
      expect(http.health.isUp()).toBe(false)
      expect(changes).toEqual([false])
      for (let i = 0; i < 20; i++) {
        const error = await resolveNar(small.fileHash, { backends: [http] }).catch((e: unknown) => e)
        expect(error).toBeInstanceOf(NarUnavailableError)
        expect(((error as NarUnavailableError).errors[0] as Error).message).toMatch(/skipped/)
      }
      const narinfo = await resolveNarInfo(small.hashPart, { caches: [url] }).catch((e: unknown) => e)
      expect(narinfo).toBeInstanceOf(NarUnavailableError)
      expect((narinfo as Error).message).toMatch(/skipped/)
      expect(dead.connections()).toBe(seen)
    } finally {
      await dead.close()
    }
  })

  it('answers a refused connection as unavailable, never as not found, for NARs and narinfo', async () => {
    const url = `http://127.0.0.1:${await refusedPort()}/`
    const http = httpBackend({ url })
    backends.push(http)
    await expect(http.fetch(parseNarHash(small.fileHash), { signal: new AbortController().signal })).rejects.toBeInstanceOf(NarBackendError)
    await expect(resolveNar(small.fileHash, { backends: [http] })).rejects.toBeInstanceOf(NarUnavailableError)
    await expect(resolveNarInfo(small.hashPart, { caches: [url] })).rejects.toBeInstanceOf(NarUnavailableError)
  })
})
