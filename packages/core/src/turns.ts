import { setImmediate } from 'node:timers'

/**
 * Shares work out among turns of the event loop: at most `perTurn` units (bytes read or written, requests
 * started) in one turn; past that, takers wait for a later turn, in the order they asked. Work that
 * completes without leaving the current tick (a write the kernel takes at once, hundreds of requests
 * parsed in one batch) would otherwise keep one tick busy for long and starve everything else: accepts,
 * `/nix-cache-info`, narinfo.
 */
export class TurnPacer {
  private used = 0
  private readonly waiting: { units: number; go: () => void }[] = []
  private scheduled = false
  /** The current turn was given to other work: nothing goes in it. */
  private yielding = false
  /** Turns given up in a row. */
  private yielded = 0

  /**
   * @param perTurn units that may go in one turn
   * @param maxYieldedTurns turns that `yieldTurn()` may take in a row; the one after goes as usual
   */
  constructor(
    readonly perTurn: number,
    readonly maxYieldedTurns = 0,
  ) {}

  /**
   * Gives the rest of the current turn to other work: nothing that asks from now on goes in it, nor do the
   * waiting takers, unless `maxYieldedTurns` turns in a row were given up already, so that a steady stream
   * of that work never starves them (a taker waits at most about `maxYieldedTurns + 1` turns per
   * `perTurn` units ahead of it).
   */
  yieldTurn(): void {
    if (this.yielded >= this.maxYieldedTurns) return
    this.yielding = true
    this.schedule()
  }

  /** Resolves when `units` may go: at once while this turn has room and was not given up, else in a later turn. */
  take(units: number): Promise<void> | undefined {
    this.schedule()
    if (!this.yielding && this.waiting.length === 0 && this.used < this.perTurn) {
      this.used += units
      return undefined
    }
    return new Promise((go) => this.waiting.push({ units, go }))
  }

  /**
   * setImmediate runs after the poll phase, so each turn's I/O and timers come between two shares. It is
   * node:timers' own, taken when this module loads: a global that a test's fake timers replace for a while
   * would keep the one call that resets the share, and every download of the process would stop for good.
   */
  private schedule(): void {
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => this.turn())
  }

  private turn(): void {
    this.scheduled = false
    this.used = 0
    if (this.yielding) {
      this.yielding = false
      if (this.waiting.length > 0) {
        this.yielded++
        this.schedule()
        return
      }
    }
    this.yielded = 0
    while (this.waiting.length > 0 && this.used < this.perTurn) {
      const next = this.waiting.shift()!
      this.used += next.units
      next.go()
    }
    if (this.waiting.length > 0) this.schedule()
  }
}
