import { existsSync } from 'node:fs'
import { copyFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseNarHash } from '@narrace/core'
import { openIndex, type NarIndex } from '@narrace/index'
import { publishToTorrent, torrentBackend } from '../src/index.js'
import { collect, newClient, startTracker, tempDir, waitFor, writeNar, type Tracker } from './swarm.js'

let tracker: Tracker
let seeder: ReturnType<typeof newClient>
let dir: Awaited<ReturnType<typeof tempDir>>
let index: NarIndex

beforeAll(async () => {
  tracker = await startTracker()
  seeder = newClient()
  dir = await tempDir('narrace-publish-test-')
  index = openIndex(':memory:')
})

afterAll(async () => {
  await seeder?.close()
  await tracker?.close()
  index?.close()
  await dir?.remove()
})

describe('publishToTorrent', () => {
  it('seeds one file named <nix32>.nar.xz and records btih, magnet and size under its FileHash', async () => {
    const nar = await writeNar(dir.path, 100 * 1024)
    const { infoHash, magnet } = await publishToTorrent(nar.path, { index, client: seeder, announce: tracker.announce })
    expect(infoHash).toMatch(/^[0-9a-f]{40}$/)
    const params = new URLSearchParams(magnet.slice('magnet:?'.length))
    expect(params.get('xt')).toBe(`urn:btih:${infoHash}`)
    expect(params.get('dn')).toBe(`${nar.hash.nix32}.nar.xz`)
    expect(params.getAll('tr')).toEqual(tracker.announce)
    expect(index.get(nar.hash)).toMatchObject({ fileHash: nar.hash.toString(), btih: infoHash, magnet, size: nar.bytes.length })
    const torrent = seeder.torrents.find((t) => t.infoHash === infoHash)!
    expect(torrent.files.map((f) => [f.name, f.length])).toEqual([[`${nar.hash.nix32}.nar.xz`, nar.bytes.length]])
  })

  it('takes the FileHash as given instead of hashing the file', async () => {
    const nar = await writeNar(dir.path, 1000)
    const claimed = parseNarHash('sha256:' + '0'.repeat(64))
    const { infoHash } = await publishToTorrent(nar.path, { index, client: seeder, announce: tracker.announce, hash: claimed })
    expect(index.get(claimed)?.btih).toBe(infoHash)
    expect(index.get(nar.hash)).toBeUndefined()
  })

  it('publishing the same file twice gives the same torrent', async () => {
    const nar = await writeNar(dir.path, 5000)
    const first = await publishToTorrent(nar.path, { index, client: seeder, announce: tracker.announce })
    const count = seeder.torrents.length
    const second = await publishToTorrent(nar.path, { index, client: seeder, announce: tracker.announce })
    expect(second).toEqual(first)
    expect(seeder.torrents).toHaveLength(count)
  })

  it('seeds a file of another name through a symlink, removed with the torrent', async () => {
    const nar = await writeNar(dir.path, 64 * 1024)
    const other = join(dir.path, 'renamed.bin')
    await copyFile(nar.path, other)
    const { infoHash } = await publishToTorrent(other, { index, client: seeder, announce: tracker.announce })
    const torrent = seeder.torrents.find((t) => t.infoHash === infoHash)!
    expect(torrent.name).toBe(`${nar.hash.nix32}.nar.xz`)

    const downloads = await tempDir('narrace-publish-dl-')
    const backend = torrentBackend({ index, announce: tracker.announce, downloadDir: downloads.path })
    try {
      const source = await backend.fetch(nar.hash, { signal: new AbortController().signal })
      expect((await collect(source.body)).equals(nar.bytes)).toBe(true)
    } finally {
      await backend.close()
      await downloads.remove()
    }

    // webtorrent seeds a file path from its directory: here, the one holding the symlink.
    const linkDir = (torrent as unknown as { path: string }).path
    expect(linkDir.startsWith(dir.path)).toBe(false)
    expect(await readdir(linkDir)).toEqual([`${nar.hash.nix32}.nar.xz`])
    await new Promise<void>((resolve) => void seeder.remove(torrent, { destroyStore: false }, () => resolve()))
    expect(await waitFor(() => !existsSync(linkDir))).toBe(true)
    expect(await readdir(dir.path)).toContain('renamed.bin')
  })

  it('leaves WebSocket trackers out of the magnet link', async () => {
    const nar = await writeNar(dir.path, 2000)
    const { magnet } = await publishToTorrent(nar.path, {
      index,
      client: seeder,
      announce: [...tracker.announce, 'wss://tracker.example/announce'],
    })
    expect(new URLSearchParams(magnet.slice('magnet:?'.length)).getAll('tr')).toEqual(tracker.announce)
  })

  it('rejects at once when the signal is already aborted', async () => {
    const nar = await writeNar(dir.path, 2000)
    const reason = new Error('stop')
    await expect(
      publishToTorrent(nar.path, { index, client: seeder, announce: tracker.announce, signal: AbortSignal.abort(reason) }),
    ).rejects.toBe(reason)
    expect(index.get(nar.hash)).toBeUndefined()
  })
})
