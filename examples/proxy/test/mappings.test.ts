import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { NarHashMismatchError, parseNarHash } from '@narrace/core'
import { openIndex, type NarIndex } from '@narrace/index'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { routeMappings, serveMapping, serveMappingsSince } from '../src/mappings-route.js'
import { PeerMappings } from '../src/peer-mappings.js'
import { get } from './support/client.js'

const hash = parseNarHash('sha256:06ngps2hpc7pidks7nnxbng9ris6qwkr89vwfzwhz9qwdnblxzxf')
const other = parseNarHash('sha256:0a471c3rfgxdsrc61pdhcgr2wbldcd7cc4ipkp7b8z227mszjf55')
const cid = 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi'
const btih = 'c9e15763f722f23e98a29decdfae341b98d53056'

/** A peer's mappings endpoint that answers with whatever a test puts in `answers` (path → [status, body]). */
async function peer(answers: Map<string, [number, string]>): Promise<{ url: string; server: Server; asked: string[] }> {
  const asked: string[] = []
  const server = createServer((req, res) => {
    asked.push(req.url ?? '')
    const [status, body] = answers.get(req.url ?? '') ?? [404, 'no mapping\n']
    if (status === 0) return // never answers
    res.writeHead(status).end(body)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, asked }
}

describe('the mappings endpoint', () => {
  let index: NarIndex
  let server: Server
  let url: string
  beforeEach(async () => {
    index = openIndex()
    server = createServer((req, res) => {
      const [pathname, query = ''] = (req.url ?? '').split('?')
      const route = routeMappings(pathname!, query)
      if (!route) return void res.writeHead(404).end()
      if (route.kind === 'reject') return void res.writeHead(route.status).end(route.reason)
      if (route.kind === 'mapping') return serveMapping(index, route.fileHash, res, req.method === 'HEAD')
      void serveMappingsSince(index, route.since, res, false, new AbortController().signal)
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/narrace/v1/mappings`
  })
  afterEach(async () => {
    server.close()
    server.closeAllConnections()
    index.close()
  })

  it('answers one NDJSON line per FileHash in any of its spellings, 404 for an unknown one, 400 for garbage', async () => {
    index.put({ fileHash: hash.toString(), cid, size: 56220 })
    for (const spelling of [hash.nix32, hash.toString(), hash.hex]) {
      const answer = await get(`${url}/${spelling}`)
      expect(answer.status).toBe(200)
      expect(answer.headers['content-type']).toBe('application/x-ndjson')
      expect(JSON.parse(answer.body.toString())).toMatchObject({ fileHash: hash.toString(), cid, size: 56220 })
      expect(answer.body.toString().split('\n')).toHaveLength(2)
    }
    expect((await get(`${url}/${other.nix32}`)).status).toBe(404)
    expect((await get(`${url}/not-a-hash`)).status).toBe(400)
  })

  it('answers every mapping changed since a time, and a gone one too', async () => {
    index.put({ fileHash: hash.toString(), cid })
    const between = new Date(Date.now() + 5).toISOString()
    await new Promise((r) => setTimeout(r, 20))
    index.put({ fileHash: other.toString(), btih })
    index.markGone(other)
    const all = (await get(`${url}?since=1970-01-01T00:00:00Z`)).body.toString().trim().split('\n')
    expect(all.map((l) => JSON.parse(l).fileHash)).toEqual([hash.toString(), other.toString()])
    const later = (await get(`${url}?since=${between}`)).body.toString().trim().split('\n')
    expect(later.map((l) => JSON.parse(l))).toMatchObject([{ fileHash: other.toString(), status: 'gone' }])
    expect((await get(`${url}?since=yesterday`)).status).toBe(400)
    expect((await get(`${url}?since=2020-01-01&x=1`)).status).toBe(400)
  })
})

describe('--mappings-from', () => {
  const servers: Server[] = []
  let index: NarIndex
  beforeEach(() => {
    index = openIndex()
  })
  afterEach(() => {
    for (const server of servers.splice(0)) {
      server.close()
      server.closeAllConnections()
    }
    index.close()
  })
  const start = async (answers: Map<string, [number, string]>) => {
    const p = await peer(answers)
    servers.push(p.server)
    return p
  }
  const path = `/narrace/v1/mappings/${hash.nix32}`

  it('asks every peer at once, records what they answer with its source, and asks no one when the index knows', async () => {
    const a = await start(new Map([[path, [200, `${JSON.stringify({ fileHash: hash.toString(), cid, updatedAt: '2020-01-01T00:00:00Z' })}\n`]]]))
    const b = await start(new Map([[path, [200, JSON.stringify({ fileHash: hash.toString(), btih })]]]))
    const peers = new PeerMappings({ peers: [a.url, b.url], index })
    await peers.learn(hash)
    expect(index.get(hash)).toMatchObject({ cid, btih })
    expect(index.get(hash)!.source).toMatch(/^peer:http:\/\/127\.0\.0\.1:\d+$/)
    await peers.learn(hash)
    expect(a.asked).toHaveLength(1)
    expect(b.asked).toHaveLength(1)
  })

  it('ignores a lying, oversized, malformed, gone or slow answer, within the time limit', async () => {
    const lying = await start(new Map([[path, [200, JSON.stringify({ fileHash: other.toString(), cid })]]]))
    const huge = await start(new Map([[path, [200, JSON.stringify({ fileHash: hash.toString(), cid, pad: 'x'.repeat(100_000) })]]]))
    const bad = await start(new Map([[path, [200, '{"fileHash": "sha256:nope", "cid": 5}']]]))
    const gone = await start(new Map([[path, [200, JSON.stringify({ fileHash: hash.toString(), status: 'gone' })]]]))
    const slow = await start(new Map([[path, [0, '']]]))
    const errors: string[] = []
    const peers = new PeerMappings({
      peers: [lying.url, huge.url, bad.url, gone.url, slow.url],
      index,
      timeoutMs: 300,
      onError: (p) => errors.push(p),
    })
    const t0 = performance.now()
    await peers.learn(hash)
    expect(performance.now() - t0).toBeLessThan(2000)
    expect(index.get(hash)).toBeUndefined()
    expect(errors.sort()).toEqual([lying.url, huge.url, bad.url, slow.url].sort())
  })

  it('marks a mapping that failed verification bad, and never takes it again', async () => {
    const a = await start(new Map([[path, [200, JSON.stringify({ fileHash: hash.toString(), cid })]]]))
    const peers = new PeerMappings({ peers: [a.url], index, missTtlMs: 0 })
    await peers.learn(hash)
    const blame = peers.blame(hash, index.get(hash))
    blame({ type: 'fail', backend: 'ipfs', ms: 1, bytes: 0, error: new NarHashMismatchError('x', { expected: 'a', actual: 'b', sources: ['ipfs'] }) })
    expect(index.get(hash)?.cid).toBeUndefined()
    await peers.learn(hash)
    expect(a.asked).toHaveLength(2)
    expect(index.get(hash)?.cid).toBeUndefined()
  })
})
