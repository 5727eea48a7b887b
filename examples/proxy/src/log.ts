import { fstatSync } from 'node:fs'
import { pino } from 'pino'

/** Bytes of log lines held for stdout at most; past them, lines are dropped and counted. @default 8 MiB */
export const LOG_BUFFER_BYTES = 8 * 1024 * 1024

/**
 * Where the proxy logs: stdout, written off the event loop, with at most `maxBytes` waiting. pino's own
 * default holds lines without limit, so a reader that stops (a stuck journald, a pipe nobody drains)
 * grew the proxy for as long as requests came. Past the limit a line is dropped and `onDrop` told.
 */
export function logDestination(onDrop: () => void, fd = 1, maxBytes = LOG_BUFFER_BYTES): ReturnType<typeof pino.destination> {
  const destination = pino.destination({ dest: fd, sync: false, maxLength: maxBytes })
  destination.on('drop', onDrop)
  return destination
}

/** How long the proxy waits at exit for its log lines to go out. @default 2 s */
export const LOG_CLOSE_MS = 2000

/**
 * Ends `destination`: what waits is written for at most `ms`, and then given up. pino writes what is left
 * synchronously at exit, retrying for as long as the reader does not read, so a stuck reader (a pipe
 * nobody drains) kept a stopped proxy from ever exiting. Once this resolves, nothing is left to write.
 */
export function closeLog(destination: ReturnType<typeof pino.destination>, ms = LOG_CLOSE_MS): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      destination.destroy()
      resolve()
    }, ms)
    const done = (): void => {
      clearTimeout(timer)
      resolve()
    }
    destination.once('close', done)
    try {
      destination.end()
    } catch {
      // Destroyed already: nothing is left to write.
      done()
    }
  })
}

/** Linux's fcntl commands and flag for a descriptor's status flags. */
const F_GETFL = 3
const F_SETFL = 4
const O_NONBLOCK = 0o4000

/**
 * Sets O_NONBLOCK on `fd` when it is a pipe or a socket, through glibc's `fcntl` (koffi); false where it
 * cannot (not Linux, no glibc, a file or a terminal, which never stay full). The log is written on
 * libuv's thread pool, and a write to a full blocking pipe waits there for the reader; a process joins
 * those threads as it exits, so a reader that stopped kept the stopped proxy from ever exiting. A write
 * that cannot go at once now fails with EAGAIN, and the destination tries it again later.
 */
export async function unblockLogOutput(fd = 1): Promise<boolean> {
  if (process.platform !== 'linux') return false
  try {
    const stat = fstatSync(fd)
    if (!stat.isFIFO() && !stat.isSocket()) return false
    const { default: koffi } = await import('koffi')
    const fcntl = koffi.load('libc.so.6').func('int fcntl(int fd, int cmd, ...)')
    const flags = fcntl(fd, F_GETFL) as number
    if (flags < 0) return false
    return (fcntl(fd, F_SETFL, 'int', flags | O_NONBLOCK) as number) === 0
  } catch {
    return false
  }
}
