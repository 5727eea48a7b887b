/** The base of every error narrace throws: check `code` rather than the class where packages may be duplicated. */
export class NarraceError extends Error {
  override name: string = 'NarraceError'
  readonly code: string = 'NARRACE_ERROR'

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

/** Thrown when a hash string can't be parsed. */
export class InvalidNarHashError extends NarraceError {
  override name = 'InvalidNarHashError' as const
  override readonly code = 'NARRACE_INVALID_HASH' as const
}

/** Thrown when a narinfo or nix-cache-info can't be parsed. */
export class InvalidNarInfoError extends NarraceError {
  override name = 'InvalidNarInfoError' as const
  override readonly code = 'NARRACE_INVALID_NARINFO' as const
}

/** Thrown when no backend holds the file; `errors` says why each one failed. */
export class NarNotFoundError extends NarraceError {
  override name = 'NarNotFoundError' as const
  override readonly code = 'NARRACE_NOT_FOUND' as const
  readonly errors: unknown[]

  constructor(message: string, options?: { cause?: unknown; errors?: unknown[] }) {
    super(message, options)
    this.errors = options?.errors ?? []
  }
}

/**
 * Thrown when the bytes don't hash to the FileHash. `expected` and `actual` are `sha256:<nix32>` strings;
 * in the NarSizeMismatchError subclass they are byte counts.
 */
export class NarHashMismatchError<T extends string | number = string> extends NarraceError {
  override name: 'NarHashMismatchError' | 'NarSizeMismatchError' = 'NarHashMismatchError'
  override readonly code: 'NARRACE_HASH_MISMATCH' | 'NARRACE_SIZE_MISMATCH' = 'NARRACE_HASH_MISMATCH'
  readonly expected: T
  readonly actual: T
  /** The backends whose bytes were received. */
  readonly sources: string[]

  constructor(message: string, options: { expected: T; actual: T; sources: string[]; cause?: unknown }) {
    super(message, options)
    this.expected = options.expected
    this.actual = options.actual
    this.sources = options.sources
  }
}

/**
 * Thrown when a source delivers or announces more or fewer bytes than the FileSize (`expected` and
 * `actual` are sizes). A file of the wrong length can't hash to the FileHash, so this is a hash mismatch
 * found early, and extends that class: `instanceof NarHashMismatchError` catches both.
 */
export class NarSizeMismatchError extends NarHashMismatchError<number> {
  override name = 'NarSizeMismatchError' as const
  override readonly code = 'NARRACE_SIZE_MISMATCH' as const
  /** The FileHash, `sha256:<nix32>`, when known. */
  readonly hash: string | undefined

  constructor(
    message: string,
    options: { expected: number; actual: number; hash?: string; sources?: string[]; cause?: unknown },
  ) {
    super(message, { expected: options.expected, actual: options.actual, sources: options.sources ?? [], cause: options.cause })
    this.hash = options.hash
  }
}

/** Thrown when a backend fails for another reason: an HTTP status, a refused or reset connection. */
export class NarBackendError extends NarraceError {
  override name = 'NarBackendError' as const
  override readonly code = 'NARRACE_BACKEND' as const
  readonly backend: string | undefined
  readonly status: number | undefined

  constructor(message: string, options?: { cause?: unknown; backend?: string; status?: number }) {
    super(message, options)
    this.backend = options?.backend
    this.status = options?.status
  }
}

/** Thrown when a source yields no byte for `stallTimeoutMs`. */
export class NarStallError extends NarraceError {
  override name = 'NarStallError' as const
  override readonly code = 'NARRACE_STALL' as const
  readonly backend: string
  readonly timeoutMs: number

  constructor(message: string, options: { backend: string; timeoutMs: number; cause?: unknown }) {
    super(message, options)
    this.backend = options.backend
    this.timeoutMs = options.timeoutMs
  }
}
