import { describe, expect, it } from 'vitest'
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

  it('refuses --torrent without an index to find torrents in', async () => {
    await expect(openSources({ torrent: true })).rejects.toThrow(UsageError)
  })
})
