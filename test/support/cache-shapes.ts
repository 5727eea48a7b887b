/**
 * The binary caches real servers write, made from the Nix-made fixture caches: the files are renamed and
 * the `URL` (and for some, `FileHash`/`FileSize`/`NarHash`) lines rewritten the way each server does it.
 * None of those lines is in the signed fingerprint, so every narinfo keeps its valid Nix signature.
 */
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseNarHash } from '@narrace/core'
import { fixtures, type FixtureCompression } from '../fixtures/index.js'

export type CacheShape =
  /** Nix's own `file://`/S3 layout, `nar/<FileHash>.nar<ext>`, in each compression. */
  | 'nix-xz'
  | 'nix-zstd'
  | 'nix-bzip2'
  | 'nix-none'
  /** cachix: `nar/<uuid>.nar.zst`, with a FileHash. */
  | 'cachix'
  /** nix-serve / nix-serve-ng: `nar/<hashpart>-<narhash>.nar`, `Compression: none`, no FileHash/FileSize. */
  | 'nix-serve'
  /** harmonia: `nar/<narhash>.nar?hash=<hashpart>`, `Compression: none`, no FileHash. */
  | 'harmonia'
  /** attic: `nar/<hashpart>.nar`, NarHash and FileHash in hex. */
  | 'attic'
  /** snix nar-bridge: `nar/snix-castore/<id>?narsize=<n>`, `Compression: none`, no FileHash/FileSize. */
  | 'snix'
  /** Nix's layout with an absolute `URL` on the cache's own origin. */
  | 'absolute'

export const CACHE_SHAPES: readonly CacheShape[] = [
  'nix-xz',
  'nix-zstd',
  'nix-bzip2',
  'nix-none',
  'cachix',
  'nix-serve',
  'harmonia',
  'attic',
  'snix',
  'absolute',
]

/** The store paths every shape holds (with the diamond's references): the ones every fixture cache has. */
export const SHAPED_PATHS = ['small', '200k', 'diamond-top', 'diamond-left', 'diamond-right', 'diamond-bottom'] as const

/** One file a shaped cache serves, under its path relative to the cache, query string included. */
export interface ShapedFile {
  body: Uint8Array
  type: string
}

const SOURCE: Record<CacheShape, FixtureCompression | 'xz'> = {
  'nix-xz': 'xz',
  'nix-zstd': 'zstd',
  'nix-bzip2': 'bzip2',
  'nix-none': 'none',
  cachix: 'zstd',
  'nix-serve': 'none',
  harmonia: 'none',
  attic: 'xz',
  snix: 'none',
  absolute: 'xz',
}

function field(text: string, key: string): string | undefined {
  return new RegExp(`^${key}: (.*)$`, 'm').exec(text)?.[1]
}

function setField(text: string, key: string, value: string): string {
  return text.replace(new RegExp(`^${key}: .*$`, 'm'), `${key}: ${value}`)
}

function dropField(text: string, key: string): string {
  return text.replace(new RegExp(`^${key}: .*\n`, 'm'), '')
}

const digest = (text: string): Buffer => createHash('sha256').update(text).digest()

/** A UUID-shaped name, fixed per hash part, as cachix gives each file. */
function uuidOf(hashPart: string): string {
  const hex = digest(`cachix ${hashPart}`).toString('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`
}

/** What the narinfo becomes, and where its file goes, in one shape. */
function shapeNarInfo(shape: CacheShape, text: string, hashPart: string, cacheUrl: string): { text: string; url: string } {
  const narHash = parseNarHash(field(text, 'NarHash')!)
  const fileUrl = field(text, 'URL')!
  let out = text
  let url: string
  switch (shape) {
    case 'nix-xz':
    case 'nix-zstd':
    case 'nix-bzip2':
    case 'nix-none':
      return { text, url: fileUrl }
    case 'cachix':
      url = `nar/${uuidOf(hashPart)}.nar.zst`
      break
    case 'nix-serve':
      url = `nar/${hashPart}-${narHash.nix32}.nar`
      out = dropField(dropField(out, 'FileHash'), 'FileSize')
      break
    case 'harmonia':
      url = `nar/${narHash.nix32}.nar?hash=${hashPart}`
      out = dropField(out, 'FileHash')
      break
    case 'attic':
      url = `nar/${hashPart}.nar`
      out = setField(out, 'NarHash', `sha256:${narHash.hex}`)
      out = setField(out, 'FileHash', `sha256:${parseNarHash(field(text, 'FileHash')!).hex}`)
      break
    case 'snix': {
      const id = digest(`snix ${hashPart}`).toString('base64url')
      url = `nar/snix-castore/${id}?narsize=${field(text, 'NarSize')}`
      out = dropField(dropField(out, 'FileHash'), 'FileSize')
      break
    }
    case 'absolute':
      url = new URL(fileUrl, cacheUrl).href
      break
  }
  return { text: setField(out, 'URL', url), url }
}

/**
 * Every file of the fixture paths in `shape`, keyed by the request target relative to the cache
 * (`nar/…?query`). `cacheUrl` is where the cache is served, for the absolute shape; `only` names the
 * fixture paths it holds (of SHAPED_PATHS).
 */
export function shapedFiles(
  shape: CacheShape,
  cacheUrl: string,
  only: readonly string[] = SHAPED_PATHS,
): Map<string, ShapedFile> {
  const compression = SOURCE[shape]
  const dir = compression === 'xz' ? fixtures.cacheDir : fixtures.compressedCacheDir(compression)
  const files = new Map<string, ShapedFile>()
  files.set('nix-cache-info', { body: readFileSync(join(dir, 'nix-cache-info')), type: 'text/x-nix-cache-info' })
  const wanted = new Set(only.map((name) => fixtures.path(name).hashPart))
  for (const entry of readdirSync(dir)) {
    const hashPart = entry.replace(/\.narinfo$/, '')
    if (!entry.endsWith('.narinfo') || !wanted.has(hashPart)) continue
    const text = readFileSync(join(dir, entry), 'utf8')
    const shaped = shapeNarInfo(shape, text, hashPart, cacheUrl)
    files.set(entry, { body: Buffer.from(shaped.text), type: 'text/x-nix-narinfo' })
    const target = shaped.url.startsWith('http') ? new URL(shaped.url).href.slice(cacheUrl.length) : shaped.url
    files.set(target, { body: readFileSync(join(dir, field(text, 'URL')!)), type: 'application/x-nix-nar' })
  }
  return files
}

/** The narinfo text of a fixture path in `shape`, as a cache of that shape at `cacheUrl` serves it. */
export function shapedNarInfo(shape: CacheShape, name: string, cacheUrl = 'http://127.0.0.1:1/'): string {
  const hashPart = fixtures.path(name).hashPart
  const file = shapedFiles(shape, cacheUrl).get(`${hashPart}.narinfo`)
  if (!file) throw new Error(`${name} is not in the ${shape} cache`)
  return Buffer.from(file.body).toString('utf8')
}
