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
