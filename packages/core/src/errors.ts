/**
 * The key of the brand each error class carries: its name, in the global symbol registry, so that two
 * copies of this package (a proxy and a plugin, say) recognise each other's errors with `instanceof`.
 */
const BRAND = Symbol.for('@narrace/core/error-class')

type Branded = { readonly [BRAND]?: string }

function brand(cls: object, name: string): void {
  Object.defineProperty(cls, BRAND, { value: name })
}

/**
 * The base of every error narrace throws. `instanceof` works across copies of the package: each class is
 * branded with its name, and an error is an instance of a class when any class on its prototype chain
 * carries the same brand.
 */
export class NarraceError extends Error {
  static {
    brand(this, 'NarraceError')
  }
  override name: string = 'NarraceError'
  readonly code: string = 'NARRACE_ERROR'

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }

  static override [Symbol.hasInstance]<T>(this: abstract new (...args: never[]) => T, value: unknown): value is T {
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true
    // Only a class that declares its own brand is matched by it; a subclass from elsewhere is not.
    const brand = Object.hasOwn(this, BRAND) ? (this as Branded)[BRAND] : undefined
    if (brand === undefined || typeof value !== 'object' || value === null) return false
    for (let proto = Object.getPrototypeOf(value) as object | null; proto; proto = Object.getPrototypeOf(proto) as object | null) {
      const ctor = (proto as { constructor?: unknown }).constructor
      if (typeof ctor === 'function' && Object.hasOwn(ctor, BRAND) && (ctor as Branded)[BRAND] === brand) return true
    }
    return false
  }
}

/** Thrown when a hash string can't be parsed. */
export class InvalidNarHashError extends NarraceError {
  static {
    brand(this, 'InvalidNarHashError')
  }
  override name = 'InvalidNarHashError' as const
  override readonly code = 'NARRACE_INVALID_HASH' as const
}

/** Thrown when a narinfo or nix-cache-info can't be parsed, or a narinfo is not one that may be served. */
export class InvalidNarInfoError extends NarraceError {
  static {
    brand(this, 'InvalidNarInfoError')
  }
  override name = 'InvalidNarInfoError' as const
  override readonly code = 'NARRACE_INVALID_NARINFO' as const
  /**
   * True when the narinfo was well formed and only lacked a trusted signature (for an aggregate: when that,
   * or "not here", is all every cache said). Nix itself passes such a narinfo over as it does a missing
   * one; garbage, a wrong store path or an endless body is a broken cache, not a miss.
   */
  readonly untrusted: boolean

  constructor(message: string, options?: { cause?: unknown; untrusted?: boolean }) {
    super(message, options)
    this.untrusted = options?.untrusted ?? false
  }
}

/** Thrown when every backend said it has no copy of the file ("not here"); `errors` holds each answer. */
export class NarNotFoundError extends NarraceError {
  static {
    brand(this, 'NarNotFoundError')
  }
  override name = 'NarNotFoundError' as const
  override readonly code = 'NARRACE_NOT_FOUND' as const
  readonly errors: unknown[]

  constructor(message: string, options?: { cause?: unknown; errors?: unknown[] }) {
    super(message, options)
    this.errors = options?.errors ?? []
  }
}

/**
 * Thrown when no backend could deliver the file and at least one failed for another reason than "not
 * here" (a status, a refused connection, a stall): the file may well exist, so this is an outage, not a
 * miss. `errors` holds every backend's error, in the order of the backends, like an AggregateError.
 */
export class NarUnavailableError extends NarraceError {
  static {
    brand(this, 'NarUnavailableError')
  }
  override name = 'NarUnavailableError' as const
  override readonly code = 'NARRACE_UNAVAILABLE' as const
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
  static {
    brand(this, 'NarHashMismatchError')
  }
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
  static {
    brand(this, 'NarSizeMismatchError')
  }
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
  static {
    brand(this, 'NarBackendError')
  }
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

/**
 * Thrown when a source makes too little progress: no byte, or fewer than `minBytesPerSecond` on average,
 * over `stallTimeoutMs` of waiting for it.
 */
export class NarStallError extends NarraceError {
  static {
    brand(this, 'NarStallError')
  }
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

/**
 * Whether `error` says that a source's bytes were not the file: a size or a hash mismatch, found before
 * the first byte or at the end. The one question a proxy asks for its status, outcome and metric.
 */
export function isNarMismatch(error: unknown): error is NarHashMismatchError<string | number> {
  return error instanceof NarHashMismatchError
}
