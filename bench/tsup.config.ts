import { defineConfig } from 'tsup'
import { base } from '../tsup.base'

export default defineConfig({
  ...base,
  entry: ['src/main.ts', 'src/report-main.ts', 'src/check-main.ts', 'src/server-main.ts', 'src/shaper-main.ts', 'src/core-rss-main.ts', 'src/poll-main.ts', 'src/floor-main.ts', 'src/crowd-main.ts'],
})
