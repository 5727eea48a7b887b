/**
 * The bytes that verify-first buffering may hold across every request at once (`--memory-budget`). A
 * request that can't reserve its NAR's size is verified on disk instead (see spool.ts), so many clients
 * at once cost disk, never memory beyond the budget.
 */
export class MemoryBudget {
  #used = 0

  constructor(readonly limit: number) {
    if (!Number.isSafeInteger(limit) || limit < 0) throw new RangeError(`memory budget must be a whole number of bytes, got ${limit}`)
  }

  get used(): number {
    return this.#used
  }

  /** Reserves `bytes` and returns the function that gives them back (once), or undefined when they don't fit. */
  reserve(bytes: number): (() => void) | undefined {
    if (this.#used + bytes > this.limit) return undefined
    this.#used += bytes
    let released = false
    return () => {
      if (released) return
      released = true
      this.#used -= bytes
    }
  }
}
