import type { ServerResponse } from 'node:http'
import { finished } from 'node:stream/promises'
import { NarraceError, type TurnPacer } from '@narrace/core'

/**
 * Bytes that every NAR response together hands to its sockets in one turn of the event loop.
 * @default 1 MiB
 */
export const DEFAULT_TURN_BYTES = 1024 * 1024

/** Largest piece handed to one socket at once, so that one client's turn is short. @default 64 KiB */
export const WRITE_SLICE_BYTES = 64 * 1024

/**
 * A client whose socket does not drain within this long is cut: it would otherwise hold its connection,
 * its spool file and, on a pass-through, a connection to the upstream for as long as it likes. A drain
 * is the finest progress a process sees: Linux wakes a writer only once about half of what it buffers
 * for the socket (up to a few MiB) is sent, so a client must take some MiB in this time, a few KB/s.
 * Nix's own `stalled-download-timeout`: a Nix client that reads that slowly is stuck. @default 300000
 */
export const DEFAULT_CLIENT_TIMEOUT_MS = 300_000

/** The client's socket did not drain within the client timeout: the response is cut. */
export class ClientStallError extends NarraceError {
  override readonly name = 'ClientStallError' as const
  override readonly code = 'NARRACE_CLIENT_STALL' as const
}

/** Whether a failed send is the client's doing: it went away (`signal`), or its socket did not drain. */
export function clientGone(error: unknown, signal: AbortSignal): boolean {
  return signal.aborted || error instanceof ClientStallError
}

/** A body went on past its Content-Length: the response is cut, never ended as complete. */
export class BodyOverrunError extends Error {
  override readonly name = 'BodyOverrunError' as const
  readonly code = 'NARRACE_BODY_OVERRUN' as const
}

/** Bytes of the body handed to the socket so far; `sendBody` keeps it up to date, also when it throws. */
export interface SendProgress {
  bytes: number
}

/**
 * Waits for one response's 'drain' with one set of listeners for the whole response. `events.once` with
 * a signal made a promise, three listeners and an abort registration for every slice: with 500 clients
 * of one NAR, a third of what the proxy allocated while sending, and the collections that came with it.
 */
class DrainWaiter {
  private waiting: { resolve: () => void; reject: (error: unknown) => void } | undefined
  private failure: { error: unknown } | undefined
  /** One timer for the whole response, re-armed by each wait: a timer per slice was an allocation per slice. */
  private timer: NodeJS.Timeout | undefined
  private timing = false

  private readonly onDrain = (): void => {
    this.timing = false
    const waiting = this.waiting
    this.waiting = undefined
    waiting?.resolve()
  }

  private readonly onTimeout = (): void => {
    if (this.timing) this.fail(new ClientStallError(`the client took too little for ${this.timeoutMs} ms (its socket did not drain): cut`))
  }

  private readonly onError = (error: unknown): void => this.fail(error)
  private readonly onAbort = (): void => this.fail(this.signal.reason)

  constructor(
    private readonly res: ServerResponse,
    private readonly signal: AbortSignal,
    private readonly timeoutMs: number,
  ) {
    res.on('drain', this.onDrain)
    res.on('error', this.onError)
    signal.addEventListener('abort', this.onAbort, { once: true })
  }

  /** Throws the response's error if it had one, also while nothing waited. */
  throwIfFailed(): void {
    if (this.failure) throw this.failure.error
  }

  /** Resolves at the next 'drain'; rejects with the response's error, the signal's reason or ClientStallError. */
  wait(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure.error)
    if (this.signal.aborted) return Promise.reject(this.signal.reason)
    this.time()
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }))
  }

  /** Resolves once the ended response is out; rejects as `wait` does. */
  async finished(): Promise<void> {
    if (this.res.writableFinished) return
    this.throwIfFailed()
    const cut = new AbortController()
    this.time()
    const waiting = new Promise<never>((_resolve, reject) => (this.waiting = { resolve: noop, reject }))
    try {
      await Promise.race([finished(this.res, { signal: cut.signal }), waiting])
    } finally {
      this.timing = false
      this.waiting = undefined
      cut.abort()
    }
  }

  private time(): void {
    if (this.timeoutMs === Infinity) return
    this.timing = true
    if (this.timer) this.timer.refresh()
    else this.timer = setTimeout(this.onTimeout, this.timeoutMs).unref()
  }

  dispose(): void {
    clearTimeout(this.timer)
    this.res.off('drain', this.onDrain)
    this.res.off('error', this.onError)
    this.signal.removeEventListener('abort', this.onAbort)
  }

  private fail(error: unknown): void {
    this.timing = false
    this.failure ??= { error }
    const waiting = this.waiting
    this.waiting = undefined
    waiting?.reject(error)
  }
}

const noop = (): void => {}
/** setTimeout's longest delay. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** What else {@link sendBody} takes. */
export interface SendOptions {
  /** Kept up to date with the body's bytes written, also when it throws. */
  progress?: SendProgress
  /** Infinity turns it off. @default DEFAULT_CLIENT_TIMEOUT_MS */
  clientTimeoutMs?: number
}

/**
 * Sends the status and `headers`, then `body`, in slices of at most `WRITE_SLICE_BYTES`, each one paced
 * and each waiting for the socket to drain; ends the response and waits until it is out. With a
 * `content-length`, it ends as soon as that many bytes are written, without waiting a turn for the body's
 * own end nor a drain after the last slice: a client that has every byte closes at once, and a response
 * it closed before the proxy ended it counted as aborted. A client waits for its turn before it pulls the
 * next chunk, so that a waiting client holds no read buffer. Throws on abort, on the client's going away,
 * with the response's error, with ClientStallError when the socket does not drain within `clientTimeoutMs`,
 * and with `body`'s own error (the caller then cuts the connection).
 */
export async function sendBody(
  res: ServerResponse,
  headers: Record<string, string>,
  body: AsyncIterable<Uint8Array>,
  pacer: TurnPacer,
  signal: AbortSignal,
  options: SendOptions = {},
): Promise<void> {
  const progress = options.progress ?? { bytes: 0 }
  const chunks = body[Symbol.asyncIterator]()
  const length = headers['content-length'] === undefined ? undefined : Number(headers['content-length'])
  // Past setTimeout's longest delay, a timer would fire at once: that long is as good as never.
  const timeoutMs = options.clientTimeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS
  const drain = new DrainWaiter(res, signal, timeoutMs > MAX_TIMER_MS ? Infinity : timeoutMs)
  let written = 0
  try {
    for (;;) {
      // Awaited only when it waits: an await of nothing still costs a promise and a microtask, per slice.
      const turn = pacer.take(WRITE_SLICE_BYTES)
      if (turn) await turn
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
        const turn = at > 0 ? pacer.take(WRITE_SLICE_BYTES) : undefined
        if (turn) await turn
        signal.throwIfAborted()
        drain.throwIfFailed()
        const end = Math.min(at + WRITE_SLICE_BYTES, chunk.byteLength)
        // After the last byte the response ends at once; its end waits for the socket, not a drain first.
        const last = length !== undefined && written + end >= length
        const more = res.write(chunk.subarray(at, end))
        progress.bytes += end - at
        if (!more && !last) await drain.wait()
      }
      written += chunk.byteLength
      if (length !== undefined && written >= length) break
    }
    drain.throwIfFailed()
    res.end()
    await drain.finished()
  } finally {
    drain.dispose()
    await chunks.return?.()
  }
}
