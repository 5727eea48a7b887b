import { fstatSync } from 'node:fs'
import { Socket } from 'node:net'
import type { Writable } from 'node:stream'

/** Bytes of log lines held for stdout at most; past them, lines are dropped and counted. @default 8 MiB */
export const LOG_BUFFER_BYTES = 8 * 1024 * 1024

/** How long the proxy waits at exit for its log lines to go out. @default 2 s */
export const LOG_CLOSE_MS = 2000

/** How often `close()` looks whether every line is out. */
const CLOSE_CHECK_MS = 10

/** Where pino writes the proxy's lines; `close()` gives what still waits a bounded time to go out. */
export interface LogDestination {
  write(line: string): void
  close(ms?: number): Promise<void>
}

/** The streams `logOutput` made: `close()` ends them. */
const ownStreams = new WeakSet<Writable>()

/**
 * Where the log goes: stdout. A pipe or a socket there gets a libuv stream of its own, whose writes never
 * block: a write that cannot go at once waits in memory and goes as soon as the reader makes room.
 * Node's own `process.stdout` writes to pipes and sockets synchronously on Linux (its documentation says
 * so), so a reader that stopped would hold the event loop. Once made, this stream is `process.stdout` too, so a `console.log`
 * anywhere in the process writes through it. A file or a terminal keeps Node's own `process.stdout`. So
 * does a stdout that something touched before the log was made.
 */
export function logOutput(fd = 1): Writable {
  try {
    const stat = fstatSync(fd)
    if (stat.isFIFO() || stat.isSocket()) {
      const socket = new Socket({ fd, readable: false, writable: true })
      ownStreams.add(socket)
      // fd 1 can have one handle only: `process.stdout` made later would throw. It is this stream now.
      if (fd === 1) Object.defineProperty(process, 'stdout', { configurable: true, enumerable: true, get: () => socket })
      return socket
    }
  } catch {
    // A closed stdout, or one that `process.stdout` holds already (EEXIST): Node's stream serves.
  }
  return process.stdout
}

/**
 * The proxy's log: lines go to `out`, with at most `maxBytes` waiting for a reader; past that a line is
 * dropped and `onDrop` told. A slow reader gets every line at its own pace, and one that stopped never
 * blocks the proxy nor (unlike pino's destination, whose write waits on a thread of libuv's pool, and
 * exit joins them) keeps it from exiting. pino's own destinations held lines without limit, or, on a
 * non-blocking pipe, retried it only every 100 ms, which a reader slower than the proxy never caught up
 * with. Once `out` fails (the reader went away), lines are dropped and counted.
 */
export function logDestination(onDrop: () => void, out: Writable = logOutput(), maxBytes = LOG_BUFFER_BYTES): LogDestination {
  let broken = false
  out.on('error', () => (broken = true))
  return {
    write(line) {
      if (broken || out.destroyed || out.writableLength > maxBytes) {
        onDrop()
        return
      }
      out.write(line)
    },
    close(ms = LOG_CLOSE_MS) {
      if (broken || out.destroyed || out.writableLength === 0) return Promise.resolve()
      return new Promise((resolve) => {
        // 'drain' comes only after a write that was refused, so the length is watched instead.
        const check = setInterval(() => {
          if (broken || out.destroyed || out.writableLength === 0) done()
        }, CLOSE_CHECK_MS)
        // Past the deadline the rest is left behind: exit does not wait for it.
        const timer = setTimeout(done, ms)
        function done(): void {
          clearInterval(check)
          clearTimeout(timer)
          // What is left is dropped here: a write still pending on the way out held the exit.
          if (ownStreams.has(out)) out.destroy()
          resolve()
        }
      })
    },
  }
}
