export {
  InvalidNarHashError,
  InvalidNarInfoError,
  NarBackendError,
  NarHashMismatchError,
  NarNotFoundError,
  NarraceError,
  NarSizeMismatchError,
  NarStallError,
  NarUnavailableError,
  isNarMismatch,
} from './errors.js'
export { NarHash, decodeNix32, encodeNix32, parseNarHash } from './hash.js'
export {
  DEFAULT_CONNECTIONS_PER_SOURCE,
  DEFAULT_MAX_BUFFER_BYTES,
  DEFAULT_MAX_NAR_BYTES,
  DEFAULT_MIN_BYTES_PER_SECOND,
  DEFAULT_STALL_TIMEOUT_MS,
  DEFAULT_STRIPE_ABOVE,
  resolveNar,
} from './resolve.js'
export { resolveNarToFile, type ResolveNarToFileResult } from './file.js'
export type {
  NarBackend,
  NarEvent,
  NarEventType,
  NarFetchOptions,
  NarSource,
  NarStream,
  ResolveNarOptions,
} from './types.js'
export { TurnPacer } from './turns.js'
export { INGEST_TURN_BYTES } from './source.js'
