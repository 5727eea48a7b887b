import { createHash } from 'node:crypto'
import { NarBackendError, NarNotFoundError, parseNarHash, resolveNar, type NarHash } from '@narrace/core'
import { openIndex } from '@narrace/index'
import type { KuboRPCClient } from 'kubo-rpc-client'
import type { CID } from 'multiformats/cid'
import { afterEach, describe, expect, it } from 'vitest'
import { DEFAULT_RAW_BLOCK_MAX_BYTES, ipfsBackend, narCid } from '../src/index.js'

interface CatCall {
  cid: string
  offset: number | undefined
  signal: AbortSignal
}

/** A Kubo RPC client that serves files from a map by CID, and records every cat. */
function fakeKubo(files: Map<string, Uint8Array>, behaviour: 'serve' | 'hang' | 'deaf' = 'serve') {
  const calls: CatCall[] = []
  const client = {
    async *cat(cid: CID, options: { offset?: number; length?: number; signal: AbortSignal }) {
      calls.push({ cid: cid.toString(), offset: options.offset, signal: options.signal })
      if (behaviour === 'deaf') await new Promise(() => {})
      if (behaviour === 'hang') {
        await new Promise((_, reject) => {
          options.signal.addEventListener('abort', () => reject(options.signal.reason), { once: true })
        })
      }
      const file = files.get(cid.toString())
      if (!file) throw new Error(`block was not found locally (offline): ipld: could not find ${cid}`)
      const from = options.offset ?? 0
      const body = file.subarray(from, options.length === undefined ? undefined : from + options.length)
      for (let at = 0; at < body.length; at += 1000) yield body.subarray(at, at + 1000)
    },
  }
  return { client: client as unknown as KuboRPCClient, calls }
}

function hashOf(bytes: Uint8Array): NarHash {
  return parseNarHash(createHash('sha256').update(bytes).digest('hex'))
}

async function readAll(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  for await (const chunk of stream) chunks.push(chunk)
  return Buffer.concat(chunks)
}

const small = new Uint8Array(5000).map((_, i) => i % 251)
const smallHash = hashOf(small)
const signal = (): AbortSignal => AbortSignal.timeout(10_000)
const indexes: ReturnType<typeof openIndex>[] = []
afterEach(() => {
  for (const index of indexes.splice(0)) index.close()
})

describe('ipfsBackend lookup', () => {
  it('uses the raw CID when the size is unknown or small enough', async () => {
    const { client, calls } = fakeKubo(new Map([[narCid(smallHash).toString(), small]]))
    const backend = ipfsBackend({ api: client })
    expect(backend.name).toBe('ipfs')
    const stream = await resolveNar(smallHash, { backends: [backend] })
    expect((await readAll(stream)).equals(Buffer.from(small))).toBe(true)
    await readAll((await backend.fetch(smallHash, { signal: signal(), size: DEFAULT_RAW_BLOCK_MAX_BYTES })).body)
    expect(calls.map((call) => call.cid)).toEqual([narCid(smallHash).toString(), narCid(smallHash).toString()])
  })

  it("takes the index's CID first, and its size when resolveNar has none", async () => {
    const cid = narCid(hashOf(new Uint8Array([1]))).toString()
    const { client, calls } = fakeKubo(new Map([[cid, small]]))
    const index = openIndex()
    indexes.push(index)
    index.put({ fileHash: smallHash.toString(), cid, size: small.length })
    const source = await ipfsBackend({ api: client, index }).fetch(smallHash, { signal: signal() })
    expect(source.size).toBe(small.length)
    expect(calls[0]!.cid).toBe(cid)
    expect((await readAll(source.body)).equals(Buffer.from(small))).toBe(true)
  })

  it('refuses a file larger than rawBlockMaxBytes without asking the node', async () => {
    const { client, calls } = fakeKubo(new Map())
    const index = openIndex()
    indexes.push(index)
    index.put({ fileHash: smallHash.toString(), size: 2_000_000, url: 'nar/x.nar.xz' })
    await expect(ipfsBackend({ api: client, index }).fetch(smallHash, { signal: signal() })).rejects.toThrow(NarNotFoundError)
    const backend = ipfsBackend({ api: client, rawBlockMaxBytes: 4096 })
    await expect(backend.fetch(smallHash, { signal: signal(), size: 5000 })).rejects.toThrow(/too large for one raw block \(4096\)/)
    expect(calls).toEqual([])
  })

  it('passes the offset to cat and reports it as honoured', async () => {
    const { client, calls } = fakeKubo(new Map([[narCid(smallHash).toString(), small]]))
    const source = await ipfsBackend({ api: client }).fetch(smallHash, { signal: signal(), offset: 1234 })
    expect(source.offset).toBe(1234)
    expect(calls[0]!.offset).toBe(1234)
    expect((await readAll(source.body)).equals(Buffer.from(small.subarray(1234)))).toBe(true)
  })

  it('passes a range to cat as offset and length, and says it serves ranges', async () => {
    const { client } = fakeKubo(new Map([[narCid(smallHash).toString(), small]]))
    const source = await ipfsBackend({ api: client }).fetch(smallHash, { signal: signal(), offset: 1234, end: 5000 })
    expect(source).toMatchObject({ offset: 1234, ranges: true })
    expect((await readAll(source.body)).equals(Buffer.from(small.subarray(1234, 5000)))).toBe(true)
  })

  it('maps "not found" to NarNotFoundError and other failures to NarBackendError', async () => {
    const { client } = fakeKubo(new Map())
    await expect(ipfsBackend({ api: client }).fetch(smallHash, { signal: signal() })).rejects.toThrow(NarNotFoundError)
    const broken = {
      async *cat() {
        throw new Error('connect ECONNREFUSED 127.0.0.1:5001')
      },
    } as unknown as KuboRPCClient
    const error = await ipfsBackend({ api: broken, name: 'kubo' }).fetch(smallHash, { signal: signal() }).catch((e) => e)
    expect(error).toBeInstanceOf(NarBackendError)
    expect(error).toMatchObject({ backend: 'kubo' })
    // Helia aggregates one error per provider; a 404 from a gateway hides inside.
    const aggregated = {
      async *cat() {
        const error = new Error('Unable to fetch raw block')
        Object.assign(error, { errors: [new Error('from gateway http://127.0.0.1:1/, received 404 Not Found')] })
        throw error
      },
    } as unknown as KuboRPCClient
    await expect(ipfsBackend({ api: aggregated }).fetch(smallHash, { signal: signal() })).rejects.toThrow(NarNotFoundError)
  })
})

