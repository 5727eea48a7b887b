export { DEFAULT_CONNECT_TIMEOUT_MS, httpBackend, type HttpBackend, type HttpBackendOptions } from './backend.js'
export {
  DEFAULT_CLOSURE_CONCURRENCY,
  walkClosure,
  type ClosureEntry,
  type ClosureMiss,
  type ClosureWalk,
  type WalkClosureOptions,
} from './closure.js'
export {
  MAX_NARINFO_BYTES,
  fetchCacheInfo,
  resolveNarInfo,
  type ResolvedNarInfo,
  type ResolveNarInfoOptions,
} from './narinfo.js'
export { MAX_REDIRECTS } from './url.js'
