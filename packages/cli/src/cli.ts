#!/usr/bin/env node
import { run } from './main.js'

const controller = new AbortController()
// The first Ctrl-C aborts and lets every command clean up (no partial files, torrents removed); a second one quits.
process.once('SIGINT', () => {
  controller.abort(new Error('interrupted'))
  process.once('SIGINT', () => process.exit(130))
})
process.once('SIGTERM', () => controller.abort(new Error('terminated')))

process.exitCode = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  signal: controller.signal,
})
