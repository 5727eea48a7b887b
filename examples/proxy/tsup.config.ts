import { defineConfig } from 'tsup'

export default defineConfig({
  // keep `node:` specifiers: `node:sqlite` has no bare alias
  removeNodeProtocol: false,
  entry: ['src/index.ts', 'src/main.ts'],
  format: ['esm'],
  target: 'node22',
  dts: true,
  sourcemap: true,
  clean: true,
})
