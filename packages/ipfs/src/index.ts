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
