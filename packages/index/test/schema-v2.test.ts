import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { DatabaseSync } from 'node:sqlite'
import { InvalidNarHashError, parseNarHash, type NarHash } from '@narrace/core'
import { CID } from 'multiformats/cid'
import { create as createDigest } from 'multiformats/hashes/digest'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { formatLocation, INDEX_SCHEMA_VERSION, InvalidNarLocationError, openIndex } from '../src/index.js'

function hashOf(text: string): NarHash {
  return parseNarHash(createHash('sha256').update(text).digest('hex'))
}

function cidOf(text: string): string {
  return CID.create(1, 0x55, createDigest(0x12, createHash('sha256').update(text).digest())).toString()
}

function btihOf(text: string): string {
  return createHash('sha1').update(text).digest('hex')
}

async function collect(lines: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = []
  for await (const line of lines) out.push(line)
  return out
}

/** Holds the file's write lock from another connection, as another process would. */
function holdLock(file: string): { release: () => void } {
  const db = new DatabaseSync(file)
  db.exec('BEGIN EXCLUSIVE')
  return {
    release: () => {
      db.exec('COMMIT')
      db.close()
    },
  }
}

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narrace-index-v2-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('upstream URLs', () => {
  it('keeps each upstream’s own URL and finds a FileHash by any of them', () => {
    const index = openIndex()
    try {
      const hash = hashOf('u')
      index.setUpstreamUrl(hash, 'https://a.example', 'nar/3fa85f64-5717-4562-b3fc-2c963f66afa6.nar.zst')
      index.setUpstreamUrl(hash.hex, 'https://b.example', 'nar/abc-def.nar')
      index.setUpstreamUrl(hash, 'https://b.example', 'nar/abc-def2.nar')
      expect(index.upstreamUrls(hash)).toEqual(
        new Map([
          ['https://a.example', 'nar/3fa85f64-5717-4562-b3fc-2c963f66afa6.nar.zst'],
          ['https://b.example', 'nar/abc-def2.nar'],
        ]),
      )
      expect(index.findByUrl('nar/3fa85f64-5717-4562-b3fc-2c963f66afa6.nar.zst')?.toString()).toBe(hash.toString())
      expect(index.findByUrl('nar/nope.nar')).toBeUndefined()
      // The mapping's own url (what older proxies remembered) resolves too.
      const old = hashOf('old')
      index.put({ fileHash: old.toString(), url: 'nar/legacy.nar.xz?hash=x' })
      expect(index.findByUrl('nar/legacy.nar.xz?hash=x')?.toString()).toBe(old.toString())
      // URLs are hints and not a mapping: get() is unchanged by them.
      expect(index.get(hash)).toBeUndefined()
      expect(() => index.setUpstreamUrl(hash, 'https://a.example', 'nar/with space.nar')).toThrow(InvalidNarLocationError)
      expect(() => index.setUpstreamUrl(hash, '', 'nar/x.nar')).toThrow(InvalidNarLocationError)
    } finally {
      index.close()
    }
  })
})

