import { NarNotFoundError, parseNarHash, resolveNar, type NarBackend } from '@narrace/core'
import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { meterBackend } from '../src/meter.js'

function memoryBackend(name: string, chunks: Uint8Array[]): NarBackend {
  return {
    name,
    async fetch() {
      return {
        offset: 0,
        size: chunks.reduce((n, c) => n + c.length, 0),
        body: (async function* () {
          yield* chunks
        })(),
      }
    },
  }
}

describe('meterBackend', () => {
  it('counts the bytes the consumer took, per backend, and reports the size a source announced', async () => {
    const chunks = [new Uint8Array(10).fill(1), new Uint8Array(20).fill(2), new Uint8Array(5).fill(3)]
    const hash = parseNarHash(`sha256:${createHash('sha256').update(Buffer.concat(chunks)).digest('hex')}`)
    const counted = new Map<string, number>()
    const sizes: number[] = []
    const backend = meterBackend(memoryBackend('mem', chunks), {
      onSource: (_name, source) => sizes.push(source.size!),
      onBytes: (name, n) => counted.set(name, (counted.get(name) ?? 0) + n),
    })
    const missing = meterBackend(
      { name: 'none', fetch: async () => Promise.reject(new NarNotFoundError('no')) },
      { onBytes: (name, n) => counted.set(name, (counted.get(name) ?? 0) + n) },
    )
    let total = 0
    for await (const chunk of await resolveNar(hash, { backends: [backend, missing] })) total += chunk.length
    expect(total).toBe(35)
    expect(counted).toEqual(new Map([['mem', 35]]))
    expect(sizes).toEqual([35])
  })
})
