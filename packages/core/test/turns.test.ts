import { setImmediate as nextTurn } from 'node:timers/promises'
import { describe, expect, it, vi } from 'vitest'
import { TurnPacer } from '../src/turns.js'

describe('TurnPacer', () => {
  it('lets at most its units per turn go of the event loop, in the order writers asked', async () => {
    const pacer = new TurnPacer(100)
    const order: number[] = []
    const writers = Array.from({ length: 10 }, async (_, i) => {
      await pacer.take(40)
      order.push(i)
    })
    // The first turn has room for three writes of 40 (the third goes past 100 and ends the turn).
    await Promise.resolve()
    expect(order).toEqual([0, 1, 2])
    await nextTurn()
    expect(order).toEqual([0, 1, 2, 3, 4, 5])
    await Promise.all(writers)
    expect(order).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  })

  it('starts nothing in a turn given to other work, and gives up at most maxYieldedTurns in a row', async () => {
    const pacer = new TurnPacer(10, 2)
    let went = 0
    pacer.yieldTurn()
    const taken = pacer.take(1)
    expect(taken).toBeInstanceOf(Promise)
    void taken!.then(() => went++)
    await nextTurn()
    expect(went).toBe(0)
    pacer.yieldTurn()
    await nextTurn()
    expect(went).toBe(0)
    // A third turn in a row is not given up: the taker goes.
    pacer.yieldTurn()
    await nextTurn()
    expect(went).toBe(1)
    // The count starts again after a turn that went as usual.
    pacer.yieldTurn()
    expect(pacer.take(1)).toBeInstanceOf(Promise)
  })

  it('gives up no turn when maxYieldedTurns is 0, as for the byte pacer', () => {
    const pacer = new TurnPacer(100)
    pacer.yieldTurn()
    expect(pacer.take(10)).toBeUndefined()
  })

  it('never makes a writer wait while the turn has room and nobody waits', () => {
    const pacer = new TurnPacer(1000)
    expect(pacer.take(10)).toBeUndefined()
    expect(pacer.take(10)).toBeUndefined()
  })

  it('goes on sharing turns after fake timers came and went while a share was open', async () => {
    const pacer = new TurnPacer(100)
    vi.useFakeTimers()
    try {
      // This share's reset is scheduled now: with a faked setImmediate it would never run.
      expect(pacer.take(100)).toBeUndefined()
    } finally {
      vi.useRealTimers()
    }
    await nextTurn()
    expect(pacer.take(1)).toBeUndefined()
  })
})
