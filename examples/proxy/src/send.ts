import { once } from 'node:events'
import type { ServerResponse } from 'node:http'
import { finished } from 'node:stream/promises'
import type { TurnPacer } from './turns.js'

/**
 * Bytes that every NAR response together hands to its sockets in one turn of the event loop.
 * @default 1 MiB
 */
export const DEFAULT_TURN_BYTES = 1024 * 1024

/** Largest piece handed to one socket at once, so that one client's turn is short. @default 64 KiB */
export const WRITE_SLICE_BYTES = 64 * 1024

/** A body went on past its Content-Length: the response is cut, never ended as complete. */
export class BodyOverrunError extends Error {
  override readonly name = 'BodyOverrunError' as const
  readonly code = 'NARRACE_BODY_OVERRUN' as const
}

/**
 * Sends the status and `headers`, then `body`, in slices of at most `WRITE_SLICE_BYTES`, each one paced
 * and each waiting for the socket to drain; ends the response and waits until it is out. With a
 * `content-length`, it ends as soon as that many bytes are written, without waiting a turn for the body's
 * own end nor a drain after the last slice: a client that has every byte closes at once, and a response
 * it closed before the proxy ended it counted as aborted. A client waits for its turn before it pulls the
 * next chunk, so that a waiting client holds no read buffer. Throws on abort, on the client's going away,
 * and with `body`'s own error (the caller then cuts the connection).
 */
export async function sendBody(
  res: ServerResponse,
  headers: Record<string, string>,
  body: AsyncIterable<Uint8Array>,
  pacer: TurnPacer,
  signal: AbortSignal,
): Promise<void> {
  const chunks = body[Symbol.asyncIterator]()
  const length = headers['content-length'] === undefined ? undefined : Number(headers['content-length'])
  let written = 0
  try {
    for (;;) {
      await pacer.take(WRITE_SLICE_BYTES)
      // The status too waits for the client's turn: hundreds of clients of one file start at once.
      if (!res.headersSent) {
        signal.throwIfAborted()
        res.writeHead(200, headers)
      }
      const next = await chunks.next()
      if (next.done) break
      const chunk = next.value
      // The core never yields past the size it verifies against; this keeps that promise here too.
      if (length !== undefined && written + chunk.byteLength > length) {
        throw new BodyOverrunError(`the body goes on past its content-length, ${length} bytes`)
      }
      for (let at = 0; at < chunk.byteLength; at += WRITE_SLICE_BYTES) {
        if (at > 0) await pacer.take(WRITE_SLICE_BYTES)
        signal.throwIfAborted()
        const end = Math.min(at + WRITE_SLICE_BYTES, chunk.byteLength)
        // After the last byte the response ends at once; its end waits for the socket, not a drain first.
        const last = length !== undefined && written + end >= length
        if (!res.write(chunk.subarray(at, end)) && !last) await once(res, 'drain', { signal })
      }
      written += chunk.byteLength
      if (length !== undefined && written >= length) break
    }
  } finally {
    await chunks.return?.()
  }
  res.end()
  await finished(res)
}
