export { InvalidNarLocationError, NarIndexSchemaError } from './errors.js'
export { normalizeLocation, type NarLocation } from './location.js'
export {
  DEFAULT_BUSY_TIMEOUT_MS,
  INDEX_SCHEMA_VERSION,
  openIndex,
  type NarIndex,
  type NarIndexImportResult,
} from './sqlite.js'
