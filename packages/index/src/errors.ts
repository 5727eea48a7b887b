import { NarraceError } from '@narrace/core'

/** Thrown when a mapping is malformed: a bad CID, infohash, magnet, size, store path or date. */
export class InvalidNarLocationError extends NarraceError {
  override name = 'InvalidNarLocationError' as const
  override readonly code = 'NARRACE_INVALID_LOCATION' as const
}

/** Thrown when an index file was written by a newer narrace, whose schema this one can't read safely. */
export class NarIndexSchemaError extends NarraceError {
  override name = 'NarIndexSchemaError' as const
  override readonly code = 'NARRACE_INDEX_SCHEMA' as const
  /** The schema version found in the file. */
  readonly found: number
  /** The newest schema version this narrace knows. */
  readonly supported: number

  constructor(message: string, options: { found: number; supported: number; cause?: unknown }) {
    super(message, options)
    this.found = options.found
    this.supported = options.supported
  }
}