describe('markBad and markGone', () => {
  it('drops a bad address and never takes it back, from put or import', async () => {
    const index = openIndex()
    try {
      const hash = hashOf('bad')
      const btih = btihOf('bad')
      index.put({ fileHash: hash.toString(), size: 9, cid: cidOf('bad'), btih, magnet: `magnet:?xt=urn:btih:${btih}` })
      index.markBad(hash, { cid: cidOf('bad') })
      expect(index.get(hash)).toMatchObject({ size: 9, btih })
      expect(index.get(hash)?.cid).toBeUndefined()
      index.put({ fileHash: hash.toString(), cid: cidOf('bad') })
      await index.import(JSON.stringify({ fileHash: hash.toString(), cid: cidOf('bad') }))
      expect(index.get(hash)?.cid).toBeUndefined()
      // Another CID for the same file is still welcome.
      index.put({ fileHash: hash.toString(), cid: cidOf('good') })
      expect(index.get(hash)?.cid).toBe(cidOf('good'))
      index.markBad(hash, { btih })
      expect(index.get(hash)?.btih).toBeUndefined()
      expect(index.get(hash)?.magnet).toBeUndefined()
      expect(() => index.markBad(hash, {})).toThrow(InvalidNarLocationError)
      expect(() => index.markBad(hash, { cid: 'not a cid' })).toThrow(InvalidNarLocationError)
    } finally {
      index.close()
    }
  })

  it('marks a mapping gone without its addresses, and a new address revives it', () => {
    const index = openIndex()
    try {
      const hash = hashOf('gone')
      index.put({ fileHash: hash.toString(), size: 3, cid: cidOf('gone'), btih: btihOf('gone'), storePath: '/nix/store/00000000000000000000000000000000-x' })
      index.markGone(hash)
      const gone = index.get(hash)!
      expect(gone).toMatchObject({ status: 'gone', size: 3, storePath: '/nix/store/00000000000000000000000000000000-x' })
      expect(gone.cid).toBeUndefined()
      expect(gone.btih).toBeUndefined()
      // A size-only write keeps it gone; an address brings it back.
      index.put({ fileHash: hash.toString(), size: 3 })
      expect(index.get(hash)?.status).toBe('gone')
      index.put({ fileHash: hash.toString(), cid: cidOf('gone') })
      expect(index.get(hash)?.status).toBeUndefined()
      expect(index.get(hash)?.cid).toBe(cidOf('gone'))
      index.markGone(hashOf('never seen'))
      expect(index.get(hashOf('never seen'))).toBeUndefined()
    } finally {
      index.close()
    }
  })
})

describe('exportSince', () => {
  it('yields what changed at or after a time, gone ones included, in the export format', async () => {
    const index = openIndex()
    try {
      const early = hashOf('early')
      const late = hashOf('late')
      index.put({ fileHash: early.toString(), cid: cidOf('early'), updatedAt: '2025-01-01T00:00:00Z' })
      index.put({ fileHash: late.toString(), cid: cidOf('late'), source: 'dht', updatedAt: '2025-06-01T00:00:00Z' })
      expect(await collect(index.exportSince('2025-03-01T00:00:00Z'))).toEqual([
        formatLocation({ fileHash: late.toString(), cid: cidOf('late'), source: 'dht', updatedAt: '2025-06-01T00:00:00.000Z' }),
      ])
      expect(await collect(index.exportSince(new Date('2025-06-01T00:00:00Z')))).toHaveLength(1)
      expect(await collect(index.exportSince('2024-01-01'))).toHaveLength(2)
      const since = new Date()
      index.markGone(early)
      const lines = (await collect(index.exportSince(since))).map((line) => JSON.parse(line))
      expect(lines).toEqual([expect.objectContaining({ fileHash: early.toString(), status: 'gone' })])
      await expect(collect(index.exportSince('yesterday-ish'))).rejects.toBeInstanceOf(InvalidNarLocationError)
    } finally {
      index.close()
    }
  })

  it('pages through more rows than one query reads, each once', async () => {
    const index = openIndex()
    try {
      const lines: string[] = []
      for (let i = 0; i < 2_500; i++) {
        lines.push(JSON.stringify({ fileHash: hashOf(`p${i}`).toString(), size: i, updatedAt: new Date(Date.UTC(2025, 0, 1, 0, 0, i % 7)).toISOString() }))
      }
      await index.import(lines.join('\n'))
      const out = await collect(index.exportSince('2025-01-01T00:00:00Z'))
      expect(out).toHaveLength(2_500)
      expect(new Set(out).size).toBe(2_500)
      const times = out.map((line) => JSON.parse(line).updatedAt as string)
      expect([...times].sort()).toEqual(times)
    } finally {
      index.close()
    }
  })
})

