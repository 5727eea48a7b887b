import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

const root = fileURLToPath(new URL('.', import.meta.url))

// Tests run against the sources; `pnpm build` checks the published form separately.
const packages: Record<string, string> = {
  '@narrace/core': 'packages/core/src/index.ts',
  '@narrace/narinfo': 'packages/narinfo/src/index.ts',
  '@narrace/index': 'packages/index/src/index.ts',
  '@narrace/http': 'packages/http/src/index.ts',
  '@narrace/ipfs': 'packages/ipfs/src/index.ts',
  '@narrace/torrent': 'packages/torrent/src/index.ts',
  '@narrace/store': 'packages/store/src/index.ts',
}

export default defineConfig({
  resolve: {
    alias: Object.entries(packages).map(([find, path]) => ({
      find: new RegExp(`^${find.replace('/', '\\/')}$`),
      replacement: root + path,
    })),
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'examples/*/test/**/*.test.ts', 'test/**/*.test.ts', 'bench/test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
})
