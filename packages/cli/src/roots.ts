import { readFile } from 'node:fs/promises'
import { UsageError } from './args.js'

const STORE_PATH = /^\/nix\/store\/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$/
const HASH_PART = /^[0-9a-df-np-sv-z]{32}$/

/**
 * The store paths to start a closure walk from: full store paths or 32-character hash parts, from the
 * command line and from a list file (one a line; blank lines and `#` comments are skipped).
 */
export async function readRoots(paths: string[], list?: string): Promise<string[]> {
  const roots = [...paths]
  if (list !== undefined) {
    let text: string
    try {
      text = await readFile(list, 'utf8')
    } catch (error) {
      throw new UsageError(`can't read --list ${list}: ${(error as Error).message}`)
    }
    for (const line of text.split('\n')) {
      const path = line.replace(/#.*/, '').trim()
      if (path) roots.push(path)
    }
  }
  for (const root of roots) {
    if (!STORE_PATH.test(root) && !HASH_PART.test(root)) {
      throw new UsageError(`'${root}' is neither a store path (/nix/store/<hash>-<name>) nor a 32-character hash part`)
    }
  }
  return roots.filter((r, i) => roots.indexOf(r) === i)
}
