import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'

/** Where NARs verified on disk are kept while they are checked and sent. @default $TMPDIR/narrace-proxy-spool */
export const DEFAULT_SPOOL_DIR = join(tmpdir(), 'narrace-proxy-spool')

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * A folder of this process's temporary NAR files, `<root>/<pid>`. Opening it removes the folders of
 * processes that are gone (a crash or SIGKILL leaves nothing behind for long) and this pid's own.
 */
export class Spool {
  readonly dir: string
  #next = 0

  private constructor(dir: string) {
    this.dir = dir
  }

  static async open(root: string = DEFAULT_SPOOL_DIR): Promise<Spool> {
    await mkdir(root, { recursive: true })
    for (const name of await readdir(root)) {
      const pid = Number(name)
      if (!/^\d+$/.test(name) || pid === process.pid || !alive(pid)) await rm(join(root, name), { recursive: true, force: true })
    }
    const dir = join(root, String(process.pid))
    await mkdir(dir, { recursive: true })
    return new Spool(dir)
  }

  /**
   * Writes `stream` whole to a new file and resolves with a reader of it once the stream ended, which,
   * for a NarStream, means its hash checked out. The file is removed when the reader is closed, read to
   * the end or fails, and at once if writing fails.
   */
  async verified(stream: AsyncIterable<Uint8Array>, signal: AbortSignal): Promise<Readable> {
    const path = join(this.dir, `${this.#next++}.nar`)
    try {
      await pipeline(Readable.from(stream, { objectMode: false }), createWriteStream(path), { signal })
    } catch (error) {
      await rm(path, { force: true })
      throw error
    }
    const reader = createReadStream(path)
    reader.once('close', () => void rm(path, { force: true }))
    return reader
  }

  /** Removes this process's folder. */
  async close(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true })
  }
}
