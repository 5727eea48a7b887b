import { NarBackendError, NarUnavailableError, parseNarHash, resolveNar } from '@narrace/core'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { refusedPort, startCacheServer } from '../../../test/support/cache-server.js'
import { fixtures } from '../../../test/fixtures/index.js'
import { httpBackend, resolveNarInfo, UpstreamHealth, type HttpBackend } from '../src/index.js'

const small = fixtures.path('small')

/**
 * A TCP listener that counts connections and resets each one: at once (a cache that is down), or once
 * the request comes (`afterRequest`: a tunnel or a load balancer whose backend is dead).
 */
async function startResetter(afterRequest = false): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  let count = 0
  const sockets = new Set<Socket>()
  const server: Server = createServer((socket) => {
    count++
    sockets.add(socket)
    if (afterRequest) socket.once('data', () => socket.destroy())
    else socket.resetAndDestroy()
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

/**
 * A listener in a process of its own that stops accepting (its only thread sleeps) with a full accept
 * queue: the kernel drops every further SYN, so a connect hangs until it times out, as to a cache whose
 * host drops packets.
 */
async function startBlackhole(): Promise<{ port: number; close(): void }> {
  const source = `
    const server = require('node:net').createServer()
    server.listen({ host: '127.0.0.1', port: 0, backlog: 1 }, () => {
      process.stdout.write(server.address().port + '\\n', () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0))
    })`
  const child = spawn(process.execPath, ['-e', source], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = (await once(child.stdout!, 'data')) as [Buffer]
  const port = Number(line.toString().trim())
  const held: Socket[] = []
  // Connections the kernel completes into the queue that nobody drains, until one hangs.
  for (let i = 0; i < 16; i++) {
    const socket = connect(port, '127.0.0.1')
    socket.on('error', () => {})
    held.push(socket)
    const connected = await Promise.race([once(socket, 'connect').then(() => true), new Promise((r) => setTimeout(r, 300, false))])
    if (!connected) break
  }
  return {
    port,
    close() {
      for (const socket of held) socket.destroy()
      child.kill('SIGKILL')
    },
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
    // An aborted probe gives no verdict: the next probe waits for the same backoff again, not doubled.
    now = 7000
    health.admit()('none')
    expect(health.state).toBe('down')
    expect(health.retryAt).toBe(11_000)
    expect(() => health.admit()).toThrow(/next try in 4 s/)
    now = 11_000
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

describe('UpstreamHealth and connection attempts', () => {
  const timeout = Object.assign(new Error('Connect Timeout Error'), { code: 'UND_ERR_CONNECT_TIMEOUT' })

  it('counts failed connects whatever became of their requests; only an answer brings a skipped upstream back', () => {
    let now = 0
    const health = new UpstreamHealth('http://u/', { now: () => now })
    for (let i = 0; i < 3; i++) health.connectFailed(timeout, false)
    expect(health.state).toBe('down')
    expect(health.retryAt).toBe(1000)
    // A connect begun before the upstream went down fails late: counted, but it is not a probe.
    health.connectFailed(timeout, false)
    expect(health.retryAt).toBe(1000)
    now = 1000
    // The probe loses the race and is aborted; its connect times out afterwards.
    health.admit()('none')
    expect(health.retryAt).toBe(2000)
    health.connectFailed(timeout, true)
    expect(health.retryAt).toBe(3000)
    now = 3000
    health.admit()('answered')
    expect(health.isUp()).toBe(true)
    expect(health.failures).toBe(0)
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

  it('goes down when its connects time out while another source keeps winning, and then costs no connection per NAR', async () => {
    const hole = await startBlackhole()
    const cache = await startCacheServer({ root: fixtures.cacheDir })
    try {
      const dead = httpBackend({ url: `http://127.0.0.1:${hole.port}/`, connectTimeoutMs: 200 })
      const good = httpBackend({ url: cache.url })
      backends.push(dead, good)
      // Every NAR is won by the cache that works, within milliseconds: the dead one's request is aborted
      // each time, long before its connect gives up (undici times connects out in ticks of about 0.5 s).
      for (let i = 0; i < 40 && dead.health.isUp(); i++) {
        const stream = await resolveNar(small.fileHash, { backends: [dead, good], size: small.fileSize, url: small.url })
        for await (const _ of stream);
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      expect(dead.health.isUp()).toBe(false)
      expect(dead.health.failures).toBeGreaterThanOrEqual(3)
      // Down: the next NARs never reach its pools, and say why it was skipped.
      const skipped = await dead.fetch(parseNarHash(small.fileHash), { signal: new AbortController().signal, url: small.url }).catch((e: unknown) => e)
      expect((skipped as Error).message).toMatch(/skipped after \d+ connection failures in a row/)
    } finally {
      hole.close()
      await cache.close()
    }
  })

  it('backs off, doubling, from a cache that accepts connections and hangs up: a connect that goes through proves nothing', async () => {
    const dead = await startResetter(true)
    try {
      let now = 0
      const url = `http://127.0.0.1:${dead.port}/`
      const health = new UpstreamHealth(url, { now: () => now })
      const http = httpBackend({ url, health })
      backends.push(http)
      for (let i = 0; i < 3; i++) await resolveNar(small.fileHash, { backends: [http] }).catch(() => {})
      expect(health.state).toBe('down')
      for (const backoff of [2000, 4000, 8000]) {
        now = health.retryAt
        await resolveNar(small.fileHash, { backends: [http] }).catch(() => {})
        expect(health.state).toBe('down')
        expect(health.retryAt - now).toBe(backoff)
      }
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
