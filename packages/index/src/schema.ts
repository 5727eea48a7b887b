import { performance } from 'node:perf_hooks'
import { DatabaseSync } from 'node:sqlite'
import { NarIndexSchemaError } from './errors.js'

/** The schema this code writes. A file with a higher version is refused rather than misread. */
export const INDEX_SCHEMA_VERSION = 2

/** Each step takes a file from the version before it to its own; run in one write transaction. */
const MIGRATIONS: Record<number, string> = {
  1: `CREATE TABLE IF NOT EXISTS locations (
        file_hash TEXT PRIMARY KEY NOT NULL,
        size INTEGER,
        cid TEXT,
        btih TEXT,
        magnet TEXT,
        store_path TEXT,
        url TEXT,
        updated_at TEXT NOT NULL
      ) WITHOUT ROWID`,
  2: `ALTER TABLE locations ADD COLUMN status TEXT;
      ALTER TABLE locations ADD COLUMN source TEXT;
      CREATE INDEX IF NOT EXISTS locations_updated_at ON locations (updated_at, file_hash);
      CREATE INDEX IF NOT EXISTS locations_url ON locations (url);
      CREATE TABLE IF NOT EXISTS upstream_urls (
        file_hash TEXT NOT NULL,
        upstream TEXT NOT NULL,
        url TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (file_hash, upstream)
      ) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS upstream_urls_url ON upstream_urls (url);
      CREATE TABLE IF NOT EXISTS bad_addresses (
        file_hash TEXT NOT NULL,
        address TEXT NOT NULL,
        marked_at TEXT NOT NULL,
        PRIMARY KEY (file_hash, address)
      ) WITHOUT ROWID`,
}

/** The version a file has, read without a write lock; 0 for a new file. */
function versionOf(db: DatabaseSync): number {
  const table = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'narrace_schema'").get()
  if (!table) return 0
  const row = db.prepare('SELECT max(version) AS version FROM narrace_schema').get() as { version: number | null } | undefined
  return row?.version ?? 0
}

function checkNotNewer(found: number): void {
  if (found > INDEX_SCHEMA_VERSION) {
    throw new NarIndexSchemaError(
      `the index was written by a newer narrace (schema ${found}; this one reads up to ${INDEX_SCHEMA_VERSION}): upgrade narrace or use another file`,
      { found, supported: INDEX_SCHEMA_VERSION },
    )
  }
}

/**
 * Opens the file and brings its schema up to date. A current file is only read: the version check takes
 * no write lock, so opening never waits on another process that holds one. Only a new or older file is
 * migrated, under BEGIN IMMEDIATE so that two processes creating one file don't race.
 */
export function openDatabase(path: string, busyTimeoutMs: number): DatabaseSync {
  const db = new DatabaseSync(path)
  try {
    // The busy timeout comes first: switching to WAL itself may have to wait for another process.
    db.exec(`PRAGMA busy_timeout = ${busyTimeoutMs}`)
    useWal(db, busyTimeoutMs)
    db.exec('PRAGMA synchronous = NORMAL')
    const found = versionOf(db)
    checkNotNewer(found)
    if (found < INDEX_SCHEMA_VERSION) migrate(db)
  } catch (error) {
    db.close()
    throw error
  }
  return db
}

/** The error SQLite gives when another connection holds the lock it needs (SQLITE_BUSY, SQLITE_LOCKED). */
export function isBusy(error: unknown): boolean {
  const errcode = (error as { errcode?: unknown } | undefined)?.errcode
  return errcode === 5 || errcode === 6 || /database is (?:locked|busy)/i.test(String((error as Error)?.message))
}

/**
 * Puts a new file in WAL mode. Two processes that open one new file at once may both try: each holds a
 * shared lock and wants the exclusive one, and SQLite answers one of them SQLITE_BUSY at once, without
 * its busy handler, since waiting would deadlock. That one lets go, waits a moment and looks again:
 * the other has switched the file by then. Bounded by the busy timeout, like any other wait for a lock.
 */
function useWal(db: DatabaseSync, busyTimeoutMs: number): void {
  const deadline = performance.now() + busyTimeoutMs
  try {
    for (let attempt = 0; ; attempt++) {
      // Each statement may also wait in SQLite's own busy handler: it gets only the time that is left.
      db.exec(`PRAGMA busy_timeout = ${Math.max(0, Math.ceil(deadline - performance.now()))}`)
      const mode = (db.prepare('PRAGMA journal_mode').get() as { journal_mode: string }).journal_mode
      if (mode === 'wal' || mode === 'memory') return
      try {
        db.exec('PRAGMA journal_mode = WAL')
        return
      } catch (error) {
        const left = deadline - performance.now()
        if (!isBusy(error) || left <= 0) throw error
        // A synchronous pause: opening is synchronous, and this happens once, for a file nobody has set up.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Math.min(5 * 2 ** attempt, 100, left))
      }
    }
  } finally {
    db.exec(`PRAGMA busy_timeout = ${busyTimeoutMs}`)
  }
}

function migrate(db: DatabaseSync): void {
  db.exec('BEGIN IMMEDIATE')
  try {
    db.exec('CREATE TABLE IF NOT EXISTS narrace_schema (version INTEGER NOT NULL)')
    const found = versionOf(db)
    checkNotNewer(found)
    for (let version = found + 1; version <= INDEX_SCHEMA_VERSION; version++) db.exec(MIGRATIONS[version]!)
    if (found < INDEX_SCHEMA_VERSION) {
      db.exec('DELETE FROM narrace_schema')
      db.prepare('INSERT INTO narrace_schema (version) VALUES (?)').run(INDEX_SCHEMA_VERSION)
    }
    db.exec('COMMIT')
  } catch (error) {
    if (db.isTransaction) db.exec('ROLLBACK')
    throw error
  }
}
