import { InvalidNarInfoError } from '@narrace/core'

/** The only store directory narrace serves: narinfo signatures cover full paths, so it can't be rewritten. */
export const NIX_STORE_DIR = '/nix/store'

/** Nix's base-32 alphabet, which the hash part of a store path is written in. */
const HASH_PART = /^[0-9abcdfghijklmnpqrsvwxyz]{32}$/
/** Nix's store path name: these characters, at most 211 of them. */
const NAME = /^[A-Za-z0-9+\-._?=]{1,211}$/

/** A store path split into its parts. */
export interface StorePath {
  /** `/nix/store/<hashPart>-<name>` */
  path: string
  /** `<hashPart>-<name>`, the form narinfo References use. */
  basename: string
  /** The 32 nix32 characters that name the path in a binary cache: `<hashPart>.narinfo`. */
  hashPart: string
  name: string
}

/** Whether `text` is a store hash part: exactly 32 characters of Nix's base-32 alphabet. */
export function isStoreHashPart(text: string): boolean {
  return typeof text === 'string' && HASH_PART.test(text)
}

/**
 * Splits a store path basename, `<32-char hash part>-<name>`.
 * Throws InvalidNarInfoError (NARRACE_INVALID_NARINFO) for anything else.
 */
export function parseStoreBasename(basename: string): StorePath {
  if (typeof basename !== 'string') {
    throw new InvalidNarInfoError(`a store path must be a string, got ${typeof basename}`)
  }
  const hashPart = basename.slice(0, 32)
  const name = basename.slice(33)
  if (!isStoreHashPart(hashPart) || basename[32] !== '-') {
    throw new InvalidNarInfoError(
      `'${basename}' is not a store path basename: it must start with a 32-character nix32 hash part and '-'`,
    )
  }
  // '.' and '..' would let a path name climb out of the store once joined to it.
  if (!NAME.test(name) || name === '.' || name === '..') {
    throw new InvalidNarInfoError(
      `'${basename}' has an invalid store path name '${name}': 1 to 211 characters of A-Z a-z 0-9 + - . _ ? =`,
    )
  }
  return { path: `${NIX_STORE_DIR}/${basename}`, basename, hashPart, name }
}

/**
 * Splits a full store path, `/nix/store/<32-char hash part>-<name>`. A path in another store directory,
 * or a file inside a store path, is an error: InvalidNarInfoError (NARRACE_INVALID_NARINFO).
 */
export function parseStorePath(path: string): StorePath {
  if (typeof path !== 'string') throw new InvalidNarInfoError(`a store path must be a string, got ${typeof path}`)
  const prefix = `${NIX_STORE_DIR}/`
  if (!path.startsWith(prefix)) {
    throw new InvalidNarInfoError(`'${path}' is not in ${NIX_STORE_DIR}, the only store directory narrace serves`)
  }
  const basename = path.slice(prefix.length)
  if (basename.includes('/')) {
    throw new InvalidNarInfoError(`'${path}' is a file inside a store path, not a store path`)
  }
  return parseStoreBasename(basename)
}
