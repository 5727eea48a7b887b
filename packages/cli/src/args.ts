import { parseArgs, type ParseArgsConfig } from 'node:util'

/** A command line that can't be run as given: the CLI prints it in one line and exits with code 2. */
export class UsageError extends Error {
  override name = 'UsageError' as const
}

type Options = NonNullable<ParseArgsConfig['options']>

/** `parseArgs`, strict, with its errors turned into one-line UsageErrors. */
export function parse<T extends Options>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true, allowNegative: true })
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message.split('\n')[0]! : String(error))
  }
}

/** A positive whole number from a flag, or a UsageError naming the flag. */
export function positiveInteger(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`${flag} needs a whole number of at least 1, got '${value}'`)
  return n
}

/** An http(s) URL from a flag, without its trailing slash, or a UsageError naming the flag. */
export function httpUrl(value: string, flag: string): string {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new UsageError(`${flag} needs a URL, got '${value}'`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`${flag} needs an http:// or https:// URL, got '${value}'`)
  }
  return value.replace(/\/+$/, '')
}

/**
 * A tracker URL from --announce, or a UsageError. narrace's peers speak TCP only, so WebSocket trackers,
 * which need WebRTC, are refused rather than dropped without a word.
 */
export function trackerUrl(value: string): string {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new UsageError(`--announce needs a tracker URL, got '${value}'`)
  }
  if (!['http:', 'https:', 'udp:'].includes(url.protocol)) {
    throw new UsageError(`--announce needs an http://, https:// or udp:// tracker, got '${value}'`)
  }
  return value
}
