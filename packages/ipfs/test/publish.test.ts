import { createHash } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { NarBackendError, parseNarHash } from '@narrace/core'
import { openIndex } from '@narrace/index'
import type { KuboRPCClient } from 'kubo-rpc-client'
import { describe, expect, it } from 'vitest'
import { narCid, publishToIpfs } from '../src/index.js'

/** A Kubo RPC client whose add returns the raw CID for one block and a fixed DAG CID otherwise. */
function fakeKubo() {
  const adds: { bytes: Buffer; options: Record<string, unknown> }[] = []
  const client = {
    async add(content: Uint8Array | AsyncIterable<Uint8Array>, options: Record<string, unknown>) {
      const chunks: Uint8Array[] = []
      if (content instanceof Uint8Array) chunks.push(content)
      else for await (const chunk of content) chunks.push(chunk)
      const bytes = Buffer.concat(chunks)
      adds.push({ bytes, options })
      const hash = parseNarHash(createHash('sha256').update(bytes).digest('hex'))
      const cid = bytes.length <= 1_048_576 ? narCid(hash) : narCid(parseNarHash('0'.repeat(64)))
      return { cid, size: bytes.length, path: cid.toString() }
    },
  }
  return { client: client as unknown as KuboRPCClient, adds }
}

describe('publishToIpfs', () => {
  it('adds with raw leaves, CIDv1 and 1 MiB chunks, and records the mapping', async () => {
    const { client, adds } = fakeKubo()
    const index = openIndex()
    try {
      const bytes = new Uint8Array(1000).fill(7)
      const hash = parseNarHash(createHash('sha256').update(bytes).digest('hex'))
      const result = await publishToIpfs(bytes, { api: client, index })
      expect(result).toEqual({ cid: narCid(hash).toString(), singleBlock: true, fileHash: hash.toString(), size: 1000 })
      expect(adds[0]!.options).toMatchObject({ cidVersion: 1, rawLeaves: true, chunker: 'size-1048576' })
      expect(index.get(hash)).toMatchObject({ cid: result.cid, size: 1000 })
    } finally {
      index.close()
    }
  })

  it('reads a file path once, hashing on the way, and says when the CID is not the raw one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'narrace-publish-'))
    try {
      const bytes = new Uint8Array(1_048_577).map((_, i) => i % 256)
      const path = join(dir, 'big.nar.xz')
      await writeFile(path, bytes)
      const { client, adds } = fakeKubo()
      const result = await publishToIpfs(path, { api: client })
      expect(result.singleBlock).toBe(false)
      expect(result.size).toBe(bytes.length)
      expect(result.fileHash).toBe(parseNarHash(createHash('sha256').update(bytes).digest('hex')).toString())
      expect(adds[0]!.bytes.equals(Buffer.from(bytes))).toBe(true)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('gives NarBackendError when the node fails, and keeps the error of a file that cannot be read', async () => {
    const failing = {
      async add() {
        throw new TypeError('fetch failed')
      },
    } as unknown as KuboRPCClient
    const error = await publishToIpfs(new Uint8Array(10), { api: failing }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NarBackendError)
    expect(error).toMatchObject({ code: 'NARRACE_BACKEND', message: expect.stringMatching(/fetch failed/) })
    const { client, adds } = fakeKubo()
    const index = openIndex()
    try {
      const missing = join(tmpdir(), 'narrace-publish-missing', 'no.nar.xz')
      await expect(publishToIpfs(missing, { api: client, index })).rejects.toMatchObject({ code: 'ENOENT' })
      await expect(publishToIpfs(42 as never, { api: client, index })).rejects.toThrow(TypeError)
      expect(adds).toEqual([])
      for await (const line of index.export()) expect.unreachable(`nothing was published, yet the index has ${line}`)
    } finally {
      index.close()
    }
  })

  it('honours an aborted signal', async () => {
    const { client, adds } = fakeKubo()
    await expect(publishToIpfs(new Uint8Array(1), { api: client, signal: AbortSignal.abort(new Error('no')) })).rejects.toThrow('no')
    expect(adds).toEqual([])
  })
})
