export { isPrivateAddress, type LookupFunction } from './addresses.js'
export { httpBackend, type HttpBackend, type HttpBackendOptions } from './backend.js'
export {
  DEFAULT_CLOSURE_CONCURRENCY,
  walkClosure,
  type ClosureEntry,
  type ClosureMiss,
  type ClosureWalk,
  type WalkClosureOptions,
} from './closure.js'
export {
  DEFAULT_FAILURES_BEFORE_DOWN,
  DEFAULT_MAX_BACKOFF_MS,
  DEFAULT_MIN_BACKOFF_MS,
  UpstreamHealth,
  upstreamHealth,
  type UpstreamHealthOptions,
  type UpstreamState,
} from './health.js'
export {
  MAX_NARINFO_BYTES,
  fetchCacheInfo,
  resolveNarInfo,
  type NarInfoCache,
  type ResolvedNarInfo,
  type ResolveNarInfoOptions,
} from './narinfo.js'
export {
  InvalidNetrcError,
  credentialsFor,
  parseNetrc,
  readNetrc,
  type Netrc,
  type NetrcCredentials,
  type NetrcEntry,
} from './netrc.js'
export {
  DEFAULT_CONNECTIONS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  MAX_REDIRECTS,
  parseUpstreamHeader,
  upstreamsWith,
  type Upstream,
  type UpstreamHeader,
  type UpstreamOptions,
} from './upstream.js'
