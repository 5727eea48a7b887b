import { setTimeout as sleep } from 'node:timers/promises'
import { runInNewContext } from 'node:vm'
import { describe, expect, it } from 'vitest'
import { IdleTrim, loadCollector, loadIdleRelease, loadMallocTrim } from '../src/trim.js'

describe('IdleTrim', () => {
  it('trims once the proxy is idle, again after doubling waits, and stops when a download starts', async () => {
    let trims = 0
    const trim = new IdleTrim(20, async () => () => void trims++)
    trim.idle()
    await sleep(5)
    expect(trims).toBe(0)
    await sleep(40)
    expect(trims).toBe(1)
    await sleep(60)
    expect(trims).toBe(2)
    trim.busy()
    await sleep(150)
    expect(trims).toBe(2)
  })

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
