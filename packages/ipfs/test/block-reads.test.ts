import { NarNotFoundError } from '@narrace/core'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { ABANDONED_READ_TIMEOUT_MS, sharedBlockReads, type UnixfsBlockstore } from '../src/block-reads.js'

const RAW = 0x55

interface NetworkRead {
  cid: string
  signal: AbortSignal
  deliver(block: Uint8Array): void
}

/**
 * A Helia-like blockstore: `has` answers from local blocks; `get` of a missing block is a network read
 * that waits for `deliver` (then stores the block, as Helia does) or rejects when its signal aborts.
 */
function fakeHelia() {
  const local = new Map<string, Uint8Array>()
  const network: NetworkRead[] = []
  const blockstore = {
    async has(cid: CID) {
      return local.has(cid.toString())
    },
    async put(cid: CID, block: Uint8Array) {
      local.set(cid.toString(), block)
      return cid
    },
    async *get(cid: CID, options: { signal?: AbortSignal } = {}) {
      const stored = local.get(cid.toString())
      if (stored !== undefined) {
        yield stored
        return
      }
      const signal = options.signal ?? new AbortController().signal
      const block = await new Promise<Uint8Array>((resolve, reject) => {
        network.push({ cid: cid.toString(), signal, deliver: resolve })
        signal.addEventListener('abort', () => reject(new Error('Want was aborted')), { once: true })
      })
      local.set(cid.toString(), block)
      yield block
    },
  }
  return { blockstore: blockstore as unknown as UnixfsBlockstore, network }
}

async function blockCid(bytes: Uint8Array): Promise<CID> {
  return CID.createV1(RAW, await sha256.digest(bytes))
}

async function read(store: UnixfsBlockstore, cid: CID, signal?: AbortSignal): Promise<Uint8Array> {
  const chunks: Uint8Array[] = []
  for await (const chunk of store.get(cid, signal ? { signal } : {})) chunks.push(chunk)
  return new Uint8Array(Buffer.concat(chunks))
}

/** Lets pending promise callbacks run, so that reads reach the fake network. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

afterEach(() => {
  vi.useRealTimers()
})

describe('sharedBlockReads', () => {
  it('gives every backend on a node the same wrapper', () => {
    const { blockstore } = fakeHelia()
    expect(sharedBlockReads(blockstore)).toBe(sharedBlockReads(blockstore))
  })

  it('reads a missing block from the network once for all concurrent callers', async () => {
    const { blockstore, network } = fakeHelia()
    const store = sharedBlockReads(blockstore)
    const block = new Uint8Array([1, 2, 3])
    const cid = await blockCid(block)
    const first = read(store, cid)
    const second = read(store, cid)
    await settle()
    expect(network).toHaveLength(1)
    network[0]!.deliver(block)
    expect(await first).toEqual(block)
    expect(await second).toEqual(block)
    // Stored by the read: a later fetch stays local.
    expect(await read(store, cid)).toEqual(block)
    expect(network).toHaveLength(1)
  })

  it('stops a caller who aborts at once, while the read goes on for the others and the next fetch', async () => {
    const { blockstore, network } = fakeHelia()
    const store = sharedBlockReads(blockstore)
    const block = new Uint8Array([4, 5, 6])
    const cid = await blockCid(block)
    const controller = new AbortController()
    const aborted = read(store, cid, controller.signal)
    const kept = read(store, cid)
    await settle()
    controller.abort(new Error('lost the race'))
    await expect(aborted).rejects.toThrow('lost the race')
    expect(network[0]!.signal.aborted).toBe(false)
    const next = read(store, cid)
    await settle()
    expect(network).toHaveLength(1)
    network[0]!.deliver(block)
    expect(await kept).toEqual(block)
    expect(await next).toEqual(block)
  })

  it('gives up a read nobody has waited for in ABANDONED_READ_TIMEOUT_MS, and a fetch after that reads anew', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    const { blockstore, network } = fakeHelia()
    const store = sharedBlockReads(blockstore)
    const block = new Uint8Array([7, 8, 9])
    const cid = await blockCid(block)
    const controller = new AbortController()
    const aborted = read(store, cid, controller.signal)
    await settle()
    controller.abort(new Error('lost the race'))
    await expect(aborted).rejects.toThrow('lost the race')
    vi.advanceTimersByTime(ABANDONED_READ_TIMEOUT_MS - 1)
    expect(network[0]!.signal.aborted).toBe(false)
    vi.advanceTimersByTime(1)
    expect(network[0]!.signal.reason).toBeInstanceOf(NarNotFoundError)
    await settle()
    const next = read(store, cid)
    await settle()
    expect(network).toHaveLength(2)
    network[1]!.deliver(block)
    expect(await next).toEqual(block)
  })

  it('keeps a read going while someone waits for it, however long', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    const { blockstore, network } = fakeHelia()
    const store = sharedBlockReads(blockstore)
    const block = new Uint8Array([10])
    const cid = await blockCid(block)
    const controller = new AbortController()
    const aborted = read(store, cid, controller.signal)
    await settle()
    controller.abort(new Error('lost the race'))
    await expect(aborted).rejects.toThrow('lost the race')
    vi.advanceTimersByTime(ABANDONED_READ_TIMEOUT_MS / 2)
    const waiting = read(store, cid)
    await settle()
    vi.advanceTimersByTime(ABANDONED_READ_TIMEOUT_MS * 2)
    expect(network[0]!.signal.aborted).toBe(false)
    network[0]!.deliver(block)
    expect(await waiting).toEqual(block)
  })
})
