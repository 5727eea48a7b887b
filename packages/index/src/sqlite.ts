import { DatabaseSync, type StatementSync } from 'node:sqlite'
import { debuglog } from 'node:util'
import { parseNarHash, type NarHash } from '@narrace/core'
import { InvalidNarLocationError } from './errors.js'
import { formatLocation, normalizeLocation, type NarLocation } from './location.js'
import { mergeLocation, withoutBad } from './merge.js'
import { openDatabase } from './schema.js'
import { WriteQueue, type IndexOp } from './queue.js'

export { INDEX_SCHEMA_VERSION } from './schema.js'

/** How long a direct write waits for another process holding the file's lock before it fails. @default 5000 */
export const DEFAULT_BUSY_TIMEOUT_MS = 5_000

/** How long `exportSince` waits for queued writes to reach the file before it reads what is there. */
const EXPORT_FLUSH_WAIT_MS = 1_000

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

export interface OpenIndexOptions {
  /**
   * Queue every write and commit it later, in one transaction per batch, never waiting on a lock another
   * process holds (a locked file makes writes late, never callers slow). Writes are still checked at
   * once, and reads see them before they reach the file. For servers; the CLI writes directly.
   * @default false
   */
  deferWrites?: boolean
}

/** The FileHash → location mapping index. */
export interface NarIndex {
  /** The mapping for this FileHash, or undefined. */
  get(hash: NarHash | string): NarLocation | undefined
  /**
   * Adds a mapping, or merges it into the existing one: the fields it gives replace the stored ones, the
   * others are kept (a new infohash without a magnet drops the old magnet). `updatedAt` defaults to now.
   * An address marked bad for this FileHash is ignored. Throws InvalidNarHashError or
   * InvalidNarLocationError for a malformed mapping.
   */
  put(location: NarLocation): void
  /** Removes the mapping (its upstream URLs and bad marks stay); true if there was one. */
  delete(hash: NarHash | string): boolean
  /** Records what `upstream`'s narinfo called this file (its `URL` line). */
  setUpstreamUrl(hash: NarHash | string, upstream: string, url: string): void
  /** Every upstream's own URL for this file, upstream → URL. */
  upstreamUrls(hash: NarHash | string): Map<string, string>
  /**
   * The FileHash of a narinfo URL the index knows, from any upstream or from a mapping's `url`: so that
   * NAR URLs that older proxies passed through unchanged still resolve.
   */
  findByUrl(url: string): NarHash | undefined
  /**
   * Marks a CID or infohash as failed verification for this FileHash: `get` no longer returns it, and no
   * later `put` or import brings it back.
   */
  markBad(hash: NarHash | string, address: { cid?: string; btih?: string }): void
  /** Marks the mapping `gone` (its publisher no longer holds the file) and drops its addresses. */
  markGone(hash: NarHash | string): void
  /**
   * Imports NDJSON mappings in one transaction. Takes the whole text, or an iterable of strings: lines (as
   * `readline` yields them) or chunks of text that may split a line (as a stream read as UTF-8 yields them).
   * Blank lines are skipped; a bad line is rejected whole and the rest still apply. Nothing is written if
   * reading `lines` fails or `signal` aborts. `source` replaces each line's own. Throws
   * InvalidNarLocationError for input that is not text. Writes directly, also with `deferWrites`.
   */
  import(
    lines: string | Iterable<string> | AsyncIterable<string>,
    options?: { signal?: AbortSignal; source?: string },
  ): Promise<NarIndexImportResult>
  /** Every mapping as one JSON line (no line terminator), ordered by FileHash. */
  export(): AsyncIterable<string>
  /** Every mapping written at or after `since`, `gone` ones included, oldest first, as JSON lines. */
  exportSince(since: Date | string): AsyncIterable<string>
  /** Resolves once every queued write is in the file (at once without `deferWrites`). */
  flush(options?: { signal?: AbortSignal }): Promise<void>
  /** Writes what is queued (waiting up to the busy timeout), then closes; safe to call more than once. */
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
  status: string | null
  source: string | null
  updated_at: string
}

/** One FileHash's state: what the ops below change, loaded from the file or built up in the queue. */
export interface IndexEntry {
  location: NarLocation | undefined
  bad: Set<string>
  urls: Map<string, string>
}

const COLUMNS = 'file_hash, size, cid, btih, magnet, store_path, url, status, source, updated_at'

function toLocation(row: Row): NarLocation {
  const location: NarLocation = { fileHash: row.file_hash }
  if (row.size !== null) location.size = row.size
  if (row.cid !== null) location.cid = row.cid
  if (row.btih !== null) location.btih = row.btih
  if (row.magnet !== null) location.magnet = row.magnet
  if (row.store_path !== null) location.storePath = row.store_path
  if (row.url !== null) location.url = row.url
  if (row.status === 'gone') location.status = 'gone'
  if (row.source !== null) location.source = row.source
  location.updatedAt = row.updated_at
  return location
}

