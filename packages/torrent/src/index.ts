export {
  DEFAULT_METADATA_TIMEOUT_MS,
  torrentBackend,
  type TorrentBackend,
  type TorrentBackendOptions,
} from './backend.js'
export { publishToTorrent, type PublishToTorrentOptions, type PublishToTorrentResult } from './publish.js'
export {
  createClient,
  type CreateClientOptions,
  type WebTorrent,
  type WebTorrentAddOptions,
  type WebTorrentFile,
  type WebTorrentTorrent,
} from './client.js'
