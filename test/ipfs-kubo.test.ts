import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { existsSync } from 'node:fs'
import { NarNotFoundError, parseNarHash, resolveNar } from '@narrace/core'
import { openIndex, type NarIndex } from '@narrace/index'
import { ipfsBackend, narCid, publishToIpfs } from '@narrace/ipfs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fixtures } from './fixtures/index.js'
import { startKuboRpc, type KuboRpc } from './support/kubo-rpc.js'

const run = promisify(execFile)

async function readAll(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  for await (const chunk of stream) chunks.push(chunk)
  return Buffer.concat(chunks)
}

/** The same checks against any Kubo RPC API: add, raw CID, index entry, cat with offset, unknown CID. */
function rpcChecks(api: () => string): void {
  let index: NarIndex
  beforeAll(() => {
    index = openIndex()
  })
  afterAll(() => {
    index?.close()
  })

  it('adds a NAR of at most 1 MiB as exactly its raw CID, and fetches it with no index entry', async () => {
    const fixture = fixtures.path('200k')
    const result = await publishToIpfs(fixtures.narPath('200k'), { api: api() })
    expect(result).toMatchObject({ cid: narCid(fixture.fileHash).toString(), singleBlock: true, size: fixture.fileSize })
    const stream = await resolveNar(fixture.fileHash, { backends: [ipfsBackend({ api: api() })], size: fixture.fileSize })
    expect((await readAll(stream)).equals(await readFile(fixtures.narPath('200k')))).toBe(true)
  })

  it('adds a 5 MiB NAR, maps it, and reads it through the index from an offset', async () => {
    const fixture = fixtures.path('5m')
    const file = await readFile(fixtures.narPath('5m'))
    const result = await publishToIpfs(fixtures.narPath('5m'), { api: api(), index })
    expect(result.singleBlock).toBe(false)
    expect(index.get(fixture.fileHash)).toMatchObject({ cid: result.cid, size: fixture.fileSize })

    const backend = ipfsBackend({ api: api(), index, name: 'kubo' })
    const stream = await resolveNar(fixture.fileHash, { backends: [backend] })
    expect((await readAll(stream)).equals(file)).toBe(true)
    expect(stream.winner).toBe('kubo')

    const offset = 2_500_000
    const source = await backend.fetch(parseNarHash(fixture.fileHash), { signal: AbortSignal.timeout(20_000), offset })
    expect(source.offset).toBe(offset)
    expect((await readAll(source.body)).equals(file.subarray(offset))).toBe(true)
  })

  it('gives NarNotFoundError for a CID the node does not have', async () => {
    const unknown = parseNarHash(randomBytes(32).toString('hex'))
    const backend = ipfsBackend({ api: api(), firstByteTimeoutMs: 1_000 })
    await expect(backend.fetch(unknown, { signal: AbortSignal.timeout(20_000) })).rejects.toThrow(NarNotFoundError)
  })
}

describe('the Kubo RPC path against ipfs-core + ipfs-http-server', () => {
  let dir: string
  let url = ''
  let kubo: KuboRpc | undefined

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narrace-ipfs-core-'))
    kubo = await startKuboRpc(dir)
    url = kubo.url
  })

  afterAll(async () => {
    await kubo?.stop()
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  rpcChecks(() => url)
})

/** The `ipfs` binary on PATH, if any. */
function findIpfs(): string | undefined {
  for (const part of (process.env.PATH ?? '').split(delimiter)) {
    const candidate = join(part, 'ipfs')
    if (part && existsSync(candidate)) return candidate
  }
  return undefined
}

const ipfsBin = findIpfs()
const kuboTitle = ipfsBin
  ? `a real Kubo daemon (${ipfsBin}) on a temporary repo`
  : 'a real Kubo daemon: SKIPPED, no `ipfs` binary on PATH (install Kubo to run it)'
if (!ipfsBin) console.warn(kuboTitle)

describe.skipIf(!ipfsBin)(kuboTitle, () => {
  let dir: string
  let url = ''
  let daemon: ChildProcess | undefined

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narrace-kubo-'))
    const env = { ...process.env, IPFS_PATH: join(dir, 'repo') }
    const ipfs = (...args: string[]) => run(ipfsBin!, args, { env, timeout: 30_000 })
    // The test profile listens on loopback only, with no bootstrap peers and no MDNS.
    await ipfs('init', '--profile=test')
    await ipfs('config', 'Addresses.API', '/ip4/127.0.0.1/tcp/0')
    await ipfs('config', 'Addresses.Gateway', '/ip4/127.0.0.1/tcp/0')
    await ipfs('config', '--json', 'Addresses.Swarm', '[]')
    await ipfs('config', '--json', 'Bootstrap', '[]')
    await ipfs('config', '--json', 'Discovery.MDNS.Enabled', 'false')
    daemon = spawn(ipfsBin!, ['daemon', '--offline'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    daemon.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()))
    daemon.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()))
    const deadline = Date.now() + 30_000
    while (!output.includes('Daemon is ready')) {
      if (daemon.exitCode !== null || Date.now() > deadline) throw new Error(`ipfs daemon did not start:\n${output}`)
      await sleep(50)
    }
    // Kubo writes the address it actually bound (port 0 → a free port) to the repo's api file.
    const api = (await readFile(join(dir, 'repo', 'api'), 'utf8')).trim()
    const port = /\/tcp\/(\d+)/.exec(api)?.[1]
    if (!port) throw new Error(`unexpected api file: ${api}`)
    url = `http://127.0.0.1:${port}`
  })

  afterAll(async () => {
    if (daemon && daemon.exitCode === null) {
      const exited = once(daemon, 'exit')
      daemon.kill('SIGTERM')
      await Promise.race([exited, sleep(10_000).then(() => daemon!.kill('SIGKILL'))])
    }
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  rpcChecks(() => url)
})
