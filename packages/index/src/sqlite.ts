import { DatabaseSync, type StatementSync } from 'node:sqlite'
import { debuglog } from 'node:util'
import { parseNarHash, type NarHash } from '@narrace/core'
import { InvalidNarLocationError, NarIndexSchemaError } from './errors.js'
import { LOCATION_KEYS, normalizeLocation, type NarLocation } from './location.js'

/** The schema this code writes. A file with a higher version is refused rather than misread. */
export const INDEX_SCHEMA_VERSION = 1

/** How long a write waits for another process holding the file's lock before it fails. @default 5000 */
export const DEFAULT_BUSY_TIMEOUT_MS = 5_000

/** Rows read per query while exporting, so that no read transaction stays open across awaits. */
const EXPORT_PAGE = 1_000

const debug = debuglog('narrace:index')

/** What one `import` did: every non-blank line is counted exactly once. */
export interface NarIndexImportResult {
  /** Lines that created a mapping. */
  added: number
  /** Lines merged into a mapping that already existed (in the index or earlier in the same import). */
  updated: number
  /** Lines that were not applied at all; `NODE_DEBUG=narrace:index` logs each one's number and reason. */
  rejected: number
}

/** The FileHash → location mapping index. */
export interface NarIndex {
  /** The mapping for this FileHash, or undefined. */
  get(hash: NarHash | string): NarLocation | undefined
  /**
   * Adds a mapping, or merges it into the existing one: the fields it gives replace the stored ones, the
   * others are kept (a new infohash without a magnet drops the old magnet). `updatedAt` defaults to now.
   * Throws InvalidNarHashError or InvalidNarLocationError for a malformed mapping.
   */
  put(location: NarLocation): void
  /** Removes the mapping; true if there was one. */
  delete(hash: NarHash | string): boolean
  /**
   * Imports NDJSON mappings in one transaction. Takes the whole text, or an iterable of strings: lines (as
   * `readline` yields them) or chunks of text that may split a line (as a stream read as UTF-8 yields them).
   * Blank lines are skipped; a bad line is rejected whole and the rest still apply. Nothing is written if
   * reading `lines` fails or `signal` aborts. Throws InvalidNarLocationError for input that is not text.
   */
  import(
    lines: string | Iterable<string> | AsyncIterable<string>,
    options?: { signal?: AbortSignal },
  ): Promise<NarIndexImportResult>
  /** Every mapping as one JSON line (no line terminator), ordered by FileHash. */
  export(): AsyncIterable<string>
  /** Closes the database; safe to call more than once. */
  close(): void
}

interface Row {
  file_hash: string
  size: number | null
  cid: string | null
  btih: string | null
  magnet: string | null
  store_path: string | null
  url: string | null
  updated_at: string
}

const COLUMNS = 'file_hash, size, cid, btih, magnet, store_path, url, updated_at'

function toLocation(row: Row): NarLocation {
  const location: NarLocation = { fileHash: row.file_hash }
  if (row.size !== null) location.size = row.size
  if (row.cid !== null) location.cid = row.cid
  if (row.btih !== null) location.btih = row.btih
  if (row.magnet !== null) location.magnet = row.magnet
  if (row.store_path !== null) location.storePath = row.store_path
  if (row.url !== null) location.url = row.url
  location.updatedAt = row.updated_at
  return location
}

/** JSON with the keys always in the same order, so exports diff cleanly. */
function toLine(location: NarLocation): string {
  const ordered: Record<string, unknown> = {}
  for (const key of LOCATION_KEYS) if (location[key] !== undefined) ordered[key] = location[key]
  return JSON.stringify(ordered)
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason
}

class SqliteNarIndex implements NarIndex {
  private readonly db: DatabaseSync
  private readonly selectOne: StatementSync
  private readonly exists: StatementSync
  private readonly upsert: StatementSync
  private readonly remove: StatementSync
  private readonly page: StatementSync
  private closed = false

  constructor(path: string) {
    this.db = new DatabaseSync(path)
    try {
      // The busy timeout comes first: switching to WAL itself may have to wait for another process.
      this.db.exec(`PRAGMA busy_timeout = ${DEFAULT_BUSY_TIMEOUT_MS}`)
      this.db.exec('PRAGMA journal_mode = WAL')
      this.db.exec('PRAGMA synchronous = NORMAL')
      this.migrate()
    } catch (error) {
      this.db.close()
      throw error
    }
    this.selectOne = this.db.prepare(`SELECT ${COLUMNS} FROM locations WHERE file_hash = ?`)
    this.exists = this.db.prepare('SELECT 1 FROM locations WHERE file_hash = ?')
    this.upsert = this.db.prepare(
      `INSERT INTO locations (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (file_hash) DO UPDATE SET
         size = coalesce(excluded.size, size),
         cid = coalesce(excluded.cid, cid),
         magnet = CASE
           WHEN excluded.magnet IS NOT NULL THEN excluded.magnet
           WHEN excluded.btih IS NOT NULL AND excluded.btih IS NOT btih THEN NULL
           ELSE magnet END,
         btih = coalesce(excluded.btih, btih),
         store_path = coalesce(excluded.store_path, store_path),
         url = coalesce(excluded.url, url),
         updated_at = excluded.updated_at`,
    )
    this.remove = this.db.prepare('DELETE FROM locations WHERE file_hash = ?')
    this.page = this.db.prepare(`SELECT ${COLUMNS} FROM locations WHERE file_hash > ? ORDER BY file_hash LIMIT ?`)
  }