/**
 * Applies one write to a FileHash's state: the single definition of what each write means. `now` stamps
 * what changed: the commit's time in the file, so that a row never appears with a time before it became
 * visible (readers of `exportSince` would miss it), and the op's own time while it is queued.
 */
export function applyOp(entry: IndexEntry, op: IndexOp, now: string = op.at): void {
  switch (op.kind) {
    case 'put':
      entry.location = mergeLocation(entry.location, op.location, entry.bad, now)
      return
    case 'url':
      entry.urls.set(op.upstream, op.url)
      return
    case 'bad': {
      entry.bad.add(op.address)
      if (!entry.location) return
      const kept = withoutBad(entry.location, entry.bad)
      if (kept !== entry.location && (kept.cid !== entry.location.cid || kept.btih !== entry.location.btih)) {
        entry.location = { ...kept, updatedAt: now }
      }
      return
    }
    case 'gone':
      if (entry.location) {
        entry.location = mergeLocation(entry.location, { fileHash: op.fileHash, status: 'gone' }, entry.bad, now)
      }
      return
  }
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason
}

function checkText(value: unknown, what: string, max: number): string {
  if (typeof value !== 'string' || value === '' || value.length > max || /[\s\0]/.test(value)) {
    throw new InvalidNarLocationError(`${what} must be a non-empty string of at most ${max} characters without white space`)
  }
  return value
}

class SqliteNarIndex implements NarIndex {
  private readonly db: DatabaseSync
  private readonly statements: {
    selectOne: StatementSync
    upsert: StatementSync
    remove: StatementSync
    selectBad: StatementSync
    insertBad: StatementSync
    selectUrls: StatementSync
    upsertUrl: StatementSync
    urlFromUpstreams: StatementSync
    urlFromLocations: StatementSync
    page: StatementSync
    pageSince: StatementSync
  }
  private readonly queue: WriteQueue | undefined
  private closed = false

