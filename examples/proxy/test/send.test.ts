import { getEventListeners, once } from 'node:events'
import { createServer, get, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { NarraceError, TurnPacer } from '@narrace/core'
import { describe, expect, it } from 'vitest'
import { BodyOverrunError, ClientStallError, sendBody, type SendProgress } from '../src/send.js'

/** An HTTP server on 127.0.0.1 that answers with `handler`; `close()` cuts its connections and stops it. */
async function listen(handler: (res: ServerResponse) => void): Promise<{ port: number; close(): void }> {
  const server = createServer((_req, res) => handler(res))
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    port: (server.address() as AddressInfo).port,
    close() {
      server.closeAllConnections()
      server.close()
    },
  }
}

/** Serves one response through sendBody and GETs it; resolves with what the client and the server saw. */
async function serveOnce(
  headers: Record<string, string>,
  body: () => AsyncIterable<Uint8Array>,
): Promise<{ received: Buffer; complete: boolean; sent: Promise<void> }> {
  let sent!: Promise<void>
  const server = await listen((res) => {
    sent = sendBody(res, headers, body(), new TurnPacer(1024 * 1024), new AbortController().signal)
    // As the NAR route does: a failed body cuts the connection.
    sent.catch(() => res.destroy())
  })
  try {
    const req = get(`http://127.0.0.1:${server.port}/`)
    const res = await new Promise<IncomingMessage | undefined>((resolve) => {
      req.once('response', resolve)
      // Cut before the status arrived.
      req.once('error', () => resolve(undefined))
    })
    if (!res) return { received: Buffer.alloc(0), complete: false, sent }
    const parts: Buffer[] = []
    try {
      for await (const part of res) parts.push(part as Buffer)
    } catch {
      // A cut connection: what arrived before it is what the client has.
    }
    return { received: Buffer.concat(parts), complete: res.complete, sent }
  } finally {
    server.close()
  }
}

