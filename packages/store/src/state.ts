import { DatabaseSync, type StatementSync } from 'node:sqlite'
import { StoreLockedError } from './errors.js'

/** One NAR row: what the folder holds and when it was last used. */
export interface NarRow {
  file_hash: string
  name: string
  size: number
  last_used: number
}

export interface NarInfoRow {
  hash_part: string
  file_hash: string
  bytes: number
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS nars (file_hash TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, last_used INTEGER NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS narinfos (hash_part TEXT PRIMARY KEY, file_hash TEXT NOT NULL, bytes INTEGER NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS pins (file_hash TEXT PRIMARY KEY) STRICT;
`

/**
 * The store's bookkeeping in `node:sqlite`: last-use times (so LRU order survives a restart), pins, and
 * which NAR each narinfo names. The files themselves stay the truth; this is reconciled with them on open.
 *
 * It is also the folder's lock. The database runs in SQLite's EXCLUSIVE locking mode: after the first
 * write, the connection holds a POSIX lock on the file until it closes, and a second opener's first
 * write fails at once (busy timeout 0). The kernel drops that lock when the process dies, even by
 * SIGKILL, so there is no stale lock to detect and no pid to misjudge after reuse, as there is with a
 * pid file; and no mtime heartbeat to miss under a busy event loop, as with proper-lockfile.
 */
export class StoreState {
  private readonly db: DatabaseSync
  private readonly statements: Record<string, StatementSync>

  constructor(file: string, dir: string) {
    let db: DatabaseSync | undefined
    try {
      db = new DatabaseSync(file, { timeout: 0 })
      db.exec('PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = TRUNCATE; PRAGMA synchronous = NORMAL;')
      // The first write takes the exclusive lock and keeps it.
      db.exec(`BEGIN IMMEDIATE; ${SCHEMA} COMMIT;`)
    } catch (error) {
      db?.close()
      const code = (error as { errcode?: number }).errcode
      // SQLITE_BUSY (5) and SQLITE_LOCKED (6): someone else holds the lock.
      if (code === 5 || code === 6) {
        throw new StoreLockedError(`store ${dir} is in use by another process`, { dir, cause: error })
      }
      throw error
    }
    this.db = db
    this.statements = {
      nars: db.prepare('SELECT file_hash, name, size, last_used FROM nars ORDER BY last_used, file_hash'),
      putNar: db.prepare('INSERT OR REPLACE INTO nars (file_hash, name, size, last_used) VALUES (?, ?, ?, ?)'),
      touch: db.prepare('UPDATE nars SET last_used = ? WHERE file_hash = ?'),
      deleteNar: db.prepare('DELETE FROM nars WHERE file_hash = ?'),
      narInfos: db.prepare('SELECT hash_part, file_hash, bytes FROM narinfos'),
      putNarInfo: db.prepare('INSERT OR REPLACE INTO narinfos (hash_part, file_hash, bytes) VALUES (?, ?, ?)'),
      deleteNarInfo: db.prepare('DELETE FROM narinfos WHERE hash_part = ?'),
      pins: db.prepare('SELECT file_hash FROM pins'),
      pin: db.prepare('INSERT OR IGNORE INTO pins (file_hash) VALUES (?)'),
      unpin: db.prepare('DELETE FROM pins WHERE file_hash = ?'),
    }
  }

  nars(): NarRow[] {
    return this.statements.nars!.all() as unknown as NarRow[]
  }

  putNar(row: NarRow): void {
    this.statements.putNar!.run(row.file_hash, row.name, row.size, row.last_used)
  }

  deleteNar(fileHash: string): void {
    this.statements.deleteNar!.run(fileHash)
  }

  /** Writes many last-use times in one transaction: one sync for a batch of reads. */
  touch(times: Iterable<[string, number]>): void {
    this.transaction(() => {
      for (const [fileHash, at] of times) this.statements.touch!.run(at, fileHash)
    })
  }

  narInfos(): NarInfoRow[] {
    return this.statements.narInfos!.all() as unknown as NarInfoRow[]
  }

  putNarInfo(row: NarInfoRow): void {
    this.statements.putNarInfo!.run(row.hash_part, row.file_hash, row.bytes)
  }

  deleteNarInfo(hashPart: string): void {
    this.statements.deleteNarInfo!.run(hashPart)
  }

  pins(): string[] {
    return (this.statements.pins!.all() as Array<{ file_hash: string }>).map((r) => r.file_hash)
  }

  pin(fileHash: string): void {
    this.statements.pin!.run(fileHash)
  }

  unpin(fileHash: string): void {
    this.statements.unpin!.run(fileHash)
  }

  transaction(fn: () => void): void {
    this.db.exec('BEGIN')
    try {
      fn()
      this.db.exec('COMMIT')
    } catch (error) {
      this.db.exec('ROLLBACK')
      throw error
    }
  }

  close(): void {
    if (this.db.isOpen) this.db.close()
  }
}
