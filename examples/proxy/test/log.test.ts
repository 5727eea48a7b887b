import { execFileSync } from 'node:child_process'
import { constants, mkdtempSync, openSync, readSync, rmSync } from 'node:fs'
import { Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { logDestination } from '../src/log.js'

const LINE = `${'x'.repeat(1023)}\n`

describe('logDestination', () => {
  let dir: string
  let fifo: string
  const sockets: Socket[] = []
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'narrace-log-'))
    fifo = join(dir, 'stdout')
    execFileSync('mkfifo', [fifo])
  })
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy()
    rmSync(dir, { recursive: true, force: true })
  })

  /** The write side of the FIFO as stdout is one: a pipe in a libuv stream. Opened read-write, it never fails for want of a reader. */
  function pipeOut(): Socket {
    const socket = new Socket({ fd: openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK), readable: false, writable: true })
    sockets.push(socket)
    return socket
  }

  it('drops and counts lines once a reader that stopped leaves maxBytes waiting, never blocking the caller', async () => {
    // Nobody reads: the kernel takes its 64 KiB, then every line would have to wait.
    let dropped = 0
    const out = pipeOut()
    const log = logDestination(() => dropped++, out, 16 * 1024)
    const started = performance.now()
    for (let i = 0; i < 1024; i++) log.write(LINE)
    // 1 MiB of lines at once, faster than any write takes them: the call never waits for the reader.
    expect(performance.now() - started).toBeLessThan(1000)
    // What waits never passes the 16 KiB allowed (plus the line that crossed it); the rest, past what
    // the kernel's pipe took, is dropped and counted.
    expect(out.writableLength).toBeLessThanOrEqual(16 * 1024 + LINE.length)
    expect(dropped).toBeGreaterThan(0)
    expect(dropped).toBeLessThan(1024 - 16)
    // And closing gives up at its deadline.
    const closing = performance.now()
    await log.close(200)
    expect(performance.now() - closing).toBeLessThan(5_000)
  })

  it('gives a slow reader every line, and close() resolves once they are all out', async () => {
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
    let dropped = 0
    const log = logDestination(() => dropped++, pipeOut())
    const lines = 2048
    for (let i = 0; i < lines; i++) log.write(LINE)
    // A reader that takes 64 KiB at a time with a pause between: slower than the writer, never stuck.
    let received = 0
    let reading = true
    const buffer = Buffer.alloc(64 * 1024)
    const reads = (async () => {
      while (reading) {
        try {
          received += readSync(reader, buffer)
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error
        }
        await sleep(2)
      }
    })()
    await log.close(60_000)
    // Everything written is in the pipe now; the reader takes the rest.
    for (let i = 0; i < 1000 && received < lines * LINE.length; i++) await sleep(5)
    reading = false
    await reads
    expect(dropped).toBe(0)
    expect(received).toBe(lines * LINE.length)
  })

  it('drops and counts lines once the reader is gone, without throwing', async () => {
    const out = pipeOut()
    let dropped = 0
    const log = logDestination(() => dropped++, out)
    out.destroy(new Error('EPIPE'))
    await sleep(10)
    log.write(LINE)
    expect(dropped).toBe(1)
    await log.close(60_000)
  })
})
