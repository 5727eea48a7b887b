import { createHash } from 'node:crypto'
import { rm, type FileHandle } from 'node:fs/promises'
import { NarHashMismatchError, NarSizeMismatchError, parseNarHash, type NarHash } from '@narrace/core'
import type { StoreEntry } from './store.js'

export interface StoreWriterInit {
  fileHash: NarHash
  name: string
  size: number | undefined
  temp: string
  handle: FileHandle
  /** Renames the verified temporary file into place (inside the store's queue). */
  commit: (written: number) => Promise<StoreEntry>
  /** Gives back the room reserved for the file. */
  release: () => void
  done: () => void
}

/**
 * One NAR being written into a store. Bytes go to a temporary file and are hashed on the way; `commit`
 * renames the file into place only when the SHA-256 and size match, and `abort` (always safe to call)
 * removes it. No byte is ever visible under the final name before it was verified.
 */
export class StoreWriter {
  readonly fileHash: NarHash
  private readonly init: StoreWriterInit
  private readonly hasher = createHash('sha256')
  private written = 0
  private handle: FileHandle | undefined
  private settled: Promise<StoreEntry> | undefined
  private aborted = false

  constructor(init: StoreWriterInit) {
    this.init = init
    this.fileHash = init.fileHash
    this.handle = init.handle
  }

  /** Bytes written so far. */
  get bytesWritten(): number {
    return this.written
  }

  /** Appends a chunk. More bytes than the announced size fail at once (NarSizeMismatchError). */
  async write(chunk: Uint8Array): Promise<void> {
    if (!this.handle || this.settled) throw new Error(`the store writer for ${this.fileHash} is closed`)
    const size = this.init.size
    if (size !== undefined && this.written + chunk.length > size) {
      await this.abort()
      throw new NarSizeMismatchError(`${this.fileHash} is longer than its FileSize ${size}`, {
        expected: size,
        actual: this.written + chunk.length,
        hash: this.fileHash.toString(),
      })
    }
    this.written += chunk.length
    this.hasher.update(chunk)
    await this.handle.write(chunk)
  }

  /** Verifies what was written and moves it into place; the store's entry. Throws on a mismatch (nothing is kept). */
  commit(): Promise<StoreEntry> {
    this.settled ??= this.finish()
    return this.settled
  }

  private async finish(): Promise<StoreEntry> {
    const handle = this.handle
    if (!handle || this.aborted) throw new Error(`the store writer for ${this.fileHash} was aborted`)
    try {
      const size = this.init.size
      if (size !== undefined && this.written !== size) {
        throw new NarSizeMismatchError(`${this.fileHash} has ${this.written} bytes, its FileSize says ${size}`, {
          expected: size,
          actual: this.written,
          hash: this.fileHash.toString(),
        })
      }
      const actual = parseNarHash(`sha256:${this.hasher.digest('hex')}`)
      if (!actual.equals(this.fileHash)) {
        throw new NarHashMismatchError(`the bytes written to the store hash to ${actual}, not ${this.fileHash}`, {
          expected: this.fileHash.toString(),
          actual: actual.toString(),
          sources: ['store'],
        })
      }
      await handle.sync()
      await handle.close()
      this.handle = undefined
      return await this.init.commit(this.written)
    } catch (error) {
      await this.discard()
      throw error
    } finally {
      this.init.done()
    }
  }

  /** Drops what was written. A no-op after a commit. */
  async abort(): Promise<void> {
    if (this.settled) {
      await this.settled.catch(() => {})
      return
    }
    if (this.aborted) return
    this.aborted = true
    await this.discard()
    this.init.done()
  }

  private async discard(): Promise<void> {
    const handle = this.handle
    this.handle = undefined
    await handle?.close().catch(() => {})
    await rm(this.init.temp, { force: true })
    this.init.release()
  }
}
