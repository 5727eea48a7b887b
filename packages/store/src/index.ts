export { storeBackend, type StoreBackendOptions } from './backend.js'
export { InvalidNarUrlError, StoreFullError, StoreLockedError } from './errors.js'
export { checkNarInfoUrl, narInfoFile, parseNarFileName, type NarInfoFile } from './layout.js'
export {
  BOOKKEEPING_SLACK_BYTES,
  DEFAULT_STORE_MAX_BYTES,
  DEFAULT_TOUCH_FLUSH_MS,
  NarStore,
  openStore,
  STATE_DIR,
  type OpenStoreOptions,
  type StoreEntry,
  type StoreEvent,
  type StoreWriterOptions,
} from './store.js'
export { StoreWriter } from './writer.js'
export { makeDirectory, writeAtomically } from './fs.js'
