import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { isMainThread } from 'node:worker_threads'

/** How long the proxy is without a download before it first hands freed memory back to the system. @default 1000 */
export const DEFAULT_IDLE_TRIM_MS = 1_000

/** Idle trims go on, each after twice the wait of the one before, up to this wait. @default 60000 */
export const MAX_IDLE_TRIM_MS = 60_000

/**
 * glibc's `malloc_trim(0)`, run on a thread of koffi's own; undefined where there is none (musl, macOS,
 * no prebuilt koffi). Resolves when the trim is over.
 *
 * Bodies arrive in 64 KiB socket buffers that glibc takes from the middle of its heap. Once a burst is
 * over and they are freed, glibc returns to the system only the free memory at the top of the heap,
 * so a proxy that held its memory budget stays that large for good; `malloc_trim` gives back every
 * free page. The buffers are freed by V8's garbage collector whenever it runs, hence the repeats. On the
 * main thread, the first trim after 500 clients took up to 19 ms: a turn that a request waited behind.
 */
export async function loadMallocTrim(): Promise<(() => Promise<void>) | undefined> {
  if (process.platform !== 'linux') return undefined
  try {
    // Only glibc has this library name and this function; anything else throws here.
    const { default: koffi } = await import('koffi')
    const trim = koffi.load('libc.so.6').func('int malloc_trim(size_t pad)')
    return () =>
      new Promise<void>((resolve) => {
        try {
          trim.async(0, () => resolve())
        } catch {
          // koffi's queue of calls is full, or the call is refused: no trim this time.
          resolve()
        }
      })
  } catch {
    return undefined
  }
}

/**
 * V8's full collection as a function, or undefined where it cannot be had. The socket buffers of a burst
 * that lived long enough to reach the old generation stay allocated, though unreachable, until V8 next
 * marks the whole heap, and an idle proxy allocates too little to start that for many seconds: nothing
 * is free for `malloc_trim` to give back until then. `--expose-gc` is on only while the one context made
 * here is made: later vm contexts and workers, which may run others' code, get no `gc`.
 */
export function loadCollector(): (() => void) | undefined {
  // Started with --expose-gc: the global is there already, and the flag stays as the user set it.
  const own: unknown = (globalThis as { gc?: unknown }).gc
  if (typeof own === 'function') return () => void own()
  // Setting a flag after V8 froze them ends the process, past any catch. A worker can't see how its
  // process was started, so only the main thread sets one.
  if (!isMainThread || process.execArgv.some((arg) => /^--?freeze[-_]flags[-_]after[-_]init(?:=|$)/.test(arg))) {
    return undefined
  }
  try {
    setFlagsFromString('--expose-gc')
    try {
      const gc: unknown = runInNewContext('gc')
      return typeof gc === 'function' ? () => void gc() : undefined
    } finally {
      setFlagsFromString('--no-expose-gc')
    }
  } catch {
    return undefined
  }
}

/** What an idle proxy runs to hand memory back: a full collection, then `malloc_trim` where there is one. */
export async function loadIdleRelease(): Promise<(() => void) | undefined> {
  const collect = loadCollector()
  const trim = await loadMallocTrim()
  if (!collect && !trim) return undefined
  return () => {
    collect?.()
    void trim?.()
  }
}

/**
 * Trims the allocator's free memory while the proxy has no download: first `firstMs` after the last
 * one ended, then after each wait doubled while it stays within `MAX_IDLE_TRIM_MS` (by default at 1, 3, 7,
 * 15, 31 and 63 s), and then no more. A new download stops the trims.
 *
 * Each trim waits for a quiet moment, `firstMs` without a request begun (see `touch`): its full
 * collection holds the event loop for 15-25 ms after a burst (81 ms on a core shared with the burst's
 * clients), and a request that came meanwhile waited for it. Clients still reading their last bytes from
 * the kernel's buffers, a second after the proxy wrote them, are still asking. A steady stream of
 * requests puts a trim off until `MAX_IDLE_TRIM_MS` after the proxy fell idle, no longer; the trim it
 * then forces is the spell's last, so that the stream meets one pause, not one for every trim after.
 */
export class IdleTrim {
  private timer: NodeJS.Timeout | undefined
  /** Counts idle spells, so that a trim of an earlier one never goes on into a later one. */
  private spell = 0
  private idleSince = 0
  private lastRequest = -Infinity
  private trim: Promise<(() => void) | undefined> | undefined

  constructor(
    private readonly firstMs: number = DEFAULT_IDLE_TRIM_MS,
    /** Where the trim comes from (tests pass their own). */
    private readonly load: () => Promise<(() => void) | undefined> = loadIdleRelease,
  ) {}

  busy(): void {
    this.spell++
    clearTimeout(this.timer)
    this.timer = undefined
  }

  idle(): void {
    this.busy()
    this.idleSince = performance.now()
    this.schedule(this.spell, this.firstMs, this.firstMs)
  }

  /** A request began: the next trim waits until `firstMs` have gone by without one. */
  touch(): void {
    this.lastRequest = performance.now()
  }

  /** Arms the trim `delay` from now; `wait` is the gap it doubles from. */
  private schedule(spell: number, wait: number, delay: number): void {
    this.timer = setTimeout(() => {
      const now = performance.now()
      const quietFor = now - this.lastRequest
      const forced = quietFor < this.firstMs
      if (forced && now - this.idleSince < MAX_IDLE_TRIM_MS) {
        this.schedule(spell, wait, this.firstMs - quietFor)
        return
      }
      this.trim ??= this.load()
      void this.trim.then((trim) => {
        if (!trim || spell !== this.spell) return
        trim()
        if (!forced && wait * 2 <= MAX_IDLE_TRIM_MS) this.schedule(spell, wait * 2, wait * 2)
      })
    }, delay)
    // Never keeps the process alive.
    this.timer.unref()
  }
}