describe('sendBody', () => {
  it('ends the response once content-length bytes are out, without waiting for the body to end', { timeout: 10_000 }, async () => {
    const bytes = Buffer.alloc(200 * 1024, 7)
    let returned = false
    // All the bytes, then a body that would never end by itself.
    const body = async function* (): AsyncGenerator<Uint8Array> {
      try {
        yield bytes.subarray(0, 100_000)
        yield bytes.subarray(100_000)
        await new Promise(() => {})
      } finally {
        returned = true
      }
    }
    const { received, complete, sent } = await serveOnce({ 'content-length': String(bytes.length) }, body)
    expect(complete).toBe(true)
    expect(received.equals(bytes)).toBe(true)
    await sent
    expect(returned).toBe(true)
  })

  it('never sends more than content-length: a longer body is cut, not ended', async () => {
    const bytes = Buffer.alloc(100 * 1024, 5)
    const body = async function* (): AsyncGenerator<Uint8Array> {
      yield bytes.subarray(0, 60 * 1024)
      // Lets the status and the first bytes reach the client before the cut (it holds either way).
      await new Promise((resolve) => setTimeout(resolve, 50))
      yield bytes.subarray(60 * 1024)
    }
    const { received, complete, sent } = await serveOnce({ 'content-length': String(80 * 1024) }, body)
    expect(complete).toBe(false)
    expect(received.length).toBeLessThanOrEqual(60 * 1024)
    await expect(sent).rejects.toBeInstanceOf(BodyOverrunError)
  })

  it('without a content-length, sends until the body ends', async () => {
    const bytes = Buffer.alloc(150 * 1024, 3)
    const body = async function* (): AsyncGenerator<Uint8Array> {
      yield bytes
    }
    const { received, complete, sent } = await serveOnce({}, body)
    expect(complete).toBe(true)
    expect(received.equals(bytes)).toBe(true)
    await sent
  })

  it('waits for a client that stops reading, counts what it wrote, and on abort rejects and leaves no listener behind', { timeout: 10_000 }, async () => {
    const bytes = Buffer.alloc(32 * 1024 * 1024, 9)
    const controller = new AbortController()
    const progress: SendProgress = { bytes: 0 }
    let response!: ServerResponse
    let sent!: Promise<void>
    let drainBefore = 0
    let errorBefore = 0
    const server = await listen((res) => {
      response = res
      drainBefore = res.listenerCount('drain')
      errorBefore = res.listenerCount('error')
      const body = async function* (): AsyncGenerator<Uint8Array> {
        yield bytes
      }
      sent = sendBody(res, { 'content-length': String(bytes.length) }, body(), new TurnPacer(1024 * 1024), controller.signal, { progress })
      sent.catch(() => {})
    })
    // A client that asks and then never reads: the kernel's buffers fill and the sender must wait.
    const client = connect(server.port, '127.0.0.1')
    client.pause()
    client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n')
    try {
      let last = -1
      while (progress.bytes === 0 || progress.bytes !== last) {
        last = progress.bytes
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      // Stuck on a drain that does not come, part of the way in, and it said how far it got.
      expect(progress.bytes).toBeGreaterThan(0)
      expect(progress.bytes).toBeLessThan(bytes.length)
      expect(progress.bytes % (64 * 1024)).toBe(0)
      controller.abort(new Error('the client is too slow'))
      await expect(sent).rejects.toThrow('the client is too slow')
      expect(response.listenerCount('drain')).toBe(drainBefore)
      expect(response.listenerCount('error')).toBe(errorBefore)
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
    } finally {
      client.destroy()
      server.close()
    }
  })

  it('cuts a client that takes nothing for the client timeout, and not one that rests for less than it', async () => {
    const bytes = Buffer.alloc(32 * 1024 * 1024, 9)
    const sent: Promise<void>[] = []
    let started = 0
    const server = await listen((res) => {
      started = performance.now()
      const body = async function* (): AsyncGenerator<Uint8Array> {
        yield bytes
      }
      const one = sendBody(res, { 'content-length': String(bytes.length) }, body(), new TurnPacer(1024 * 1024), new AbortController().signal, {
        clientTimeoutMs: 1000,
      })
      one.catch(() => res.destroy())
      sent.push(one)
    })
    const stalled = connect(server.port, '127.0.0.1')
    try {
      stalled.pause()
      stalled.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n')
      await expect.poll(() => sent.length).toBe(1)
      const error = await sent[0]!.catch((e: unknown) => e)
      expect(error).toBeInstanceOf(ClientStallError)
      expect(error).toBeInstanceOf(NarraceError)
      expect(error).toMatchObject({ name: 'ClientStallError', code: 'NARRACE_CLIENT_STALL' })
      // One timeout after the kernel's buffers filled, not the 60 s default nor never.
      expect(performance.now() - started).toBeLessThan(6000)
    } finally {
      stalled.destroy()
    }
    // A client that reads for 100 ms, then rests for 300 ms, over and over, gets the whole body.
    const patient = connect(server.port, '127.0.0.1')
    let timer: NodeJS.Timeout | undefined
    try {
      let received = 0
      patient.on('data', (chunk: Buffer) => (received += chunk.length))
      const cycle = (): void => {
        patient.pause()
        timer = setTimeout(() => {
          patient.resume()
          timer = setTimeout(cycle, 100)
        }, 300)
      }
      patient.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
      cycle()
      await expect.poll(() => sent.length).toBe(2)
      await sent[1]
      await once(patient, 'end')
      expect(received).toBeGreaterThan(bytes.length)
    } finally {
      clearTimeout(timer)
      patient.destroy()
      server.close()
    }
  }, 30_000)

  it('fails with an error the response had while nothing waited for a drain, instead of ending it as complete', async () => {
    let response!: ServerResponse
    let sent!: Promise<void>
    let second!: () => void
    const secondAsked = new Promise<void>((resolve) => (second = resolve))
    const server = await listen((res) => {
      response = res
      const body = async function* (): AsyncGenerator<Uint8Array> {
        yield Buffer.alloc(10 * 1024, 1)
        await secondAsked
        yield Buffer.alloc(10 * 1024, 2)
      }
      sent = sendBody(res, { 'content-length': String(20 * 1024) }, body(), new TurnPacer(1024 * 1024), new AbortController().signal)
      sent.catch(() => res.destroy())
    })
    try {
      const req = get(`http://127.0.0.1:${server.port}/`)
      req.on('error', () => {})
      const res = (await once(req, 'response'))[0] as IncomingMessage
      res.on('error', () => {})
      res.resume()
      // The first 10 KiB went out without a wait; the error comes while the body is still being read.
      response.emit('error', new Error('the response broke'))
      second()
      await expect(sent).rejects.toThrow('the response broke')
      // Cut, never ended: the client's copy is short.
      await new Promise((resolve) => res.once('close', resolve))
      expect(res.complete).toBe(false)
    } finally {
      server.close()
    }
  })
})
