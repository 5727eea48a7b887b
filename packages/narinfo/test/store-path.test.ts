import { InvalidNarInfoError } from '@narrace/core'
import { isStoreHashPart, NIX_STORE_DIR, parseStoreBasename, parseStorePath } from '@narrace/narinfo'
import { describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'

describe('parseStorePath', () => {
  it('splits every fixture store path', () => {
    for (const path of fixtures.paths) {
      const parsed = parseStorePath(path.storePath)
      expect(parsed.hashPart).toBe(path.hashPart)
      expect(parsed.path).toBe(path.storePath)
      expect(`${NIX_STORE_DIR}/${parsed.basename}`).toBe(path.storePath)
      expect(parsed.name).toBe(path.storePath.slice(NIX_STORE_DIR.length + 34))
    }
  })

  it.each([
    ['another store directory', '/gnu/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt', /not in \/nix\/store/],
    ['a relative path', 'nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt', /not in \/nix\/store/],
    ['a look-alike prefix', '/nix/store2/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt', /not in \/nix\/store/],
    ['a file inside a store path', '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt/a', /inside a store path/],
    ['the store directory itself', '/nix/store/', /not a store path basename/],
    ['a short hash part', '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1-small.txt', /32-character nix32 hash part/],
    ['a letter outside nix32', '/nix/store/e85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt', /32-character nix32 hash part/],
    ['an upper-case hash part', '/nix/store/P85HQXS52V6YCW89JWY7FM2CYPJICW1V-small.txt', /32-character nix32 hash part/],
    ['no name', '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-', /invalid store path name/],
    ['no dash', '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v', /32-character nix32 hash part and '-'/],
    ['a dot-dot name', '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-..', /invalid store path name/],
    ['a space in the name', '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-a b', /invalid store path name/],
    ['a name over 211 characters', `/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-${'a'.repeat(212)}`, /invalid store path name/],
  ])('rejects %s', (_what, path, message) => {
    expect(() => parseStorePath(path)).toThrow(message)
    expect(() => parseStorePath(path)).toThrow(InvalidNarInfoError)
  })

  it('accepts every character Nix allows in a name', () => {
    expect(parseStorePath('/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-A+z-0._?=').name).toBe('A+z-0._?=')
  })
})

describe('parseStoreBasename and isStoreHashPart', () => {
  it('splits a References entry and rejects a full path there', () => {
    expect(parseStoreBasename('p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt').hashPart).toBe('p85hqxs52v6ycw89jwy7fm2cypjicw1v')
    expect(() => parseStoreBasename('/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt')).toThrow(InvalidNarInfoError)
  })

  it('tells a 32-character nix32 hash part from anything else', () => {
    expect(isStoreHashPart('p85hqxs52v6ycw89jwy7fm2cypjicw1v')).toBe(true)
    for (const bad of ['p85hqxs52v6ycw89jwy7fm2cypjicw1', 'p85hqxs52v6ycw89jwy7fm2cypjicw1vv', 'p85hqxs52v6ycw89jwy7fm2cypjicw1e', '../../../../../../../../etc/pass', '']) {
      expect(isStoreHashPart(bad)).toBe(false)
    }
    expect(isStoreHashPart(undefined as unknown as string)).toBe(false)
  })
})
