import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { constants, mkdtempSync, openSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { logDestination } from '../src/log.js'

describe('logDestination', () => {
  it('drops and counts lines once a reader that stopped leaves maxBytes waiting, never blocking the caller', async () => {
    // A pipe that nobody reads (a FIFO opened read-write, its read side never used): the kernel takes its
    // 64 KiB, then every write would have to wait.
    const dir = mkdtempSync(join(tmpdir(), 'narrace-log-'))
    const fifo = join(dir, 'stdout')
    execFileSync('mkfifo', [fifo])
    const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK)
    let dropped = 0
    const destination = logDestination(() => dropped++, fd, 16 * 1024)
    try {
      await once(destination, 'ready')
      const line = `${'x'.repeat(1023)}\n`
      const started = performance.now()
      for (let i = 0; i < 1024; i++) destination.write(line)
      // 1 MiB of lines for a pipe that takes 64 KiB: written at once, without waiting for a reader.
      expect(performance.now() - started).toBeLessThan(1000)
      await sleep(50)
      // At most the pipe's 64 KiB and the 16 KiB allowed are kept; every other line is dropped and counted.
      expect(dropped).toBeGreaterThanOrEqual(1024 - 64 - 16)
      expect(dropped).toBeLessThan(1024)
    } finally {
      destination.destroy()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
