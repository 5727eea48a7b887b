import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { NarNotFoundError, parseNarHash, resolveNar } from '@narrace/core'
import { describe, expect, it } from 'vitest'
import { ipfsBackend, narCid, trustlessGatewayHelia } from '../src/index.js'

describe('trustlessGatewayHelia', () => {
  it('reads a single-block NAR from a trustless gateway by its raw CID', async () => {
    const file = randomBytes(300_000)
    const hash = parseNarHash(createHash('sha256').update(file).digest('hex'))
    const requests: string[] = []
    // A raw block is the file itself, so this gateway needs no IPFS node behind it.
    const server = createServer((request, response) => {
      requests.push(`${request.url} ${request.headers.accept}`)
      if (request.url?.startsWith(`/ipfs/${narCid(hash)}`)) {
        response.writeHead(200, { 'content-type': 'application/vnd.ipld.raw' }).end(file)
      } else {
        response.writeHead(404).end()
      }
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const helia = await trustlessGatewayHelia([`http://127.0.0.1:${(server.address() as AddressInfo).port}`])
    try {
      const backend = ipfsBackend({ helia, firstByteTimeoutMs: 5_000 })
      const chunks: Uint8Array[] = []
      for await (const chunk of await resolveNar(hash, { backends: [backend], size: file.length })) chunks.push(chunk)
      expect(Buffer.concat(chunks).equals(file)).toBe(true)
      expect(requests[0]).toMatch(/format=raw|application\/vnd\.ipld\.raw/)

      const unknown = parseNarHash(randomBytes(32).toString('hex'))
      await expect(backend.fetch(unknown, { signal: AbortSignal.timeout(10_000) })).rejects.toThrow(NarNotFoundError)
    } finally {
      await helia.stop()
      server.closeAllConnections()
      server.close()
    }
  })

  it('wants at least one valid gateway URL', async () => {
    await expect(trustlessGatewayHelia([])).rejects.toThrow(TypeError)
    await expect(trustlessGatewayHelia(['not a url'])).rejects.toThrow(TypeError)
  })
})
