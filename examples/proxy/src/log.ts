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

/**
 * The proxy's log: lines go to `out` (stdout), with at most `maxBytes` waiting for a reader; past that a
 * line is dropped and `onDrop` told. On a pipe or a socket, Node's stdout is a libuv stream: a write that
 * can't go at once waits in memory and goes as soon as the reader makes room. So a slow reader gets every
 * line at its own pace, and one that stopped never blocks the proxy nor keeps it from exiting (exit does
 * not wait for what is queued there). pino's own destination wrote on libuv's thread pool, which exit
 * joins, so a write waiting on a full pipe held the exit for good; it also held lines without limit.
 * Once `out` fails (the reader went away), lines are dropped and counted.
 */
export function logDestination(onDrop: () => void, out: Writable = process.stdout, maxBytes = LOG_BUFFER_BYTES): LogDestination {
  // An error (EPIPE: the reader went away) destroys the stream; it must not go uncaught on the way.
  out.on('error', () => {})
  const gone = (): boolean => out.destroyed || out.errored !== null
  const settled = (): boolean => gone() || out.writableLength === 0
  return {
    write(line) {
      if (gone() || out.writableLength > maxBytes) {
        onDrop()
        return
      }
      out.write(line)
    },
    close(ms = LOG_CLOSE_MS) {
      if (settled()) return Promise.resolve()
      return new Promise((resolve) => {
        // 'drain' comes only after a write that was refused, so the length is watched instead.
        const check = setInterval(() => {
          if (settled()) done()
        }, CLOSE_CHECK_MS)
        // Past the deadline the rest is left behind: exit does not wait for it.
        const timer = setTimeout(done, ms)
        function done(): void {
          clearInterval(check)
          clearTimeout(timer)
          resolve()
        }
      })
    },
  }
}
