import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { constants, mkdtempSync, openSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
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
      // Every write goes out before the pipe is closed: closing it under a write in flight is an error.
      const drained = once(destination, 'drain')
      const line = `${'x'.repeat(1023)}\n`
      const started = performance.now()
      for (let i = 0; i < 1024; i++) destination.write(line)
      // 1 MiB of lines at once, faster than any write takes them: the call never waits for the reader.
      expect(performance.now() - started).toBeLessThan(1000)
      await drained
      // What waits never passes the 16 KiB allowed (plus the write in flight); every other line is dropped and counted.
      expect(dropped).toBeGreaterThanOrEqual(1024 - 64 - 16)
      expect(dropped).toBeLessThan(1024)
    } finally {
      destination.destroy()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
