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
export { ClientStallError, DEFAULT_CLIENT_TIMEOUT_MS } from './send.js'
export { DEFAULT_DONATION_CONCURRENCY, Donation, type DonationOptions, type HeliaForDonation } from './donation.js'
export { MAPPINGS_PATH, MAX_MAPPINGS_PER_ANSWER } from './mappings-route.js'
export { DEFAULT_MAPPINGS_MISS_TTL_MS, DEFAULT_MAPPINGS_TIMEOUT_MS, MAX_MAPPING_ANSWER_BYTES, PeerMappings, type PeerMappingsOptions } from './peer-mappings.js'
export { DEFAULT_PENDING_NARINFO_BYTES, ProxyStore } from './store-wiring.js'
export { startEmbeddedIpfs, type EmbeddedIpfs, type EmbeddedIpfsOptions } from './embedded-ipfs.js'
