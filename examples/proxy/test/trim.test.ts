import { setTimeout as sleep } from 'node:timers/promises'
import { runInNewContext } from 'node:vm'
import { describe, expect, it, vi } from 'vitest'
import { IdleTrim, MAX_IDLE_TRIM_MS, loadCollector, loadIdleRelease, loadMallocTrim } from '../src/trim.js'

/** Runs `test` with setTimeout and performance.now() on a clock the test moves itself. */
async function onFakeClock(test: () => Promise<void>): Promise<void> {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] })
  try {
    await test()
  } finally {
    vi.useRealTimers()
  }
}

describe('IdleTrim', () => {
  it('trims once the proxy is idle, again after doubling waits, and stops when a download starts', () =>
    onFakeClock(async () => {
      let trims = 0
      const trim = new IdleTrim(20, async () => () => void trims++)
      trim.idle()
      await vi.advanceTimersByTimeAsync(5)
      expect(trims).toBe(0)
      await vi.advanceTimersByTimeAsync(20)
      expect(trims).toBe(1)
      await vi.advanceTimersByTimeAsync(40)
      expect(trims).toBe(2)
      trim.busy()
      await vi.advanceTimersByTimeAsync(1000)
      expect(trims).toBe(2)
    }))

  it('waits for a quiet moment: no trim while requests keep coming, one a quiet second after they stop', () =>
    onFakeClock(async () => {
      let trims = 0
      const trim = new IdleTrim(1000, async () => () => void trims++)
      trim.idle()
      // A request every 100 ms for 5 s.
      for (let i = 0; i < 50; i++) {
        trim.touch()
        await vi.advanceTimersByTimeAsync(100)
      }
      expect(trims).toBe(0)
      await vi.advanceTimersByTimeAsync(1000)
      expect(trims).toBe(1)
    }))

  it('puts a trim off no longer than MAX_IDLE_TRIM_MS after the proxy fell idle', () =>
    onFakeClock(async () => {
      let trims = 0
      const trim = new IdleTrim(1000, async () => () => void trims++)
      trim.idle()
      let asked = 0
      while (trims === 0 && asked < MAX_IDLE_TRIM_MS + 5000) {
        trim.touch()
        await vi.advanceTimersByTimeAsync(100)
        asked += 100
      }
      expect(trims).toBe(1)
      expect(asked).toBeGreaterThanOrEqual(MAX_IDLE_TRIM_MS)
      expect(asked).toBeLessThanOrEqual(MAX_IDLE_TRIM_MS + 1100)
      // The forced trim is the spell's last: the stream meets no other pause.
      for (let i = 0; i < 1300; i++) {
        trim.touch()
        await vi.advanceTimersByTimeAsync(100)
      }
      expect(trims).toBe(1)
    }))

  it('lets a download that starts while a trim waits for quiet cancel it', () =>
    onFakeClock(async () => {
      let trims = 0
      const trim = new IdleTrim(1000, async () => () => void trims++)
      trim.idle()
      await vi.advanceTimersByTimeAsync(900)
      trim.touch()
      // Due at 1000 ms, put off until a quiet second after the request: 1900 ms.
      await vi.advanceTimersByTimeAsync(300)
      trim.busy()
      await vi.advanceTimersByTimeAsync(10_000)
      expect(trims).toBe(0)
    }))

  it('finds glibc malloc_trim on a glibc Linux, and its call resolves once the trim is over', async () => {
    const trim = await loadMallocTrim()
    if (process.platform === 'linux' && process.report.getReport() && (process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header.glibcVersionRuntime) {
      expect(trim).toBeTypeOf('function')
      await expect(trim!()).resolves.toBeUndefined()
    }
  })

  it('collects unreachable buffers when idle, so that the trim has them to give back', async () => {
    const collect = loadCollector()
    expect(collect).toBeTypeOf('function')
    let freed = false
    const registry = new FinalizationRegistry(() => {
      freed = true
    })
    // Unreachable at once, and left alone by the young generation's collections: a large buffer.
    ;(() => registry.register(new ArrayBuffer(32 * 1024 * 1024), 'buffer'))()
    collect!()
    await sleep(10)
    expect(freed).toBe(true)
    expect(await loadIdleRelease()).toBeTypeOf('function')
  })

  it('leaves no gc global in contexts made later, which may run code of others', () => {
    expect(loadCollector()).toBeTypeOf('function')
    expect(runInNewContext('typeof gc')).toBe('undefined')
  })
})