  /** Creates the schema, or checks the one found. IMMEDIATE so that two processes opening a new file don't race. */
  private migrate(): void {
    this.db.exec('BEGIN IMMEDIATE')
    try {
      this.db.exec('CREATE TABLE IF NOT EXISTS narrace_schema (version INTEGER NOT NULL)')
      const row = this.db.prepare('SELECT max(version) AS version FROM narrace_schema').get() as
        | { version: number | null }
        | undefined
      const found = row?.version ?? 0
      if (found > INDEX_SCHEMA_VERSION) {
        throw new NarIndexSchemaError(
          `the index was written by a newer narrace (schema ${found}; this one reads up to ${INDEX_SCHEMA_VERSION}): upgrade narrace or use another file`,
          { found, supported: INDEX_SCHEMA_VERSION },
        )
      }
      if (found < INDEX_SCHEMA_VERSION) {
        this.db.exec(`CREATE TABLE IF NOT EXISTS locations (
          file_hash TEXT PRIMARY KEY NOT NULL,
          size INTEGER,
          cid TEXT,
          btih TEXT,
          magnet TEXT,
          store_path TEXT,
          url TEXT,
          updated_at TEXT NOT NULL
        ) WITHOUT ROWID`)
        this.db.exec('DELETE FROM narrace_schema')
        this.db.prepare('INSERT INTO narrace_schema (version) VALUES (?)').run(INDEX_SCHEMA_VERSION)
      }
      this.db.exec('COMMIT')
    } catch (error) {
      this.db.exec('ROLLBACK')
      throw error
    }
  }

  get(hash: NarHash | string): NarLocation | undefined {
    const row = this.selectOne.get(parseNarHash(hash).toString()) as Row | undefined
    return row && toLocation(row)
  }

  put(location: NarLocation): void {
    this.write(normalizeLocation(location))
  }

  private write(location: NarLocation): void {
    this.upsert.run(
      location.fileHash,
      location.size ?? null,
      location.cid ?? null,
      location.btih ?? null,
      location.magnet ?? null,
      location.storePath ?? null,
      location.url ?? null,
      location.updatedAt ?? new Date().toISOString(),
    )
  }

  delete(hash: NarHash | string): boolean {
    return Number(this.remove.run(parseNarHash(hash).toString()).changes) > 0
  }

  async import(
    lines: string | Iterable<string> | AsyncIterable<string>,
    options: { signal?: AbortSignal } = {},
  ): Promise<NarIndexImportResult> {
    const { signal } = options
    checkAborted(signal)
    // Lines are checked while reading and written afterwards in one synchronous transaction, so a slow
    // source never holds the file's write lock and nothing else on this connection lands inside it.
    const accepted: NarLocation[] = []
    let rejected = 0
    let number = 0
    const take = (line: string): void => {
      number++
      if (line.trim() === '') return
      try {
        accepted.push(normalizeLocation(JSON.parse(line)))
      } catch (error) {
        rejected++
        debug('import: line %d rejected: %s', number, error instanceof Error ? error.message : String(error))
      }
    }
    const source = typeof lines === 'string' ? [lines] : lines
    const iterable = source as Partial<AsyncIterable<string> & Iterable<string>> | null | undefined
    if (typeof iterable?.[Symbol.asyncIterator] !== 'function' && typeof iterable?.[Symbol.iterator] !== 'function') {
      throw new InvalidNarLocationError('import takes NDJSON text, or an iterable or async iterable of strings')
    }
    // Items may be whole lines (readline) or chunks that split lines anywhere (a stream read as text): the
    // text after an item's last newline waits for the next item. An item with no newline, when nothing
    // waits, is a whole line.
    let pending = ''
    for await (const item of source) {
      checkAborted(signal)
      const parts = (pending + String(item)).split('\n')
      if (parts.length === 1 && pending === '') {
        take(parts[0]!)
        continue
      }
      pending = parts.pop()!
      for (const line of parts) take(line)
    }
    if (pending !== '') take(pending)
    checkAborted(signal)
    let added = 0
    let updated = 0
    const now = new Date().toISOString()
    this.db.exec('BEGIN IMMEDIATE')
    try {
      for (const location of accepted) {
        if (this.exists.get(location.fileHash)) updated++
        else added++
        this.write({ ...location, updatedAt: location.updatedAt ?? now })
      }
      this.db.exec('COMMIT')
    } catch (error) {
      this.db.exec('ROLLBACK')
      throw error
    }
    debug('import: %d added, %d updated, %d rejected', added, updated, rejected)
    return { added, updated, rejected }
  }

  async *export(): AsyncIterable<string> {
    let after = ''
    for (;;) {
      const rows = this.page.all(after, EXPORT_PAGE) as unknown as Row[]
      for (const row of rows) yield toLine(toLocation(row))
      if (rows.length < EXPORT_PAGE) return
      after = rows.at(-1)!.file_hash
    }
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.db.close()
  }
}

/**
 * Opens (creating if needed) the mapping index at `path`, an SQLite file in WAL mode that several
 * processes may share. The default `':memory:'` keeps it in this process only.
 * Throws NarIndexSchemaError if the file was written by a newer narrace.
 */
export function openIndex(path: string = ':memory:'): NarIndex {
  return new SqliteNarIndex(path)
}
