export { InvalidNarLocationError, NarIndexSchemaError } from './errors.js'
export {
  formatLocation,
  MAX_SOURCE_LENGTH,
  MAX_URL_LENGTH,
  normalizeLocation,
  type NarLocation,
} from './location.js'
export { DEFAULT_FLUSH_DELAY_MS, MAX_QUEUED_WRITES, MAX_RETRY_DELAY_MS } from './queue.js'
export {
  DEFAULT_BUSY_TIMEOUT_MS,
  INDEX_SCHEMA_VERSION,
  openIndex,
  type NarIndex,
  type NarIndexImportResult,
  type OpenIndexOptions,
} from './sqlite.js'
