import { once } from 'node:events'
import net from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { refusedPort, startBlackhole, startShaper, type Shaper } from '../src/shaper.js'

/** An echo-free source: each connection gets `size` bytes, then an end. */
async function source(size: number): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((socket) => {
    socket.on('error', () => {})
    socket.end(Buffer.alloc(size, 7))
  })
  server.listen({ host: '127.0.0.1', port: 0 })
  await once(server, 'listening')
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

/** Reads a connection until it ends or is cut. */
async function read(port: number): Promise<number> {
  const socket = net.connect({ host: '127.0.0.1', port })
  let bytes = 0
  socket.on('data', (chunk: Buffer) => (bytes += chunk.length))
  await new Promise<void>((resolve) => {
    socket.once('end', resolve)
    socket.once('error', () => resolve())
  })
  socket.destroy()
  return bytes
}

/**
 * Reads until `expected` bytes have arrived, then waits `quietMs` more: a stalled link sends nothing else
 * and does not end. Only a faulty shaper can change the outcome, never a slow machine.
 */
async function readStalled(port: number, expected: number, quietMs: number): Promise<{ bytes: number; ended: boolean }> {
  const socket = net.connect({ host: '127.0.0.1', port })
  let bytes = 0
  let ended = false
  socket.on('error', () => (ended = true))
  socket.on('end', () => (ended = true))
  await new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length
      if (bytes >= expected) resolve()
    })
  })
  await new Promise((resolve) => setTimeout(resolve, quietMs))
  socket.destroy()
  return { bytes, ended }
}

describe('shaper', () => {
  const SIZE = 256 * 1024
  let upstream: Awaited<ReturnType<typeof source>>
  const shapers: Shaper[] = []
  const shape = async (options: Partial<Parameters<typeof startShaper>[0]>): Promise<Shaper> => {
    const shaper = await startShaper({
      target: { host: '127.0.0.1', port: upstream.port },
      profile: { name: 'test', rttMs: 0, bytesPerSecond: Infinity },
      ...options,
    })
    shapers.push(shaper)
    return shaper
  }

  beforeAll(async () => {
    upstream = await source(SIZE)
  })
  afterAll(async () => {
    await Promise.all(shapers.map((s) => s.close()))
    await upstream.close()
  })

  it('relays every byte through a delayed, rate-limited link', async () => {
    const shaper = await shape({ profile: { name: 'slow', rttMs: 10, bytesPerSecond: 8 * 1024 * 1024 } })
    expect(await read(shaper.port)).toBe(SIZE)
    expect(shaper.bytesDown).toBe(SIZE)
    expect(shaper.connections).toBe(1)
  })

  it('stalls after the given byte count and keeps the connection open', async () => {
    const shaper = await shape({ stallAfterBytes: 1000 })
    expect(await readStalled(shaper.port, 1000, 200)).toEqual({ bytes: 1000, ended: false })
  })

  it('cuts the connection after the given byte count', async () => {
    const shaper = await shape({ cutAfterBytes: 5000 })
    expect(await read(shaper.port)).toBe(5000)
  })

  it('switches faults at run time, and refuses when told', async () => {
    const shaper = await shape({})
    shaper.setFaults({ refuse: true })
    const socket = net.connect({ host: '127.0.0.1', port: shaper.port })
    const [error] = (await once(socket, 'error')) as [NodeJS.ErrnoException]
    expect(error.code).toBe('ECONNRESET')
    socket.destroy()
  })

  it('a refused port refuses', async () => {
    const socket = net.connect({ host: '127.0.0.1', port: await refusedPort() })
    const [error] = (await once(socket, 'error')) as [NodeJS.ErrnoException]
    expect(error.code).toBe('ECONNREFUSED')
  })

  it('a blackhole never completes a connect', async () => {
    const hole = await startBlackhole()
    try {
      const socket = net.connect({ host: '127.0.0.1', port: hole.port })
      socket.on('error', () => {})
      let connected = false
      socket.once('connect', () => (connected = true))
      await new Promise((resolve) => setTimeout(resolve, 300))
      expect(connected).toBe(false)
      expect(socket.pending).toBe(true)
      socket.destroy()
    } finally {
      await hole.close()
    }
  })
})
