import { defineConfig } from 'tsup'

export default defineConfig({
  // keep `node:` specifiers: `node:sqlite` has no bare alias
  removeNodeProtocol: false,
  entry: ['src/main.ts', 'src/report-main.ts', 'src/check-main.ts', 'src/server-main.ts', 'src/core-rss-main.ts'],
  format: ['esm'],
  target: 'node22',
  sourcemap: true,
  clean: true,
})
