import { defineConfig } from 'tsup'

export default defineConfig({
  // keep `node:` specifiers: `node:sqlite` has no bare alias
  removeNodeProtocol: false,
  entry: ['src/index.ts', 'src/cli.ts'],
  format: ['esm'],
  target: 'node22',
  dts: { entry: 'src/index.ts' },
  sourcemap: true,
  clean: true,
})
