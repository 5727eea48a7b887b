import { describe, expect, it } from 'vitest'
import { INGEST_TURN_BYTES, resolveNar } from '../src/index.js'
import { chunked, sample, split } from './backends.js'

const CHUNK = 64 * 1024

/**
 * Counts turns of the event loop (one more per check phase until `stop()`), and the bytes `count`ed in
 * each: `perTurn` maps a turn to its bytes.
 */
function turnCounter(): { count: (bytes: number) => void; perTurn: Map<number, number>; stop: () => void } {
  let turn = 0
  let running = true
  const perTurn = new Map<number, number>()
  const tick = (): void => {
    turn++
    if (running) setImmediate(tick)
  }
  setImmediate(tick)
  return { count: (bytes) => perTurn.set(turn, (perTurn.get(turn) ?? 0) + bytes), perTurn, stop: () => (running = false) }
}

describe('resolveNar: reading in shares of a turn', () => {
  it('reads at most INGEST_TURN_BYTES in one turn, however much the sources have ready', async () => {
    // 8 MiB, every chunk ready at once: without the share, all of it arrives in one turn.
    const { data, hash } = sample(8 * 1024 * 1024)
    const turns = turnCounter()
    let bytes = 0
    try {
      const stream = await resolveNar(hash, { backends: [chunked('ready', split(data, CHUNK))], size: data.length, verifyFirstBelow: 0 })
      for await (const chunk of stream) {
        bytes += chunk.length
        turns.count(chunk.length)
      }
    } finally {
      turns.stop()
    }
    expect(bytes).toBe(data.length)
    // The share, plus the one chunk that goes over it.
    expect(Math.max(...turns.perTurn.values())).toBeLessThanOrEqual(INGEST_TURN_BYTES + CHUNK)
    expect(turns.perTurn.size).toBeGreaterThanOrEqual(data.length / (INGEST_TURN_BYTES + CHUNK))
  })

  it('shares each turn among every download of the process', async () => {
    const files = [sample(2 * 1024 * 1024), sample(2 * 1024 * 1024), sample(2 * 1024 * 1024)]
    const turns = turnCounter()
    try {
      await Promise.all(
        files.map(async ({ data, hash }) => {
          const stream = await resolveNar(hash, { backends: [chunked('ready', split(data, CHUNK))], size: data.length, verifyFirstBelow: 0 })
          for await (const chunk of stream) turns.count(chunk.length)
        }),
      )
    } finally {
      turns.stop()
    }
    // Each download may go over the share by one chunk in a turn; together they never take three shares.
    expect(Math.max(...turns.perTurn.values())).toBeLessThanOrEqual(INGEST_TURN_BYTES + files.length * CHUNK)
  })
})
