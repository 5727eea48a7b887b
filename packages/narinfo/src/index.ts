export { formatCacheInfo, parseCacheInfo, type CacheInfo } from './cache-info.js'
export { MAX_DOCUMENT_BYTES, MAX_LINE_BYTES } from './lines.js'
export { formatNarInfo, parseNarInfo, type NarInfo } from './narinfo.js'
export { generateSigningKey, narInfoFingerprint, signNarInfo, verifyNarInfo } from './signature.js'
export { isStoreHashPart, NIX_STORE_DIR, parseStoreBasename, parseStorePath, type StorePath } from './store-path.js'
export {
  compressionExtension,
  impliedFile,
  narFileName,
  rewriteNarInfo,
  type RewrittenNarInfo,
} from './rewrite.js'
