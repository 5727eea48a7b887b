import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { DatabaseSync } from 'node:sqlite'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import { parseNarHash, type NarHash } from '@narrace/core'
import { CID } from 'multiformats/cid'
import { create as createDigest } from 'multiformats/hashes/digest'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { INDEX_SCHEMA_VERSION, NarIndexSchemaError, openIndex, type NarLocation } from '../src/index.js'

const run = promisify(execFile)

function hashOf(text: string): NarHash {
  return parseNarHash(createHash('sha256').update(text).digest('hex'))
}

function cidOf(hash: NarHash): string {
  return CID.create(1, 0x55, createDigest(0x12, hash.bytes)).toString()
}

function btihOf(text: string): string {
  return createHash('sha1').update(text).digest('hex')
}

async function collect(lines: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = []
  for await (const line of lines) out.push(line)
  return out
}

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narrace-index-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('openIndex', () => {
  it('gets, merges, deletes', () => {
    const index = openIndex()
    try {
      const hash = hashOf('a')
      expect(index.get(hash)).toBeUndefined()
      index.put({ fileHash: hash.hex, size: 10, cid: cidOf(hash), url: 'nar/a.nar.xz' })
      const btih = btihOf('a')
      index.put({ fileHash: hash.toString(), btih, magnet: `magnet:?xt=urn:btih:${btih}`, updatedAt: '2025-01-01T00:00:00Z' })
      expect(index.get(hash)).toEqual({
        fileHash: hash.toString(),
        size: 10,
        cid: cidOf(hash),
        btih,
        magnet: `magnet:?xt=urn:btih:${btih}`,
        url: 'nar/a.nar.xz',
        updatedAt: '2025-01-01T00:00:00.000Z',
      })
      // A new infohash without a magnet must not leave the old torrent's magnet beside it.
      index.put({ fileHash: hash.sri, btih: btihOf('b') })
      expect(index.get(hash.toString())).toMatchObject({ btih: btihOf('b'), cid: cidOf(hash) })
      expect(index.get(hash)?.magnet).toBeUndefined()
      expect(index.delete(hash)).toBe(true)
      expect(index.delete(hash)).toBe(false)
      expect(index.get(hash)).toBeUndefined()
    } finally {
      index.close()
      index.close()
    }
  })

  it('round-trips through export and import, ordered by FileHash', async () => {
    const source = openIndex()
    const target = openIndex()
    try {
      const locations: NarLocation[] = []
      for (let i = 0; i < 2_500; i++) {
        const hash = hashOf(`round-${i}`)
        const btih = btihOf(`round-${i}`)
        const location: NarLocation = { fileHash: hash.toString(), size: i, cid: cidOf(hash), updatedAt: new Date(i).toISOString() }
        if (i % 2 === 0) Object.assign(location, { btih, magnet: `magnet:?xt=urn:btih:${btih}&dn=n${i}` })
        if (i % 3 === 0) location.storePath = `/nix/store/${'0'.repeat(31)}${i % 10}-pkg-${i}`
        source.put(location)
        locations.push(location)
      }
      const lines = await collect(source.export())
      expect(lines).toHaveLength(locations.length)
      const hashes = lines.map((line) => (JSON.parse(line) as NarLocation).fileHash)
      expect(hashes).toEqual([...hashes].sort())
      expect(lines.every((line) => !line.includes('\n'))).toBe(true)

      expect(await target.import(source.export())).toEqual({ added: locations.length, updated: 0, rejected: 0 })
      expect(await collect(target.export())).toEqual(lines)
      for (const location of locations) expect(target.get(location.fileHash)).toEqual(location)

      // Importing the same lines again merges into every entry and changes nothing.
      expect(await target.import(lines.join('\n'))).toEqual({ added: 0, updated: locations.length, rejected: 0 })
      expect(await collect(target.export())).toEqual(lines)
    } finally {
      source.close()
      target.close()
    }
  })

  it('imports 10,000 mappings in one go', async () => {
    const lines: string[] = []
    for (let i = 0; i < 10_000; i++) {
      const hash = hashOf(`bulk-${i}`)
      lines.push(JSON.stringify({ fileHash: hash.toString(), size: i * 1000, cid: cidOf(hash), btih: btihOf(`bulk-${i}`) }))
    }
    const index = openIndex(join(dir, 'bulk.sqlite'))
    try {
      const t0 = performance.now()
      const result = await index.import(lines.join('\n'))
      const ms = performance.now() - t0
      console.log(`imported 10,000 mappings into an SQLite file in ${ms.toFixed(0)} ms`)
      expect(result).toEqual({ added: 10_000, updated: 0, rejected: 0 })
      expect(index.get(hashOf('bulk-9999'))?.size).toBe(9_999_000)
    } finally {
      index.close()
    }
  })

  it('rejects bad lines whole, counts them exactly and applies the rest', async () => {
    const index = openIndex()
    try {
      const good = hashOf('good')
      const other = hashOf('other')
      const text = [
        JSON.stringify({ fileHash: good.toString(), size: 1 }),
        '',
        '   ',
        '{ not json',
        JSON.stringify({ fileHash: 'sha256:zzzz', size: 1 }),
        JSON.stringify({ fileHash: other.toString(), size: 5, cid: 'not-a-cid' }),
        JSON.stringify({ fileHash: other.toString(), btih: 'abc' }),
        JSON.stringify({ fileHash: other.toString(), size: -3 }),
        JSON.stringify({ fileHash: other.toString(), btih: btihOf('x'), magnet: `magnet:?xt=urn:btih:${btihOf('y')}` }),
        JSON.stringify([good.toString()]),
        JSON.stringify({ fileHash: good.toString(), url: 'nar/good.nar.xz' }),
        JSON.stringify({ fileHash: other.toString(), cid: cidOf(other) }),
        '',
      ].join('\r\n')
      expect(await index.import(text)).toEqual({ added: 2, updated: 1, rejected: 7 })
      expect(index.get(good)).toMatchObject({ size: 1, url: 'nar/good.nar.xz' })
      // None of other's bad lines left a trace: not the size of the line with the bad CID.
      expect(index.get(other)).toEqual({ fileHash: other.toString(), cid: cidOf(other), updatedAt: expect.any(String) })
    } finally {
      index.close()
    }
  })

  it('takes an async iterable of lines, and writes nothing when it fails or the signal aborts', async () => {
    const index = openIndex()
    try {
      const a = JSON.stringify({ fileHash: hashOf('a').toString(), size: 1 })
      const b = JSON.stringify({ fileHash: hashOf('b').toString(), size: 2 })
      async function* lines(fail: boolean): AsyncIterable<string> {
        yield a
        yield `${b}\n`
        if (fail) throw new Error('the source broke')
      }
      await expect(index.import(lines(true))).rejects.toThrow('the source broke')
      expect(index.get(hashOf('a'))).toBeUndefined()
      const controller = new AbortController()
      controller.abort(new Error('stop'))
      await expect(index.import(lines(false), { signal: controller.signal })).rejects.toThrow('stop')
      expect(index.get(hashOf('a'))).toBeUndefined()
      expect(await index.import(lines(false))).toEqual({ added: 2, updated: 0, rejected: 0 })
    } finally {
      index.close()
    }
  })

  it('takes a file read as text in chunks that split lines anywhere, or line by line through readline', async () => {
    const index = openIndex()
    try {
      const lines = Array.from({ length: 300 }, (_, i) =>
        JSON.stringify({ fileHash: hashOf(`chunk-${i}`).toString(), size: i }),
      )
      lines[150] = '{"fileHash": "not a hash"}'
      const file = join(dir, 'chunked.ndjson')
      await writeFile(file, `${lines.join('\n')}\n`)
      // 97-byte chunks: almost every line is split across two or three of them.
      expect(await index.import(createReadStream(file, { encoding: 'utf8', highWaterMark: 97 }))).toEqual({
        added: 299,
        updated: 0,
        rejected: 1,
      })
      expect(index.get(hashOf('chunk-299'))?.size).toBe(299)
      const byLine = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity })
      expect(await index.import(byLine)).toEqual({ added: 0, updated: 299, rejected: 1 })
      const split = [`{"fileHash": "${hashOf('first').toString()}"}\n{"fileHash":`, ` "${hashOf('last').toString()}"}`]
      expect(await index.import(split)).toEqual({ added: 2, updated: 0, rejected: 0 })
    } finally {
      index.close()
    }
  })

  it('throws InvalidNarLocationError for input that is neither text nor an iterable of it', async () => {
    const index = openIndex()
    try {
      for (const bad of [null, undefined, 42, {}]) {
        await expect(index.import(bad as never)).rejects.toMatchObject({
          name: 'InvalidNarLocationError',
          code: 'NARRACE_INVALID_LOCATION',
        })
      }
    } finally {
      index.close()
    }
  })

  it('lets two processes write the same file without losing or corrupting anything', async () => {
    const file = join(dir, 'shared.sqlite')
    const hooks = fileURLToPath(new URL('support/ts-hooks.mjs', import.meta.url))
    const writer = fileURLToPath(new URL('support/writer.ts', import.meta.url))
    const count = 2_000
    const args = (tag: string): string[] => [
      '--no-warnings',
      '--experimental-transform-types',
      '--import',
      hooks,
      writer,
      file,
      tag,
      String(count),
    ]
    const results = await Promise.all(
      ['a', 'b'].map((tag) => run(process.execPath, args(tag), { timeout: 30_000 })),
    )
    for (const { stdout } of results) expect(JSON.parse(stdout)).toEqual({ added: count / 2, updated: 0, rejected: 0 })

    const index = openIndex(file)
    try {
      const lines = await collect(index.export())
      expect(lines).toHaveLength(2 * count + 1)
    } finally {
      index.close()
    }
    const db = new DatabaseSync(file, { readOnly: true })
    try {
      expect(db.prepare('PRAGMA integrity_check').get()).toEqual({ integrity_check: 'ok' })
      expect(db.prepare('PRAGMA journal_mode').get()).toEqual({ journal_mode: 'wal' })
    } finally {
      db.close()
    }
  })

  it('refuses a file written with a newer schema, and leaves it as it was', async () => {
    const file = join(dir, 'newer.sqlite')
    const hash = hashOf('kept')
    const index = openIndex(file)
    index.put({ fileHash: hash.toString(), size: 7 })
    index.close()

    const db = new DatabaseSync(file)
    db.prepare('UPDATE narrace_schema SET version = ?').run(INDEX_SCHEMA_VERSION + 1)
    db.close()
    let error: unknown
    try {
      openIndex(file).close()
    } catch (caught) {
      error = caught
    }
    expect(error).toBeInstanceOf(NarIndexSchemaError)
    expect(error).toMatchObject({ code: 'NARRACE_INDEX_SCHEMA', found: INDEX_SCHEMA_VERSION + 1, supported: INDEX_SCHEMA_VERSION })
    expect((error as Error).message).toMatch(/newer narrace/)

    const check = new DatabaseSync(file, { readOnly: true })
    try {
      expect(check.prepare('SELECT size FROM locations').all()).toEqual([{ size: 7 }])
    } finally {
      check.close()
    }
  })
})