describe('ipfsBackend timeouts and aborts', () => {
  it('gives NarNotFoundError when no byte comes within firstByteTimeoutMs, and aborts the call', async () => {
    const { client, calls } = fakeKubo(new Map(), 'hang')
    const error = await ipfsBackend({ api: client, firstByteTimeoutMs: 50 })
      .fetch(smallHash, { signal: signal() })
      .catch((e) => e)
    expect(error).toBeInstanceOf(NarNotFoundError)
    expect(error.message).toMatch(/within 50 ms/)
    expect(calls[0]!.signal.aborted).toBe(true)
  })

  it('does not hang on a node that ignores its signal', async () => {
    const { client } = fakeKubo(new Map(), 'deaf')
    const backend = ipfsBackend({ api: client, firstByteTimeoutMs: 50 })
    await expect(backend.fetch(smallHash, { signal: signal() })).rejects.toThrow(NarNotFoundError)
    const controller = new AbortController()
    const pending = ipfsBackend({ api: client }).fetch(smallHash, { signal: controller.signal })
    controller.abort(new Error('lost the race'))
    await expect(pending).rejects.toThrow('lost the race')
  })

  it('rejects at once with an aborted signal, and aborts the cat when the consumer stops early', async () => {
    const { client, calls } = fakeKubo(new Map([[narCid(smallHash).toString(), small]]))
    const backend = ipfsBackend({ api: client })
    await expect(backend.fetch(smallHash, { signal: AbortSignal.abort(new Error('gone')) })).rejects.toThrow('gone')
    expect(calls).toEqual([])
    const source = await backend.fetch(smallHash, { signal: signal() })
    for await (const _ of source.body) break
    expect(calls[0]!.signal.aborted).toBe(true)
  })
})

describe('ipfsBackend called directly', () => {
  it('takes a hash string and no signal, as resolveNar never passes them', async () => {
    const { client, calls } = fakeKubo(new Map([[narCid(smallHash).toString(), small]]))
    const source = await ipfsBackend({ api: client }).fetch(smallHash.toString() as never, {} as never)
    expect(source.offset).toBe(0)
    expect((await readAll(source.body)).equals(Buffer.from(small))).toBe(true)
    expect(calls.map((call) => call.cid)).toEqual([narCid(smallHash).toString()])
  })
})

describe('ipfsBackend options', () => {
  it('wants api or helia, not both', () => {
    const { client } = fakeKubo(new Map())
    const helia = { blockstore: { get() {}, put() {}, has() {} } } as never
    expect(() => ipfsBackend({ api: client, helia })).toThrow(TypeError)
    expect(() => ipfsBackend({ helia: {} as never })).toThrow(TypeError)
    expect(ipfsBackend({ api: 'http://127.0.0.1:1', name: 'local' }).name).toBe('local')
  })

  it('refuses timeouts setTimeout would turn into 1 ms, and a rawBlockMaxBytes that is not a size', () => {
    const { client } = fakeKubo(new Map())
    for (const firstByteTimeoutMs of [0, -5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31]) {
      expect(() => ipfsBackend({ api: client, firstByteTimeoutMs })).toThrow(RangeError)
    }
    for (const rawBlockMaxBytes of [-1, 1.5, Number.NaN]) {
      expect(() => ipfsBackend({ api: client, rawBlockMaxBytes })).toThrow(RangeError)
    }
    expect(ipfsBackend({ api: client, rawBlockMaxBytes: 0, firstByteTimeoutMs: 2 ** 31 - 1 }).name).toBe('ipfs')
  })
})
