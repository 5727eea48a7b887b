import { InvalidNarInfoError } from '@narrace/core'

/** The largest narinfo or nix-cache-info narrace reads; real ones are a few KiB even with many References. */
export const MAX_DOCUMENT_BYTES = 1024 * 1024
/** The longest line narrace reads. */
export const MAX_LINE_BYTES = 64 * 1024

/** One `Key: value` line, numbered from 1 for error messages. */
export interface Line {
  number: number
  key: string
  value: string
}

/**
 * Splits a document into lines, enforcing the size limits, LF endings and `Key: value` form.
 * With `spaced: false` the space after the colon may be missing, as Nix allows in nix-cache-info.
 */
export function splitLines(text: string, what: string, spaced = true): Line[] {
  if (typeof text !== 'string') {
    throw new InvalidNarInfoError(`a ${what} must be a string, got ${text === null ? 'null' : typeof text}`)
  }
  // A UTF-16 length is at most the UTF-8 length, so the cheap test settles most oversized input.
  if (text.length > MAX_DOCUMENT_BYTES || Buffer.byteLength(text) > MAX_DOCUMENT_BYTES) {
    throw new InvalidNarInfoError(`${what} is over ${MAX_DOCUMENT_BYTES} bytes`)
  }
  const body = text.endsWith('\n') ? text.slice(0, -1) : text
  if (body === '') return []
  return body.split('\n').map((line, index) => {
    const number = index + 1
    if (line.length > MAX_LINE_BYTES || Buffer.byteLength(line) > MAX_LINE_BYTES) {
      throw new InvalidNarInfoError(`${what} line ${number} is over ${MAX_LINE_BYTES} bytes`)
    }
    if (line.endsWith('\r')) {
      throw new InvalidNarInfoError(`${what} line ${number} ends in CR: ${what} lines end in LF alone`)
    }
    const colon = line.indexOf(':')
    const key = line.slice(0, colon)
    const rest = line.slice(colon + 1)
    if (colon <= 0 || !/^[A-Za-z0-9_-]+$/.test(key) || (spaced && rest !== '' && !rest.startsWith(' '))) {
      throw new InvalidNarInfoError(`${what} line ${number} is not 'Key: value': ${JSON.stringify(line.slice(0, 80))}`)
    }
    return { number, key, value: rest.startsWith(' ') ? rest.slice(1) : rest }
  })
}

/** An InvalidNarInfoError that names the line and field, with the original error as its cause. */
export function lineError(what: string, line: Line, problem: string, cause?: unknown): InvalidNarInfoError {
  return new InvalidNarInfoError(`${what} line ${line.number} (${line.key}): ${problem}`, { cause })
}
