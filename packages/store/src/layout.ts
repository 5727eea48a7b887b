import { InvalidNarInfoError, parseNarHash, type NarHash } from '@narrace/core'
import { impliedFile, isStoreHashPart, narFileName, type NarInfo } from '@narrace/narinfo'
import { InvalidNarUrlError } from './errors.js'

/** A NAR file name as Nix writes it: the FileHash in nix32, `.nar`, and one of its extensions. */
const NAR_NAME = /^([0-9abcdfghijklmnpqrsvwxyz]{52})\.nar(\.xz|\.bz2|\.zst|\.lzip|\.lz4|\.br)?$/

/**
 * The FileHash a NAR file name stands for, when the name is one Nix writes; `undefined` for any other
 * name (temporary files, files someone else put there).
 */
export function parseNarFileName(name: string): NarHash | undefined {
  const match = NAR_NAME.exec(name)
  return match ? parseNarHash(match[1]!) : undefined
}

/**
 * Checks that a narinfo URL can be taken as a hint for where its NAR is: no dot segment, no backslash,
 * no control character, no absolute file path. A URL that tries to climb out of a cache is hostile, and
 * the narinfo is refused with InvalidNarUrlError. (An http(s) URL on another origin is the fetcher's
 * business; a cache folder never writes there.)
 */
export function checkNarInfoUrl(url: string): void {
  const refuse = (why: string): never => {
    throw new InvalidNarUrlError(`narinfo URL ${JSON.stringify(url.slice(0, 200))} ${why}`, { url })
  }
  if (typeof url !== 'string' || url === '') refuse('is empty')
  if (/[\0-\x1f\x7f\\]/.test(url)) refuse('has a control character or a backslash')
  const path = url.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]*/i, '').split(/[?#]/)[0]!
  if (/^[a-z][a-z0-9+.-]*:/i.test(path)) refuse('has a scheme but no host')
  if (!/^https?:\/\//i.test(url) && path.startsWith('/')) refuse('is an absolute path')
  for (const segment of path.split('/')) {
    // Percent-encoded dots climb too once a server decodes them.
    const decoded = segment.replace(/%2e/gi, '.')
    if (decoded === '.' || decoded === '..') refuse('has a dot segment, which would climb out of the cache')
  }
}

/** The parts of a narinfo a cache folder needs: the FileHash to verify by and the NAR's name there. */
export interface NarInfoFile {
  hashPart: string
  fileHash: NarHash
  /** `nar/<FileHash nix32>.nar<ext>` */
  url: string
}

/**
 * Where a narinfo's NAR goes in a cache folder narrace writes: always `nar/<FileHash>.nar<ext>`, whatever
 * the upstream called it. Throws InvalidNarUrlError for a URL that tries to climb, and InvalidNarInfoError
 * for a narinfo without a FileHash (its bytes could not be verified).
 */
export function narInfoFile(narInfo: NarInfo): NarInfoFile {
  checkNarInfoUrl(narInfo.url)
  // `Compression: none` implies the FileHash: the file is the NAR itself.
  const fileHash = impliedFile(narInfo)?.fileHash
  if (!fileHash) throw new InvalidNarInfoError(`the narinfo of ${narInfo.storePath} has no FileHash to verify its NAR by`)
  const hashPart = narInfo.storePath.slice(narInfo.storePath.lastIndexOf('/') + 1, narInfo.storePath.lastIndexOf('/') + 33)
  if (!isStoreHashPart(hashPart)) throw new InvalidNarInfoError(`'${narInfo.storePath}' has no store hash part`)
  return { hashPart, fileHash, url: narFileName(fileHash, narInfo.compression) }
}
