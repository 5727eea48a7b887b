import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { pickLine } from '../src/scenarios/dht.js'

const kad = (text: string): Buffer => createHash('sha256').update(text).digest()
/** Only `kad` matters to pickLine; the key and id are what the scenario starts nodes with. */
const identity = (i: number) => ({ key: undefined as never, id: String(i), kad: kad(`peer-${i}`) })

/** XOR distance of `a` to `target`, as a big-endian hex string (compares like the number). */
const distance = (a: Buffer, target: Buffer): string => Buffer.from(a.map((byte, i) => byte ^ target[i]!)).toString('hex')

describe('pickLine', () => {
  it('picks servers each strictly nearer than the last to every key', () => {
    const pool = Array.from({ length: 32 }, (_, i) => identity(i))
    for (let trial = 0; trial < 20; trial++) {
      const keys = [kad(`file-${trial}`), kad(`root-${trial}`)]
      for (const hops of [1, 2, 3]) {
        const line = pickLine(pool, keys, hops)
        expect(line).toHaveLength(hops)
        expect(new Set(line.map((i) => i.id)).size).toBe(hops)
        for (let at = 1; at < line.length; at++) {
          for (const key of keys) expect(distance(line[at]!.kad, key) < distance(line[at - 1]!.kad, key)).toBe(true)
        }
      }
    }
  })

  it('says so when the pool holds no line that long', () => {
    expect(() => pickLine([identity(1)], [kad('file')], 2)).toThrow(/no line of 2/)
  })
})
