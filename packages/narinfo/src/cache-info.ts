import { InvalidNarInfoError } from '@narrace/core'
import { lineError, splitLines } from './lines.js'

/** What a binary cache's `nix-cache-info` says about it. */
export interface CacheInfo {
  /** The store directory its paths live in; narrace serves `/nix/store` only. */
  storeDir: string
  /** Whether clients may query many paths at once, e.g. to check a closure before building. */
  wantMassQuery: boolean
  /** Lower is tried first; cache.nixos.org says 40. Missing means the client's default. */
  priority?: number
}

const WHAT = 'nix-cache-info'

/**
 * Parses a `nix-cache-info` file. StoreDir is required; unknown keys are ignored, as Nix ignores them.
 * Throws InvalidNarInfoError (NARRACE_INVALID_NARINFO) naming the line and field.
 */
export function parseCacheInfo(text: string): CacheInfo {
  let storeDir: string | undefined
  let wantMassQuery = false
  let priority: number | undefined
  for (const line of splitLines(text, WHAT, false)) {
    const value = line.value.trim()
    switch (line.key) {
      case 'StoreDir':
        if (!/^\/\S*$/.test(value)) throw lineError(WHAT, line, `'${value}' is not an absolute path`)
        storeDir = value
        break
      case 'WantMassQuery':
        if (value !== '0' && value !== '1') throw lineError(WHAT, line, `'${value}' is neither 0 nor 1`)
        wantMassQuery = value === '1'
        break
      case 'Priority':
        if (!/^-?[0-9]{1,9}$/.test(value)) throw lineError(WHAT, line, `'${value}' is not an integer`)
        priority = Number(value)
        break
    }
  }
  if (storeDir === undefined) throw new InvalidNarInfoError('nix-cache-info has no StoreDir line')
  return priority === undefined ? { storeDir, wantMassQuery } : { storeDir, wantMassQuery, priority }
}

/** Writes a `nix-cache-info` file: StoreDir, then WantMassQuery and Priority when they say something. */
export function formatCacheInfo(info: CacheInfo): string {
  let text = `StoreDir: ${info.storeDir}\n`
  if (info.wantMassQuery) text += 'WantMassQuery: 1\n'
  if (info.priority !== undefined) text += `Priority: ${info.priority}\n`
  parseCacheInfo(text)
  return text
}
