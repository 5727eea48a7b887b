import { once } from 'node:events'
import { createReadStream, existsSync } from 'node:fs'
import { rename, rm, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { NarraceError } from '@narrace/core'
import { normalizeLocation, openIndex, type NarIndex, type NarIndexImportResult } from '@narrace/index'
import { parse, UsageError } from './args.js'
import { makeDirectory } from './files.js'
import type { CommandIO } from './io.js'

/**
 * The index `narrace index` uses when no --index is given: `$NARRACE_INDEX`, else
 * `$XDG_DATA_HOME/narrace/index.sqlite` (`~/.local/share/narrace/index.sqlite`).
 */
export function defaultIndexPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NARRACE_INDEX) return env.NARRACE_INDEX
  const data = env.XDG_DATA_HOME || join(homedir(), '.local', 'share')
  return join(data, 'narrace', 'index.sqlite')
}

/** Opens an index for writing, making its folder first. */
export async function openIndexForWriting(path: string): Promise<NarIndex> {
  if (path !== ':memory:') await makeDirectory(dirname(path))
  return openNamed(path)
}

/** `openIndex`, with SQLite's own errors ("file is not a database") naming the file. */
function openNamed(path: string): NarIndex {
  try {
    return openIndex(path)
  } catch (error) {
    if (error instanceof NarraceError) throw error
    throw new Error(`can't open the index ${path}: ${error instanceof Error ? error.message : String(error)}`, { cause: error })
  }
}

/** Rejected lines reported one by one; past this, only the count. */
const REPORTED_LINES = 20

/**
 * Imports an NDJSON mapping file (`-` for stdin) into the index, in one transaction. Each line the
 * index rejects is reported on stderr with its number and why, as the index would reject it.
 */
export async function importMappings(file: string, indexPath: string, io: CommandIO): Promise<NarIndexImportResult> {
  const input = file === '-' ? process.stdin : createReadStream(file)
  // Opened before the index, so that a file that is not there makes no index either.
  if (input !== process.stdin) await once(input, 'open')
  const index = await openIndexForWriting(indexPath)
  try {
    const lines = createInterface({ input, crlfDelay: Infinity })
    try {
      const result = await index.import(reportRejected(lines, io), io.signal ? { signal: io.signal } : {})
      if (result.rejected > REPORTED_LINES) io.stderr.write(`… and ${result.rejected - REPORTED_LINES} more rejected lines\n`)
      io.stdout.write(`added ${result.added}, updated ${result.updated}, rejected ${result.rejected}\n`)
      return result
    } finally {
      lines.close()
    }
  } finally {
    if (input !== process.stdin) input.destroy()
    index.close()
  }
}

/** Passes every line on unchanged, and reports the first few the index will reject. */
async function* reportRejected(lines: AsyncIterable<string>, io: CommandIO): AsyncIterable<string> {
  let number = 0
  let reported = 0
  for await (const line of lines) {
    number++
    if (reported < REPORTED_LINES && line.trim() !== '') {
      try {
        normalizeLocation(JSON.parse(line))
      } catch (error) {
        reported++
        io.stderr.write(`line ${number} rejected: ${error instanceof Error ? error.message : String(error)}\n`)
      }
    }
    yield line
  }
}

/**
 * Writes every mapping in the index as NDJSON, to `file` or else to stdout; returns how many. A file is
 * written through a temporary one and a rename, so that readers never see half of it.
 */
export async function exportMappings(indexPath: string, io: CommandIO, file?: string): Promise<number> {
  if (indexPath !== ':memory:' && !existsSync(indexPath)) throw new Error(`no index at ${indexPath}`)
  const index = openNamed(indexPath)
  try {
    if (file !== undefined) {
      const count = await exportToFile(index, file, io.signal)
      io.stderr.write(`exported ${count} to ${file}\n`)
      return count
    }
    let count = 0
    for await (const line of index.export()) {
      io.signal?.throwIfAborted()
      await write(io.stdout, line + '\n')
      count++
    }
    io.stderr.write(`exported ${count}\n`)
    return count
  } finally {
    index.close()
  }
}

/** Writes the whole index as NDJSON to `path` through a temporary file; returns how many mappings. */
export async function exportToFile(index: NarIndex, path: string, signal?: AbortSignal): Promise<number> {
  const temp = `${path}.${process.pid}.tmp`
  let count = 0
  async function* lines(): AsyncIterable<string> {
    for await (const line of index.export()) {
      count++
      yield line + '\n'
    }
  }
  try {
    await writeFile(temp, lines(), signal ? { signal } : {})
    await rename(temp, path)
    return count
  } catch (error) {
    await rm(temp, { force: true })
    throw error
  }
}

/** Writes and waits for the drain when the stream asks for it, so a large export stays flat in memory. */
async function write(stream: CommandIO['stdout'], text: string): Promise<void> {
  const ok = stream.write(text)
  const emitter = stream as unknown as NodeJS.WritableStream
  if (ok === false && typeof emitter.once === 'function') {
    await new Promise<void>((resolve) => emitter.once('drain', () => resolve()))
  }
}

/** `narrace index import FILE [--index PATH]` and `narrace index export [FILE] [--index PATH]`. */
export async function indexCommand(args: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parse(args, { index: { type: 'string' } })
  const [action, ...rest] = positionals
  const indexPath = values.index ?? defaultIndexPath()
  if (action === 'import') {
    if (rest.length !== 1) throw new UsageError('index import takes one FILE (- for stdin)')
    await importMappings(rest[0]!, indexPath, io)
    return 0
  }
  if (action === 'export') {
    if (rest.length > 1) throw new UsageError('index export takes at most one FILE; without it, it writes NDJSON to stdout')
    await exportMappings(indexPath, io, rest[0])
    return 0
  }
  throw new UsageError(`index needs 'import FILE' or 'export', got '${action ?? ''}'`)
}
