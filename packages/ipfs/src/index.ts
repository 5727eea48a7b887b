export { DEFAULT_FIRST_BYTE_TIMEOUT_MS, DEFAULT_RAW_BLOCK_MAX_BYTES, ipfsBackend, type IpfsBackendOptions } from './backend.js'
export { narCid } from './cid.js'
export { CHUNK_SIZE, DEFAULT_KUBO_API, type IpfsNodeOptions } from './node.js'
export { publishToIpfs, type PublishToIpfsOptions, type PublishToIpfsResult } from './publish.js'
export { trustlessGatewayHelia } from './gateway.js'
export {
  AMINO_BOOTSTRAP,
  DEFAULT_BOOTSTRAP_DIAL_TIMEOUT_MS,
  DEFAULT_IPFS_LISTEN,
  bootstrapAddresses,
  createIpfsNode,
  ipfsNodeInfo,
  type CreateIpfsNodeOptions,
  type EmbeddedIpfsNode,
  type EmbeddedServices,
} from './embedded.js'
export { announceNar, DEFAULT_PROVIDE_TIMEOUT_MS, withdrawNar, type AnnounceResult } from './announce.js'
export {
  DEFAULT_DISCOVERY_ENOUGH_ANSWERS,
  DEFAULT_DISCOVERY_MAX_PROVIDERS,
  DEFAULT_DISCOVERY_TIMEOUT_MS,
  discoverMappings,
  type DiscoveredMapping,
  type DiscoverOptions,
} from './discover.js'
export {
  askMapping,
  DEFAULT_MAPPING_TIMEOUT_MS,
  MAPPING_ANSWER_MAX_BYTES,
  MAPPING_MAX_INBOUND_STREAMS,
  MAPPING_PROTOCOL,
  MAPPING_REQUEST_MAX_BYTES,
  serveMappings,
  type MappingLookup,
  type NarMapping,
} from './mapping-protocol.js'
