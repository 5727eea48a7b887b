import { NarraceError } from '@narrace/core'

/** Thrown when another process (or another open in this one) owns the store folder. */
export class StoreLockedError extends NarraceError {
  override name = 'StoreLockedError' as const
  override readonly code = 'NARRACE_STORE_LOCKED' as const
  readonly dir: string

  constructor(message: string, options: { dir: string; cause?: unknown }) {
    super(message, options)
    this.dir = options.dir
  }
}

/**
 * Thrown when a file can't enter the store within `maxBytes`, even with every unpinned NAR evicted: it is
 * larger than the budget, or the pins fill it.
 */
export class StoreFullError extends NarraceError {
  override name = 'StoreFullError' as const
  override readonly code = 'NARRACE_STORE_FULL' as const
  /** The bytes that were asked for. */
  readonly size: number
  readonly maxBytes: number

  constructor(message: string, options: { size: number; maxBytes: number; cause?: unknown }) {
    super(message, options)
    this.size = options.size
    this.maxBytes = options.maxBytes
  }
}

/**
 * Thrown when a narinfo URL or a NAR file name would put a file anywhere but `nar/<FileHash>.nar<ext>` in
 * a cache folder: a dot segment, an absolute path, a scheme on a file path, a name Nix never writes.
 * Nothing is written.
 */
export class InvalidNarUrlError extends NarraceError {
  override name = 'InvalidNarUrlError' as const
  override readonly code = 'NARRACE_INVALID_NAR_URL' as const
  readonly url: string

  constructor(message: string, options: { url: string; cause?: unknown }) {
    super(message, options)
    this.url = options.url
  }
}
