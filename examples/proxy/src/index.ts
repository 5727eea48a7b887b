export {
  DEFAULT_LISTEN,
  DEFAULT_PRIORITY,
  DEFAULT_VERIFY_FIRST_BELOW,
  parseProxyArgs,
  ProxyUsageError,
  USAGE,
  type ProxyArgs,
} from './args.js'
export { NarTracker, ProxyMetrics, type NarOutcome } from './metrics.js'
export { createProxy, DEFAULT_NARINFO_TIMEOUT_MS, DEFAULT_NARINFO_TTL_MS, MAX_HEADER_BYTES, type Proxy, type ProxyOptions } from './proxy.js'
export { MAX_URL_LENGTH, routeRequest, type Route } from './routes.js'