describe('deferWrites', () => {
  it('answers at once while another process holds the lock, and writes once it is free', async () => {
    const file = join(dir, 'locked.sqlite')
    openIndex(file).close()
    const lock = holdLock(file)
    let index: ReturnType<typeof openIndex> | undefined
    try {
      let started = performance.now()
      index = openIndex(file, { deferWrites: true })
      expect(performance.now() - started).toBeLessThan(50)
      const hash = hashOf('deferred')
      started = performance.now()
      for (let i = 0; i < 100; i++) {
        index.put({ fileHash: hash.toString(), size: i })
        index.setUpstreamUrl(hash, 'https://up.example', `nar/${i}.nar`)
      }
      expect(index.get(hash)).toMatchObject({ size: 99 })
      expect(index.findByUrl('nar/99.nar')?.toString()).toBe(hash.toString())
      // Give the queue time to try (and fail) a few commits against the lock.
      await new Promise((resolve) => setTimeout(resolve, 400))
      expect(performance.now() - started).toBeLessThan(1_000)
      const reader = new DatabaseSync(file, { readOnly: true })
      expect(reader.prepare('SELECT count(*) AS n FROM locations').get()).toEqual({ n: 0 })
      reader.close()
      lock.release()
      await index.flush({ signal: AbortSignal.timeout(10_000) })
      const check = new DatabaseSync(file, { readOnly: true })
      try {
        expect(check.prepare('SELECT size FROM locations').all()).toEqual([{ size: 99 }])
        expect(check.prepare('SELECT url FROM upstream_urls').all()).toEqual([{ url: 'nar/99.nar' }])
      } finally {
        check.close()
      }
    } finally {
      index?.close()
    }
  })

  it('writes what is queued on close, and rejects writes after it', () => {
    const file = join(dir, 'close.sqlite')
    const index = openIndex(file, { deferWrites: true })
    const hash = hashOf('closing')
    index.put({ fileHash: hash.toString(), cid: cidOf('closing') })
    index.markBad(hash, { cid: cidOf('closing') })
    index.close()
    expect(() => index.put({ fileHash: hash.toString() })).toThrow(/closed/)
    const again = openIndex(file)
    try {
      expect(again.get(hash)).toMatchObject({ fileHash: hash.toString() })
      expect(again.get(hash)?.cid).toBeUndefined()
    } finally {
      again.close()
    }
  })

  it('checks a write at once, before queueing it', () => {
    const index = openIndex(':memory:', { deferWrites: true })
    try {
      expect(() => index.put({ fileHash: 'nope' })).toThrow(InvalidNarHashError)
      expect(() => index.put({ fileHash: hashOf('x').toString(), cid: 'nope' })).toThrow(InvalidNarLocationError)
    } finally {
      index.close()
    }
  })
})

describe('schema', () => {
  it('upgrades a version-1 file in place and keeps its mappings', () => {
    const file = join(dir, 'v1.sqlite')
    const db = new DatabaseSync(file)
    db.exec(`CREATE TABLE narrace_schema (version INTEGER NOT NULL);
      INSERT INTO narrace_schema (version) VALUES (1);
      CREATE TABLE locations (file_hash TEXT PRIMARY KEY NOT NULL, size INTEGER, cid TEXT, btih TEXT, magnet TEXT,
        store_path TEXT, url TEXT, updated_at TEXT NOT NULL) WITHOUT ROWID`)
    const hash = hashOf('v1')
    db.prepare('INSERT INTO locations (file_hash, size, url, updated_at) VALUES (?, ?, ?, ?)').run(
      hash.toString(),
      5,
      'nar/old.nar.xz',
      '2025-01-01T00:00:00.000Z',
    )
    db.close()
    const index = openIndex(file)
    try {
      expect(index.get(hash)).toEqual({ fileHash: hash.toString(), size: 5, url: 'nar/old.nar.xz', updatedAt: '2025-01-01T00:00:00.000Z' })
      expect(index.findByUrl('nar/old.nar.xz')?.toString()).toBe(hash.toString())
    } finally {
      index.close()
    }
    const check = new DatabaseSync(file, { readOnly: true })
    try {
      expect(check.prepare('SELECT version FROM narrace_schema').all()).toEqual([{ version: INDEX_SCHEMA_VERSION }])
    } finally {
      check.close()
    }
  })
})
