import { NarNotFoundError, parseNarHash, type NarBackend, type NarFetchOptions } from '@narrace/core'
import { openIndex } from '@narrace/index'
import { parseNarInfo } from '@narrace/narinfo'
import { describe, expect, it } from 'vitest'
import { fixtures } from '../../../test/fixtures/index.js'
import { learnNarInfo, servedNarInfo, type ServedNarInfo } from '../src/served-narinfo.js'
import { perUpstreamUrls, type UpstreamNames } from '../src/upstream-backends.js'

const small = fixtures.path('small')
const hash = parseNarHash(small.fileHash)
const signal = new AbortController().signal

/** A backend that records the URL of each fetch and has no bytes. */
function recorder(): NarBackend & { urls: (string | undefined)[] } {
  const urls: (string | undefined)[] = []
  return {
    name: 'up',
    urls,
    async fetch(_hash, options: NarFetchOptions) {
      urls.push(options.url)
      return { body: (async function* () {})(), offset: 0 }
    },
  }
}

function served(upstream: string, url: string, text = fixtures.narinfoText('small')): ServedNarInfo {
  const changed = text.replace(/^URL: .*$/m, `URL: ${url}`)
  return servedNarInfo(upstream, parseNarInfo(changed), changed, small.hashPart)
}

describe('perUpstreamUrls', () => {
  it('asks each upstream under its own name from the index, else under the standard name', async () => {
    const index = openIndex()
    learnNarInfo(index, served('http://a', 'nar/0000-a.nar.xz'))
    const asked: string[] = []
    const names: UpstreamNames = {
      index,
      narInfo: async (upstream) => {
        asked.push(upstream)
        return served(upstream, `nar/${upstream.slice(-1)}-own.nar.xz`)
      },
      learn: (s) => learnNarInfo(index, s),
    }
    const a = recorder()
    const b = recorder()
    const options = { signal, url: small.url }
    await perUpstreamUrls(a, 'http://a', names).fetch(hash, options)
    // b has no name in the index: its own narinfo names the file, once, and the index keeps it.
    await perUpstreamUrls(b, 'http://b', names).fetch(hash, options)
    await perUpstreamUrls(b, 'http://b', names).fetch(hash, options)
    expect(a.urls).toEqual(['nar/0000-a.nar.xz'])
    expect(b.urls).toEqual(['nar/b-own.nar.xz', 'nar/b-own.nar.xz'])
    expect(asked).toEqual(['http://b'])
    expect(index.upstreamUrls(hash)).toEqual(new Map([['http://a', 'nar/0000-a.nar.xz'], ['http://b', 'nar/b-own.nar.xz']]))
    // A file the index knows nothing of goes under the standard name.
    const other = parseNarHash(fixtures.path('200k').fileHash)
    await perUpstreamUrls(b, 'http://b', names).fetch(other, { signal, url: 'nar/x.nar.xz' })
    expect(b.urls.at(-1)).toBe('nar/x.nar.xz')
  })

  it('counts an upstream that holds the path as another file (another compression) as not having this one', async () => {
    const index = openIndex()
    learnNarInfo(index, served('http://a', small.url))
    const uncompressed = fixtures.narinfoText('small').replace(/^Compression: xz$/m, 'Compression: none').replace(/^FileHash: .*\n/m, '').replace(/^FileSize: .*\n/m, '')
    const names: UpstreamNames = {
      index,
      narInfo: async (upstream) => servedNarInfo(upstream, parseNarInfo(uncompressed), uncompressed, small.hashPart),
      learn: () => {},
    }
    const b = recorder()
    await expect(perUpstreamUrls(b, 'http://b', names).fetch(hash, { signal })).rejects.toBeInstanceOf(NarNotFoundError)
    expect(b.urls).toEqual([])
  })

  it('keeps every other property of the backend', () => {
    const backend = Object.assign(recorder(), { close: async () => {} })
    const wrapped = perUpstreamUrls(backend, 'http://a', { index: openIndex(), narInfo: async () => { throw new Error('unused') }, learn: () => {} })
    expect(wrapped.name).toBe('up')
    expect(wrapped.close).toBe(backend.close)
  })
})
