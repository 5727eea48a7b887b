// Writes mappings into a shared index file, half with put() and half through import(), for the
// two-process test. Usage: writer.ts <file> <tag> <count>
import { createHash } from 'node:crypto'
import { openIndex } from '../../src/index.js'

const [file, tag, countText] = process.argv.slice(2)
const count = Number(countText)
const hashOf = (i: number): string => `sha256:${createHash('sha256').update(`${tag}-${i}`).digest('hex')}`
const shared = `sha256:${createHash('sha256').update('shared').digest('hex')}`

const index = openIndex(file)
try {
  for (let i = 0; i < count / 2; i++) {
    index.put({ fileHash: hashOf(i), size: i, url: `nar/${tag}-${i}.nar.xz` })
    index.put({ fileHash: shared, url: `nar/${tag}.nar.xz` })
  }
  const lines: string[] = []
  for (let i = count / 2; i < count; i++) lines.push(JSON.stringify({ fileHash: hashOf(i), size: i }))
  const result = await index.import(lines.join('\n'))
  process.stdout.write(JSON.stringify(result))
} finally {
  index.close()
}
