export {
  InvalidNarHashError,
  InvalidNarInfoError,
  NarBackendError,
  NarHashMismatchError,
  NarNotFoundError,
  NarraceError,
  NarSizeMismatchError,
  NarStallError,
} from './errors.js'
export { NarHash, decodeNix32, encodeNix32, parseNarHash } from './hash.js'
export { DEFAULT_STALL_TIMEOUT_MS, resolveNar } from './resolve.js'
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
