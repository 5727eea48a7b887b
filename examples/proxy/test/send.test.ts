import { once } from 'node:events'
import { createServer, get, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { describe, expect, it } from 'vitest'
import { sendBody } from '../src/send.js'
import { TurnPacer } from '../src/turns.js'

/** Serves one response through sendBody and GETs it; resolves with what the client and the server saw. */
async function serveOnce(
  headers: Record<string, string>,
  body: () => AsyncIterable<Uint8Array>,
): Promise<{ received: Buffer; complete: boolean; sent: Promise<void> }> {
  let sent!: Promise<void>
  const server = createServer((_req, res: ServerResponse) => {
    sent = sendBody(res, headers, body(), new TurnPacer(1024 * 1024), new AbortController().signal)
    sent.catch(() => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  try {
    const { port } = server.address() as AddressInfo
    const [res] = (await once(get(`http://127.0.0.1:${port}/`), 'response')) as [import('node:http').IncomingMessage]
    const parts: Buffer[] = []
    for await (const part of res) parts.push(part as Buffer)
    return { received: Buffer.concat(parts), complete: res.complete, sent }
  } finally {
    server.closeAllConnections()
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
})
