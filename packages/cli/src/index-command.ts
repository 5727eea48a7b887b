import { createReadStream, existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { openIndex, type NarIndexImportResult } from '@narrace/index'
import { parse, UsageError } from './args.js'
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
export async function openIndexForWriting(path: string): Promise<ReturnType<typeof openIndex>> {
  if (path !== ':memory:') await mkdir(dirname(path), { recursive: true })
  return openIndex(path)
}

/** Imports an NDJSON mapping file (`-` for stdin) into the index, in one transaction. */
export async function importMappings(file: string, indexPath: string, io: CommandIO): Promise<NarIndexImportResult> {
  const index = await openIndexForWriting(indexPath)
  try {
    const input = file === '-' ? process.stdin : createReadStream(file)
    const lines = createInterface({ input, crlfDelay: Infinity })
    try {
      const result = await index.import(lines, io.signal ? { signal: io.signal } : {})
      io.stdout.write(`added ${result.added}, updated ${result.updated}, rejected ${result.rejected}\n`)
      if (result.rejected > 0) io.stderr.write('NODE_DEBUG=narrace:index shows each rejected line and why\n')
      return result
    } finally {
      lines.close()
      if (input !== process.stdin) input.destroy()
    }
  } finally {
    index.close()
  }
}

/** Writes every mapping in the index to stdout as NDJSON; returns how many. */
export async function exportMappings(indexPath: string, io: CommandIO): Promise<number> {
  if (indexPath !== ':memory:' && !existsSync(indexPath)) throw new Error(`no index at ${indexPath}`)
  const index = openIndex(indexPath)
  let count = 0
  try {
    for await (const line of index.export()) {
      io.signal?.throwIfAborted()
      await write(io.stdout, line + '\n')
      count++
    }
  } finally {
    index.close()
  }
  io.stderr.write(`exported ${count}\n`)
  return count
}

/** Writes and waits for the drain when the stream asks for it, so a large export stays flat in memory. */
async function write(stream: CommandIO['stdout'], text: string): Promise<void> {
  const ok = stream.write(text)
  const emitter = stream as unknown as NodeJS.WritableStream
  if (ok === false && typeof emitter.once === 'function') {
    await new Promise<void>((resolve) => emitter.once('drain', () => resolve()))
  }
}

/** `narrace index import FILE [--index PATH]` and `narrace index export [--index PATH]`. */
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
    if (rest.length !== 0) throw new UsageError('index export takes no arguments; it writes NDJSON to stdout')
    await exportMappings(indexPath, io)
    return 0
  }
  throw new UsageError(`index needs 'import FILE' or 'export', got '${action ?? ''}'`)
}
