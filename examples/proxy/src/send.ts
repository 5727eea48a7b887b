import { once } from 'node:events'
import type { ServerResponse } from 'node:http'
import { finished } from 'node:stream/promises'

/**
 * Bytes that every NAR response together hands to its sockets in one turn of the event loop.
 * @default 4 MiB
 */
export const DEFAULT_TURN_BYTES = 1024 * 1024

/** Largest piece handed to one socket at once, so that one client's turn is short. @default 64 KiB */
export const WRITE_SLICE_BYTES = 64 * 1024

/**
 * Shares the socket writes of all responses out among turns of the event loop. A write to a socket that
 * the kernel takes at once completes without leaving the current tick, so hundreds of fast readers
 * would otherwise keep one tick busy for seconds and starve everything else (accepts, `/nix-cache-info`,
 * narinfo). Past `turnBytes` in one turn, writers wait for the next turn, in the order they asked.
 */
export class WritePacer {
  private used = 0
  private readonly waiting: { bytes: number; go: () => void }[] = []
  private scheduled = false

  constructor(readonly turnBytes: number = DEFAULT_TURN_BYTES) {}

  /** Resolves when `bytes` may go out: at once while this turn has room, else in a later turn. */
  take(bytes: number): Promise<void> | undefined {
    this.schedule()
    if (this.waiting.length === 0 && this.used < this.turnBytes) {
      this.used += bytes
      return undefined
    }
    return new Promise((go) => this.waiting.push({ bytes, go }))
  }

  /** setImmediate runs after the poll phase, so each turn's I/O and timers come between two shares. */
  private schedule(): void {
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => this.turn())
  }

  private turn(): void {
    this.scheduled = false
    this.used = 0
    while (this.waiting.length > 0 && this.used < this.turnBytes) {
      const next = this.waiting.shift()!
      this.used += next.bytes
      next.go()
    }
    if (this.waiting.length > 0) this.schedule()
  }
}

/**
 * Sends the status and `headers`, then `body`, in slices of at most `WRITE_SLICE_BYTES`, each one paced
 * and each waiting for the socket to drain; ends the response and waits until it is out. A client waits
 * for its turn before it pulls the next chunk, so that a waiting client holds no read buffer. Throws on
 * abort, on the client's going away, and with `body`'s own error (the caller then cuts the connection).
 */
export async function sendBody(
  res: ServerResponse,
  headers: Record<string, string>,
  body: AsyncIterable<Uint8Array>,
  pacer: WritePacer,
  signal: AbortSignal,
): Promise<void> {
  const chunks = body[Symbol.asyncIterator]()
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
      for (let at = 0; at < chunk.byteLength; at += WRITE_SLICE_BYTES) {
        if (at > 0) await pacer.take(WRITE_SLICE_BYTES)
        signal.throwIfAborted()
        if (!res.write(chunk.subarray(at, at + WRITE_SLICE_BYTES))) await once(res, 'drain', { signal })
      }
    }
  } finally {
    await chunks.return?.()
  }
  res.end()
  await finished(res)
}