  constructor(path: string, options: OpenIndexOptions) {
    this.db = openDatabase(path, DEFAULT_BUSY_TIMEOUT_MS)
    const db = this.db
    this.statements = {
      selectOne: db.prepare(`SELECT ${COLUMNS} FROM locations WHERE file_hash = ?`),
      upsert: db.prepare(`INSERT OR REPLACE INTO locations (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      remove: db.prepare('DELETE FROM locations WHERE file_hash = ?'),
      selectBad: db.prepare('SELECT address FROM bad_addresses WHERE file_hash = ?'),
      insertBad: db.prepare('INSERT OR IGNORE INTO bad_addresses (file_hash, address, marked_at) VALUES (?, ?, ?)'),
      selectUrls: db.prepare('SELECT upstream, url FROM upstream_urls WHERE file_hash = ? ORDER BY upstream'),
      upsertUrl: db.prepare(
        `INSERT INTO upstream_urls (file_hash, upstream, url, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (file_hash, upstream) DO UPDATE SET url = excluded.url, updated_at = excluded.updated_at`,
      ),
      urlFromUpstreams: db.prepare('SELECT file_hash FROM upstream_urls WHERE url = ? ORDER BY updated_at DESC LIMIT 1'),
      urlFromLocations: db.prepare('SELECT file_hash FROM locations WHERE url = ? LIMIT 1'),
      page: db.prepare(`SELECT ${COLUMNS} FROM locations WHERE file_hash > ? ORDER BY file_hash LIMIT ?`),
      pageSince: db.prepare(
        `SELECT ${COLUMNS} FROM locations
         WHERE updated_at > ? OR (updated_at = ? AND file_hash > ?)
         ORDER BY updated_at, file_hash LIMIT ?`,
      ),
    }
    if (options.deferWrites) {
      this.queue = new WriteQueue({
        commit: (ops) => this.commit(ops, 0),
        debug,
      })
    }
  }

  /** One FileHash's state as the file has it. */
  private load(fileHash: string): IndexEntry {
    const row = this.statements.selectOne.get(fileHash) as Row | undefined
    const bad = new Set((this.statements.selectBad.all(fileHash) as Array<{ address: string }>).map((r) => r.address))
    const urls = new Map(
      (this.statements.selectUrls.all(fileHash) as Array<{ upstream: string; url: string }>).map((r) => [r.upstream, r.url]),
    )
    return { location: row && toLocation(row), bad, urls }
  }

  private save(fileHash: string, before: IndexEntry, after: IndexEntry, at: string): void {
    const location = after.location
    if (location && location !== before.location) {
      this.statements.upsert.run(
        location.fileHash,
        location.size ?? null,
        location.cid ?? null,
        location.btih ?? null,
        location.magnet ?? null,
        location.storePath ?? null,
        location.url ?? null,
        location.status ?? null,
        location.source ?? null,
        location.updatedAt ?? at,
      )
    }
    for (const address of after.bad) if (!before.bad.has(address)) this.statements.insertBad.run(fileHash, address, at)
    for (const [upstream, url] of after.urls) {
      if (before.urls.get(upstream) !== url) this.statements.upsertUrl.run(fileHash, upstream, url, at)
    }
  }

  /**
   * Writes ops in one transaction. `busyTimeoutMs` 0 fails at once on a lock another process holds, so
   * the queue can try again later instead of blocking the event loop.
   */
  private commit(ops: readonly IndexOp[], busyTimeoutMs: number): { added: number; updated: number } {
    let added = 0
    let updated = 0
    if (busyTimeoutMs !== DEFAULT_BUSY_TIMEOUT_MS) this.db.exec(`PRAGMA busy_timeout = ${busyTimeoutMs}`)
    try {
      this.db.exec('BEGIN IMMEDIATE')
      try {
        const entries = new Map<string, { before: IndexEntry; after: IndexEntry }>()
        const at = new Date().toISOString()
        for (const op of ops) {
          let pair = entries.get(op.fileHash)
          if (!pair) {
            const before = this.load(op.fileHash)
            pair = { before, after: { location: before.location, bad: new Set(before.bad), urls: new Map(before.urls) } }
            entries.set(op.fileHash, pair)
          }
          if (op.kind === 'put') {
            if (pair.after.location) updated++
            else added++
          }
          applyOp(pair.after, op, at)
        }
        for (const [fileHash, { before, after }] of entries) this.save(fileHash, before, after, at)
        this.db.exec('COMMIT')
      } catch (error) {
        if (this.db.isTransaction) this.db.exec('ROLLBACK')
        throw error
      }
    } finally {
      if (busyTimeoutMs !== DEFAULT_BUSY_TIMEOUT_MS) this.db.exec(`PRAGMA busy_timeout = ${DEFAULT_BUSY_TIMEOUT_MS}`)
    }
    return { added, updated }
  }

  /** Queues the op, or writes it now. */
  private write(op: IndexOp): void {
    if (this.closed) throw new Error('the index is closed')
    if (this.queue) this.queue.push(op)
    else this.commit([op], DEFAULT_BUSY_TIMEOUT_MS)
  }

  /** The state reads see: the file's, with queued writes applied on top. */
  private current(fileHash: string): IndexEntry {
    const entry = this.load(fileHash)
    for (const op of this.queue?.pendingFor(fileHash) ?? []) applyOp(entry, op)
    return entry
  }

  get(hash: NarHash | string): NarLocation | undefined {
    const fileHash = parseNarHash(hash).toString()
    if (!this.queue?.pendingFor(fileHash).length) {
      const row = this.statements.selectOne.get(fileHash) as Row | undefined
      return row && toLocation(row)
    }
    return this.current(fileHash).location
  }

  put(location: NarLocation): void {
    const normalized = normalizeLocation(location)
    this.write({ kind: 'put', fileHash: normalized.fileHash, location: normalized, at: new Date().toISOString() })
  }

  delete(hash: NarHash | string): boolean {
    const fileHash = parseNarHash(hash).toString()
    const queued = this.queue?.drop(fileHash) ?? false
    return Number(this.statements.remove.run(fileHash).changes) > 0 || queued
  }

  setUpstreamUrl(hash: NarHash | string, upstream: string, url: string): void {
    const fileHash = parseNarHash(hash).toString()
    this.write({
      kind: 'url',
      fileHash,
      upstream: checkText(upstream, 'upstream', 2048),
      url: checkText(url, 'url', 4096),
      at: new Date().toISOString(),
    })
  }

  upstreamUrls(hash: NarHash | string): Map<string, string> {
    return this.current(parseNarHash(hash).toString()).urls
  }

  findByUrl(url: string): NarHash | undefined {
    const queued = this.queue?.findByUrl(url)
    if (queued) return parseNarHash(queued)
    const row = (this.statements.urlFromUpstreams.get(url) ?? this.statements.urlFromLocations.get(url)) as
      | { file_hash: string }
      | undefined
    return row && parseNarHash(row.file_hash)
  }

  markBad(hash: NarHash | string, address: { cid?: string; btih?: string }): void {
    const checked = normalizeLocation({ fileHash: hash.toString(), cid: address.cid, btih: address.btih })
    const at = new Date().toISOString()
    if (checked.cid === undefined && checked.btih === undefined) {
      throw new InvalidNarLocationError('markBad needs a cid or a btih')
    }
    for (const bad of [checked.cid, checked.btih]) {
      if (bad !== undefined) this.write({ kind: 'bad', fileHash: checked.fileHash, address: bad, at })
    }
  }

  markGone(hash: NarHash | string): void {
    this.write({ kind: 'gone', fileHash: parseNarHash(hash).toString(), at: new Date().toISOString() })
  }

  async import(
    lines: string | Iterable<string> | AsyncIterable<string>,
    options: { signal?: AbortSignal; source?: string } = {},
  ): Promise<NarIndexImportResult> {
    const { signal } = options
    checkAborted(signal)
    const source = options.source === undefined ? undefined : normalizeLocation({ fileHash: '0'.repeat(64), source: options.source }).source
    // Lines are checked while reading and written afterwards in one synchronous transaction, so a slow
    // source never holds the file's write lock and nothing else on this connection lands inside it.
    const accepted: NarLocation[] = []
    let rejected = 0
    let number = 0
    const take = (line: string): void => {
      number++
      if (line.trim() === '') return
      try {
        const location = normalizeLocation(JSON.parse(line))
        accepted.push(source === undefined ? location : { ...location, source })
      } catch (error) {
        rejected++
        debug('import: line %d rejected: %s', number, error instanceof Error ? error.message : String(error))
      }
    }
    const input = typeof lines === 'string' ? [lines] : lines
    const iterable = input as Partial<AsyncIterable<string> & Iterable<string>> | null | undefined
    if (typeof iterable?.[Symbol.asyncIterator] !== 'function' && typeof iterable?.[Symbol.iterator] !== 'function') {
      throw new InvalidNarLocationError('import takes NDJSON text, or an iterable or async iterable of strings')
    }
    // Items may be whole lines (readline) or chunks that split lines anywhere (a stream read as text): the
    // text after an item's last newline waits for the next item. An item with no newline, when nothing
    // waits, is a whole line.
    let pending = ''
    for await (const item of input) {
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
    const at = new Date().toISOString()
    const ops: IndexOp[] = accepted.map((location) => ({ kind: 'put', fileHash: location.fileHash, location, at }))
    const { added, updated } = this.commit(ops, DEFAULT_BUSY_TIMEOUT_MS)
    debug('import: %d added, %d updated, %d rejected', added, updated, rejected)
    return { added, updated, rejected }
  }

  async *export(): AsyncIterable<string> {
    let after = ''
    for (;;) {
      const rows = this.statements.page.all(after, EXPORT_PAGE) as unknown as Row[]
      for (const row of rows) yield formatLocation(toLocation(row))
      if (rows.length < EXPORT_PAGE) return
      after = rows.at(-1)!.file_hash
    }
  }

  async *exportSince(since: Date | string): AsyncIterable<string> {
    const time = since instanceof Date ? since.getTime() : Date.parse(since)
    if (Number.isNaN(time)) throw new InvalidNarLocationError(`'${String(since)}' is not a date`)
    // Queued writes are changes too: give them a moment to reach the file, but never wait on a lock for long.
    await this.queue?.drain(AbortSignal.timeout(EXPORT_FLUSH_WAIT_MS)).catch(() => {})
    let afterTime = new Date(time).toISOString()
    let afterHash = ''
    let first = true
    for (;;) {
      const rows = (
        first
          ? this.statements.pageSince.all(afterTime, afterTime, '', EXPORT_PAGE)
          : this.statements.pageSince.all(afterTime, afterTime, afterHash, EXPORT_PAGE)
      ) as unknown as Row[]
      first = false
      for (const row of rows) yield formatLocation(toLocation(row))
      if (rows.length < EXPORT_PAGE) return
      afterTime = rows.at(-1)!.updated_at
      afterHash = rows.at(-1)!.file_hash
    }
  }

  async flush(options: { signal?: AbortSignal } = {}): Promise<void> {
    checkAborted(options.signal)
    await this.queue?.drain(options.signal)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    const left = this.queue?.stop() ?? []
    if (left.length > 0) {
      try {
        this.commit(left, DEFAULT_BUSY_TIMEOUT_MS)
      } catch (error) {
        debug('close: %d queued writes lost: %s', left.length, error instanceof Error ? error.message : String(error))
      }
    }
    this.db.close()
  }
}

/**
 * Opens (creating if needed) the mapping index at `path`, an SQLite file in WAL mode that several
 * processes may share. The default `':memory:'` keeps it in this process only. The schema version is read
 * before any write lock is taken, so opening a current file never waits on another process.
 * Throws NarIndexSchemaError if the file was written by a newer narrace.
 */
export function openIndex(path: string = ':memory:', options: OpenIndexOptions = {}): NarIndex {
  return new SqliteNarIndex(path, options)
}
