#!/usr/bin/env node
import process from 'node:process'

// node:sqlite, which the mapping index needs, is there from Node 22.13 on; say so rather than fail to load.
const [major = 0, minor = 0] = process.versions.node.split('.').map(Number)
if (major < 22 || (major === 22 && minor < 13)) {
  process.stderr.write(`narrace: needs Node.js 22.13 or later; this is ${process.version}\n`)
  process.exit(1)
}
const { run } = await import('./main.js')

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
