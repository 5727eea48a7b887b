import { InvalidNarInfoError } from '@narrace/core'
import { formatCacheInfo, parseCacheInfo } from '@narrace/narinfo'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'

describe('parseCacheInfo', () => {
  it('reads the nix-cache-info that nix copy wrote', () => {
    const text = readFileSync(join(fixtures.cacheDir, 'nix-cache-info'), 'utf8')
    expect(parseCacheInfo(text)).toStrictEqual({ storeDir: '/nix/store', wantMassQuery: false })
    expect(formatCacheInfo(parseCacheInfo(text))).toBe(text)
  })

  it('reads what cache.nixos.org and nix-serve write, and round-trips it', () => {
    const text = 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n'
    expect(parseCacheInfo(text)).toStrictEqual({ storeDir: '/nix/store', wantMassQuery: true, priority: 40 })
    expect(formatCacheInfo(parseCacheInfo(text))).toBe(text)
  })

  it('trims values, ignores unknown keys and takes WantMassQuery: 0 as false, as Nix does', () => {
    expect(parseCacheInfo('StoreDir:/nix/store\nWantMassQuery: 0\nPriority:  -5 \nX-Other: y\n')).toStrictEqual({
      storeDir: '/nix/store',
      wantMassQuery: false,
      priority: -5,
    })
  })

  it.each([
    ['no StoreDir', 'WantMassQuery: 1\n', /no StoreDir line/],
    ['an empty document', '', /no StoreDir line/],
    ['a relative StoreDir', 'StoreDir: nix/store\n', /line 1 \(StoreDir\)/],
    ['a WantMassQuery that is not 0 or 1', 'StoreDir: /nix/store\nWantMassQuery: yes\n', /line 2 \(WantMassQuery\)/],
    ['a Priority that is not an integer', 'StoreDir: /nix/store\nPriority: high\n', /line 2 \(Priority\)/],
    ['CRLF endings', 'StoreDir: /nix/store\r\n', /line 1 ends in CR/],
    ['an HTML page', '<html><body>Not Found</body></html>\n', /line 1 is not 'Key: value'/],
    ['a document over 1 MiB', `StoreDir: /nix/store\n${'X: y\n'.repeat(220_000)}`, /over 1048576 bytes/],
  ])('rejects %s', (_what, text, message) => {
    expect(() => parseCacheInfo(text)).toThrow(message)
    expect(() => parseCacheInfo(text)).toThrow(InvalidNarInfoError)
  })
})
