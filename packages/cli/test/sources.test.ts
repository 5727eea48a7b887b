import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openIndex } from '@narrace/index'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { UsageError } from '../src/args.js'
import { openSources } from '../src/sources.js'

describe('openSources', () => {
  it('names each HTTP backend by its cache URL and opens the index it is given', async () => {
    const sources = await openSources({ http: ['http://127.0.0.1:1', 'http://127.0.0.1:2/cache'], indexPath: ':memory:' })
    try {
      expect(sources.backends.map((b) => b.name)).toEqual(['http://127.0.0.1:1', 'http://127.0.0.1:2/cache'])
      expect(sources.index?.get(`sha256:${'0'.repeat(52)}`)).toBeUndefined()
    } finally {
      await sources.close()
    }
  })

  it('adds the IPFS and torrent backends only when asked', async () => {
    const sources = await openSources({ ipfsApi: 'http://127.0.0.1:1', torrent: true, indexPath: ':memory:' })
    try {
      expect(sources.backends.map((b) => b.name)).toEqual(['ipfs', 'torrent'])
    } finally {
      await sources.close()
    }
  })

  describe('without --index', () => {
    let dir: string
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'narrace-sources-'))
    })
    afterEach(() => {
      vi.unstubAllEnvs()
    })
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true })
    })

    it('refuses --torrent when the default index is not there either', async () => {
      vi.stubEnv('NARRACE_INDEX', join(dir, 'absent.sqlite'))
      await expect(openSources({ torrent: true })).rejects.toThrow(UsageError)
      expect(existsSync(join(dir, 'absent.sqlite'))).toBe(false)
    })

    it('finds torrents and CIDs in the default index when it is there, and opens none for HTTP alone', async () => {
      const path = join(dir, 'default.sqlite')
      const index = openIndex(path)
      index.put({ fileHash: `sha256:${'1'.repeat(52)}`, size: 5 })
      index.close()
      vi.stubEnv('NARRACE_INDEX', path)
      const p2p = await openSources({ torrent: true, ipfsApi: 'http://127.0.0.1:1' })
      try {
        expect(p2p.index?.get(`sha256:${'1'.repeat(52)}`)?.size).toBe(5)
      } finally {
        await p2p.close()
      }
      const http = await openSources({ http: ['http://127.0.0.1:1'] })
      expect(http.index).toBeUndefined()
      await http.close()
    })
  })
})
