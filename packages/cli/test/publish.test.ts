import { createHash } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { NarHashMismatchError, parseNarHash } from '@narrace/core'
import { openIndex, type NarIndex } from '@narrace/index'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { UsageError } from '../src/args.js'
import { parsePublishArgs, Publisher } from '../src/publish.js'

const hashOf = (text: string) => parseNarHash(createHash('sha256').update(text).digest('hex'))

describe('Publisher', () => {
  let index: NarIndex
  let dir: string
  beforeAll(async () => {
    index = openIndex()
    dir = await mkdtemp(join(tmpdir(), 'narrace-publisher-'))
  })
  afterAll(async () => {
    index.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('needs a target', () => {
    expect(() => new Publisher({ index })).toThrow(UsageError)
  })

  it('has nothing to do for a NAR the index already maps to a CID', async () => {
    const hash = hashOf('mapped')
    index.put({ fileHash: hash.toString(), cid: 'bafkreidumwfdaazlbmkeod2qy5wvmqj2dwbzqbsrxfacqzuk4ljxfmyrbm' })
    const publisher = new Publisher({ index, ipfsApi: 'http://127.0.0.1:1' })
    expect(publisher.needs(hash)).toBe(false)
    expect(publisher.needs(hashOf('new'))).toBe(true)
    const result = await publisher.publish({ path: join(dir, 'absent'), hash, size: 6 })
    expect(result).toEqual({ published: false, cid: 'bafkreidumwfdaazlbmkeod2qy5wvmqj2dwbzqbsrxfacqzuk4ljxfmyrbm' })
  })

  it('seeds a mapped torrent again only while it keeps seeding', () => {
    const hash = hashOf('seeded')
    index.put({ fileHash: hash.toString(), btih: 'c9e15763f722f23e98a29decdfae341b98d53056' })
    expect(new Publisher({ index, torrent: true }).needs(hash)).toBe(true)
    expect(new Publisher({ index, torrent: true, seed: false }).needs(hash)).toBe(false)
  })

  it('refuses a file whose bytes are not its FileHash before adding anything', async () => {
    const path = join(dir, 'wrong')
    await writeFile(path, 'wrong bytes')
    const hash = hashOf('right bytes')
    const publisher = new Publisher({ index, ipfsApi: 'http://127.0.0.1:1' })
    await expect(publisher.publish({ path, hash, size: 11 })).rejects.toThrow(NarHashMismatchError)
    expect(index.get(hash)).toBeUndefined()
  })
})

describe('parsePublishArgs', () => {
  it('reads a folder publish to both networks', () => {
    expect(
      parsePublishArgs([
        '--cache',
        'file:///srv/cache',
        '--index',
        'i.sqlite',
        '--ipfs-api',
        'http://127.0.0.1:5001',
        '--torrent',
        '--announce',
        'http://t/announce',
        '--export',
        'm.ndjson',
      ]),
    ).toMatchObject({
      cache: 'file:///srv/cache',
      indexPath: 'i.sqlite',
      ipfsApi: 'http://127.0.0.1:5001',
      torrent: true,
      announce: ['http://t/announce'],
      seed: true,
      exportPath: 'm.ndjson',
    })
  })

  it('reads an HTTP publish with store paths and --no-seed', () => {
    const options = parsePublishArgs([
      '--cache',
      'https://cache.example/',
      '/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt',
      '--index',
      'i',
      '--torrent',
      '--announce',
      'http://t',
      '--no-seed',
    ])
    expect(options).toMatchObject({ cache: 'https://cache.example', seed: false })
    expect(options.paths).toEqual(['/nix/store/p85hqxs52v6ycw89jwy7fm2cypjicw1v-small.txt'])
  })
})
