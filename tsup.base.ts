import type { Options } from 'tsup'

/** What every package's build shares: ESM for Node 22+, with source maps. */
export const base = {
  format: ['esm'],
  target: 'node22',
  sourcemap: true,
  clean: true,
  // Keep `node:` specifiers: `node:sqlite` has no bare alias, and tsup strips the prefix by default.
  removeNodeProtocol: false,
} satisfies Options
