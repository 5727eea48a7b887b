import { randomUUID } from 'node:crypto'
import { mkdirSync, readdirSync, rmSync } from 'node:fs'
import { open, rm, type FileHandle } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** Largest piece a reader takes from a spool file at once: one paced write (see send.ts). */
const READ_CHUNK = 64 * 1024

/** A byte budget shared by every download; reservations are all-or-nothing. */
export class MemoryBudget {
  used = 0
  constructor(readonly limit: number) {}

  tryReserve(bytes: number): boolean {
    if (this.used + bytes > this.limit) return false
    this.used += bytes
    return true
  }

  release(bytes: number): void {
    this.used = Math.max(0, this.used - bytes)
  }
}

/**
 * The folder this process spools into, `narrace-spool-<pid>` under the temp dir. Folders left by proxies
 * that are gone (a crash, a kill -9) are removed the first time one is made.
 */
export function spoolDirectory(parent: string = tmpdir()): string {
  for (const name of readdirSync(parent)) {
    const match = /^narrace-spool-(\d+)$/.exec(name)
    if (!match || Number(match[1]) === process.pid) continue
    if (!isAlive(Number(match[1]))) rmSync(join(parent, name), { recursive: true, force: true })
  }
  const dir = join(parent, `narrace-spool-${process.pid}`)
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  return dir
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * The bytes of one download, written once by its pump and read by any number of clients, each at its own
 * pace: in memory (within the budget) or in a temporary file. A reader never gets a byte past what is
 * safe to send: nothing before the whole file verified (`verifyFirst`), else all but the newest chunk,
 * so that a file that fails verification always reaches its clients short, never complete.
 */
export class Spool {
  length = 0
  private chunks: Uint8Array[] | undefined
  private file: FileHandle | undefined
  private lastChunk = 0
  private state: 'open' | 'verified' | 'failed' = 'open'
  private failure: unknown
  private waiters = new Set<() => void>()
  private released = false
  private path: string | undefined
  private spilling: Promise<void> | undefined

  private constructor(
    private readonly dir: string,
    /** Bytes kept in memory; past them the spool moves to a file, and `onSpill` is told. */
    private readonly memoryLimit: number,
    private readonly onSpill: () => void,
  ) {
    if (memoryLimit > 0) this.chunks = []
  }

  /**
   * A spool in memory up to `memoryLimit` bytes, then in a file under `dir` (readable by this user only);
   * with a limit of 0, in the file from the start.
   */
  static async open(dir: string, memoryLimit: number, onSpill: () => void = () => {}): Promise<Spool> {
    const spool = new Spool(dir, memoryLimit, onSpill)
    if (memoryLimit <= 0) await spool.toFile()
    return spool
  }

  get inMemory(): boolean {
    return this.chunks !== undefined
  }

  get verified(): boolean {
    return this.state === 'verified'
  }

  async append(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open' || this.released) throw new Error('the spool is closed')
    if (chunk.byteLength === 0) return
    if (this.chunks && this.length + chunk.byteLength > this.memoryLimit) await this.spill()
    if (this.chunks) this.chunks.push(chunk)
    else await this.file!.write(chunk, 0, chunk.byteLength, this.length)
    this.length += chunk.byteLength
    this.lastChunk = chunk.byteLength
    this.wake()
  }

  /** Every byte is in and the file verified: readers may take all of it. */
  finish(): void {
    if (this.state !== 'open') return
    this.state = 'verified'
    this.wake()
  }

  /** The download failed: every reader throws `error` once it has read what was safe. */
  fail(error: unknown): void {
    if (this.state !== 'open') return
    this.state = 'failed'
    this.failure = error
    this.wake()
  }

  /**
   * Moves what is in memory to a file, so that the memory is free for others: when a file outgrows its
   * share, or clients read a finished file slowly. Readers carry on from the same offset.
   */
  spill(): Promise<void> {
    this.spilling ??= (async () => {
      if (!this.chunks || this.released) return
      await this.toFile()
      let offset = 0
      for (const chunk of this.chunks) {
        await this.file!.write(chunk, 0, chunk.byteLength, offset)
        offset += chunk.byteLength
      }
      this.chunks = undefined
      this.onSpill()
    })()
    return this.spilling
  }

  private async toFile(): Promise<void> {
    this.path = join(this.dir, `${randomUUID()}.part`)
    this.file = await open(this.path, 'wx+', 0o600)
  }

  /** Frees the memory or removes the file. Readers still running throw. */
  async release(): Promise<void> {
    if (this.released) return
    this.released = true
    this.chunks = undefined
    this.wake()
    await this.spilling?.catch(() => {})
    if (this.file) {
      await this.file.close().catch(() => {})
      await rm(this.path!, { force: true })
    }
  }

  /** How far a reader may go now. */
  private safeEnd(verifyFirst: boolean): number {
    if (this.state === 'verified') return this.length
    return verifyFirst ? 0 : this.length - this.lastChunk
  }

  /** Yields the file from the start as it becomes safe to send; throws the download's error, or on abort. */
  async *read(options: { verifyFirst: boolean; signal: AbortSignal }): AsyncGenerator<Uint8Array> {
    const { verifyFirst, signal } = options
    let offset = 0
    let index = 0
    for (;;) {
      signal.throwIfAborted()
      if (this.released) throw new Error('the download was released')
      const end = this.safeEnd(verifyFirst)
      if (offset < end) {
        if (this.chunks) {
          // Readers start at 0 and take whole chunks, so the chunk index follows the offset.
          const chunk = this.chunks[index++]!
          offset += chunk.byteLength
          yield chunk
        } else {
          const size = Math.min(READ_CHUNK, end - offset)
          const buffer = Buffer.allocUnsafe(size)
          const { bytesRead } = await this.file!.read(buffer, 0, size, offset)
          if (bytesRead === 0) throw new Error('the spool file ended early')
          offset += bytesRead
          yield buffer.subarray(0, bytesRead)
        }
        continue
      }
      if (this.state === 'verified') return
      if (this.state === 'failed') throw this.failure
      await this.next(signal)
    }
  }

  private next(signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.waiters.delete(done)
        reject(signal.reason)
      }
      const done = (): void => {
        signal.removeEventListener('abort', onAbort)
        resolve()
      }
      this.waiters.add(done)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = new Set()
    for (const waiter of waiters) waiter()
  }
}
