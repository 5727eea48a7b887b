import { InvalidNarInfoError, parseNarHash, type NarHash } from '@narrace/core'
import { parseNarInfo, type NarInfo } from './narinfo.js'

/**
 * The file extension Nix gives a NAR of each compression (`BinaryCacheStore::addToStoreCommon`). A
 * method Nix has no extension for (`none`, `gzip`, ...) gets none, as Nix does it.
 */
const EXTENSIONS: Record<string, string> = {
  xz: '.xz',
  zstd: '.zst',
  bzip2: '.bz2',
  br: '.br',
  lz4: '.lz4',
  lzip: '.lzip',
}

/** `.xz`, `.zst`, `.bz2`, `.br`, `.lz4`, `.lzip`, or `''` for `none` and anything else. */
export function compressionExtension(compression: string): string {
  return Object.hasOwn(EXTENSIONS, compression) ? EXTENSIONS[compression]! : ''
}

/** `nar/<FileHash nix32>.nar<ext>`: the name Nix itself gives a file in a binary cache. */
export function narFileName(fileHash: NarHash | string, compression: string): string {
  const hash = typeof fileHash === 'string' ? parseNarHash(fileHash) : fileHash
  return `nar/${hash.nix32}.nar${compressionExtension(compression)}`
}

/**
 * The FileHash and FileSize a narinfo implies: its own lines, or, for `Compression: none`, where the
 * file is the NAR itself, its NarHash and NarSize. Undefined for a compressed file without a FileHash.
 */
export function impliedFile(info: NarInfo): { fileHash: NarHash; fileSize?: number } | undefined {
  if (info.fileHash !== undefined) {
    const fileHash = parseNarHash(info.fileHash)
    return info.fileSize === undefined ? { fileHash } : { fileHash, fileSize: info.fileSize }
  }
  if (info.compression !== 'none') return undefined
  return { fileHash: parseNarHash(info.narHash), fileSize: info.fileSize ?? info.narSize }
}

/** A narinfo as the proxy serves it. */
export interface RewrittenNarInfo {
  /** The narinfo text with its new `URL` line (and added `FileHash`/`FileSize`), every other line unchanged. */
  text: string
  /** The narinfo as the upstream sent it, parsed. */
  original: NarInfo
  /** The FileHash the bytes are verified against; undefined when the narinfo gives no way to know it. */
  fileHash?: NarHash
  fileSize?: number
  /** The new URL. */
  url: string
}

/**
 * Rewrites a narinfo's `URL` line to `url`, by default `nar/<FileHash nix32>.nar<ext>` (see narFileName).
 * When `Compression: none` and `FileHash` or `FileSize` is missing, the missing line is added after
 * `Compression`, from NarHash (as `sha256:<nix32>`) and NarSize. Every other byte stays as it was, so
 * the signature still verifies: URL, FileHash, FileSize and Compression are not in the fingerprint.
 *
 * Throws InvalidNarInfoError when the text does not parse, or when no `url` is given and the narinfo has
 * no FileHash to name the file by (a compressed file without one).
 */
export function rewriteNarInfo(text: string, url?: string): RewrittenNarInfo {
  const original = parseNarInfo(text)
  const file = impliedFile(original)
  const newUrl = url ?? (file && narFileName(file.fileHash, original.compression))
  if (newUrl === undefined) {
    throw new InvalidNarInfoError(
      `narinfo of ${original.storePath}: a ${original.compression}-compressed file without a FileHash has no name of its own`,
    )
  }
  if (newUrl === '' || /\s/.test(newUrl)) throw new InvalidNarInfoError(`'${newUrl}' is not a URL`)

  const added: string[] = []
  if (original.compression === 'none' && file) {
    if (original.fileHash === undefined) added.push(`FileHash: ${file.fileHash.toString()}`)
    if (original.fileSize === undefined) added.push(`FileSize: ${file.fileSize}`)
  }
  const lines = text.split('\n')
  const urlAt = lines.findIndex((line) => line.startsWith('URL:'))
  lines[urlAt] = `URL: ${newUrl}`
  if (added.length > 0) {
    // `Compression: none` is on a line of its own here, since the default (no line) is bzip2.
    const compressionAt = lines.findIndex((line) => line.startsWith('Compression:'))
    lines.splice(compressionAt + 1, 0, ...added)
  }
  const result: RewrittenNarInfo = { text: lines.join('\n'), original, url: newUrl }
  if (file) {
    result.fileHash = file.fileHash
    if (file.fileSize !== undefined) result.fileSize = file.fileSize
  }
  // What is served must parse as what was meant, or it is not served at all.
  const check = parseNarInfo(result.text)
  if (check.url !== newUrl) throw new InvalidNarInfoError(`the rewritten narinfo of ${original.storePath} does not parse back`)
  return result
}
