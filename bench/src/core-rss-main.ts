import { createHash } from 'node:crypto'
import { resolveNar, type NarBackend } from '@narrace/core'
import { RSS_SEED, repeatedChunks } from './data.js'

/**
 * Streams a generated file of `argv[2]` bytes, whose FileHash `argv[3]` the parent computed, through
 * resolveNar in a fresh process (or, with `argv[4]` = 'hash', only hashes the same chunks), and reports
 * its RSS at the start and the highest RSS seen while streaming.
 *
 * The peak is sampled, not read from getrusage: a forked child's ru_maxrss starts from the parent's RSS
 * at fork time, so it would report the parent's memory, not this process's.
 */
const size = Number(process.argv[2])
const fileHash = process.argv[3]!
const hashOnly = process.argv[4] === 'hash'
const rssStart = process.memoryUsage.rss()
let peak = rssStart
let chunks = 0
/** Every 16th chunk (1 MiB): often enough to see any growth, cheap enough not to slow the stream. */
const sample = (): void => {
  if (++chunks % 16 === 0) peak = Math.max(peak, process.memoryUsage.rss())
}
const generated: NarBackend = {
  name: 'generated',
  async fetch(_hash, { signal }) {
    async function* body(): AsyncGenerator<Uint8Array> {
      for (const chunk of repeatedChunks(size, RSS_SEED, 64 * 1024)) {
        signal.throwIfAborted()
        yield chunk
      }
    }
    return { body: body(), offset: 0, size }
  },
}
const t0 = performance.now()
let bytes = 0
if (hashOnly) {
  const hash = createHash('sha256')
  for (const chunk of repeatedChunks(size, RSS_SEED, 64 * 1024)) {
    hash.update(chunk)
    bytes += chunk.length
    sample()
  }
  hash.digest()
} else {
  for await (const chunk of await resolveNar(fileHash, { backends: [generated], size })) {
    bytes += chunk.length
    sample()
  }
}
const ms = performance.now() - t0
peak = Math.max(peak, process.memoryUsage.rss())
process.send!({ bytes, ms, rssStart, peak })
process.disconnect()
