#!/usr/bin/env node
/**
 * `pnpm demo`: a slow binary cache, a dead one, IPFS and a torrent swarm, all on 127.0.0.1, behind the
 * narrace proxy. Every NAR of the committed fixture cache (made by Nix, see test/fixtures), and when `nix`
 * is on PATH one more that Nix makes on the spot, is fetched through the proxy and verified; then
 * `nix copy` runs through it too. The proxy donates what it kept to IPFS and announces it in the DHT; a
 * second proxy, which knows only the first one's IPFS node and the slow cache's narinfo (its NAR files
 * gone), then finds every NAR on IPFS by its FileHash.
 */
import { execFile, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { Agent, get } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { openIndex } from '@narrace/index'
import { DEFAULT_IPFS_LISTEN, DEFAULT_RAW_BLOCK_MAX_BYTES } from '@narrace/ipfs'
import { createProxy, DEFAULT_VERIFY_FIRST_BELOW, Donation, ProxyStore, startEmbeddedIpfs } from '@narrace/proxy-example'
import { openStore } from '@narrace/store'
import { createClient } from '@narrace/torrent'
import { pino, type Logger } from 'pino'
import { freshCache, nixEnv, type CachedPath, type FreshCache } from './fresh.js'
import { startIpfs, startTorrent } from './swarm.js'
import { deadUpstream, startUpstream } from './upstream.js'

/** The proxy's store: every fixture NAR fits, so the second pass is served from it whole. */
const STORE_MAX_BYTES = 256 * 1024 * 1024
/** The demo gives up on its own after this long, whatever is still running. */
const DEADLINE_MS = 50_000
/** What makes the upstream "distant": a late first byte and a modest rate. */
const SLOW = { firstByteDelayMs: 150, bytesPerSecond: 2 * 1024 * 1024 }
/** IPFS holds the small NARs (one raw block each), the torrent swarm the large ones; the diamond is only upstream. */
const ON_IPFS = (p: CachedPath): boolean => p.fileSize <= 256 * 1024 && !p.name.startsWith('diamond')
const ON_TORRENT = (p: CachedPath): boolean => p.fileSize > 512 * 1024

const fixturesDir = fileURLToPath(new URL('../../../test/fixtures/', import.meta.url))
const cacheDir = join(fixturesDir, 'cache')
const manifest = JSON.parse(readFileSync(join(fixturesDir, 'cache.json'), 'utf8')) as {
  publicKey: string
  paths: Omit<CachedPath, 'cacheDir'>[]
}
const nixOnPath = spawnSync('nix', ['--version'], { stdio: 'ignore' }).status === 0

interface Row {
  name: string
  size: number
  winner: string
  /** How the NAR was found on IPFS, for the proxy that knows only the DHT. */
  foundBy?: string
  firstByteMs: number
  totalMs: number
  verified: boolean
}

function say(text: string): void {
  process.stdout.write(`${text}\n`)
}

/** Fetches one URL through `agent`, timing the first body byte, and hashes the body. */
function fetchTimed(url: string, agent: Agent, signal: AbortSignal): Promise<{ status: number; body: Buffer; firstByteMs: number; totalMs: number; complete: boolean }> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    let firstByteMs = Number.NaN
    get(url, { agent, signal }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => {
        if (chunks.length === 0) firstByteMs = performance.now() - started
        chunks.push(chunk)
      })
      res.once('error', () => {})
      res.once('close', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), firstByteMs, totalMs: performance.now() - started, complete: res.complete }),
      )
    }).once('error', reject)
  })
}

/** A proxy's logger, read back for the table: which source won each NAR, and what was donated. */
function proxyLog(): { logger: Logger; winners: Map<string, string>; donated: Set<string> } {
  const winners = new Map<string, string>()
  const donated = new Set<string>()
  const logs = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const text of chunk.toString().split('\n')) {
        if (!text) continue
        const line = JSON.parse(text) as { msg?: string; nar?: string; winner?: string }
        if (line.msg === 'nar' && line.nar && line.winner) winners.set(line.nar, line.winner)
        if (line.msg === 'donated' && line.nar) donated.add(line.nar)
      }
      done()
    },
  })
  return { logger: pino(logs), winners, donated }
}

function table(rows: Row[], label: (backend: string) => string): string {
  // The "found by" column only where some row has one.
  const foundBy = rows.some((r) => r.foundBy !== undefined)
  const header = ['NAR', 'size', 'winner', ...(foundBy ? ['found by'] : []), 'first byte', 'MB/s', 'verified']
  const body = rows.map((r) => [
    r.name,
    r.size >= 1024 * 1024 ? `${(r.size / 1024 / 1024).toFixed(1)} MiB` : `${(r.size / 1024).toFixed(1)} KiB`,
    label(r.winner),
    ...(foundBy ? [r.foundBy ?? '-'] : []),
    `${r.firstByteMs.toFixed(0)} ms`,
    // A rate over a few KiB says more about latency than throughput.
    r.size >= 100 * 1024 ? (r.size / 1e6 / (r.totalMs / 1000)).toFixed(1) : '-',
    r.verified ? 'yes' : 'NO',
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)))
  const left = new Set([0, 2, ...(foundBy ? [3] : [])])
  const line = (cells: string[]): string =>
    cells.map((c, i) => (left.has(i) ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n')
}

/** `nix copy --from` the proxy into a throwaway store, without a daemon. */
async function nixCopy(proxyUrl: string, paths: string[], publicKeys: string[], signal: AbortSignal): Promise<string> {
  if (!nixOnPath) return 'nix is not on PATH: skipped nix copy'
  const dir = await mkdtemp(join(tmpdir(), 'narrace-demo-nix-'))
  const env = nixEnv(dir)
  const store = join(dir, 'store')
  const args = ['copy', '--from', proxyUrl, '--to', store, '--option', 'trusted-public-keys', publicKeys.join(' '), ...paths]
  const started = performance.now()
  try {
    const failure = await new Promise<Error | null>((resolve) =>
      execFile('nix', args, { env, signal, maxBuffer: 16 * 1024 * 1024 }, (error, _stdout, stderr) =>
        resolve(error ? new Error(stderr.trim().split('\n').at(-1) ?? error.message) : null),
      ),
    )
    // Interrupted, nix was killed: that is no failure of the proxy to report.
    signal.throwIfAborted()
    const ms = (performance.now() - started).toFixed(0)
    return failure
      ? `nix copy --from ${proxyUrl} FAILED after ${ms} ms: ${failure.message}`
      : `nix copy --from ${proxyUrl}: ${paths.length} store paths (with their closures) into a throwaway store in ${ms} ms`
  } finally {
    spawnSync('chmod', ['-R', 'u+w', dir], { stdio: 'ignore' })
    await rm(dir, { recursive: true, force: true })
  }
}

/**
 * Proxy B: it knows the narinfo of the slow cache, whose NAR files are gone, and one DHT bootstrap peer
 * (the first proxy's IPFS node, as its first log line names it). No index entries, no store, no torrent:
 * each NAR must be found on IPFS by FileHash. `foundBy` says how, from B's index afterwards.
 */
async function dhtOnlyProxy(
  roots: string[],
  publicKeys: string[],
  bootstrap: string,
  signal: AbortSignal,
  cleanups: (() => Promise<unknown> | void)[],
): Promise<{ url: string; upstream: string; winners: Map<string, string>; foundBy: (path: CachedPath) => string }> {
  const upstream = await startUpstream(roots, { ...SLOW, narFiles: false })
  cleanups.push(() => upstream.close())
  const index = openIndex()
  cleanups.push(() => index.close())
  const node = await startEmbeddedIpfs({ listen: [...DEFAULT_IPFS_LISTEN], bootstrap: [bootstrap], discover: true, index, signal })
  cleanups.push(() => node.close())
  const { logger, winners } = proxyLog()
  const proxy = createProxy({ upstreams: [upstream.url], trustedPublicKeys: publicKeys, index, backends: [node.backend], logger })
  cleanups.push(() => proxy.close())
  await proxy.listen()
  const foundBy = (path: CachedPath): string =>
    index.get(path.fileHashHex)?.source === 'dht' ? 'dht' : path.fileSize <= DEFAULT_RAW_BLOCK_MAX_BYTES ? 'raw CID' : '-'
  return { url: proxy.url, upstream: upstream.url, winners, foundBy }
}

async function demo(signal: AbortSignal): Promise<boolean> {
  const cleanups: (() => Promise<unknown> | void)[] = []
  try {
    const started = performance.now()
    const paths: CachedPath[] = manifest.paths.map((p) => ({ ...p, cacheDir }))
    const publicKeys = [manifest.publicKey]
    if (nixOnPath) {
      const fresh: FreshCache | string = await freshCache(signal).catch((error: unknown) => {
        if (signal.aborted) throw error
        return error instanceof Error ? error.message.split('\n')[0]! : String(error)
      })
      if (typeof fresh === 'string') say(`fresh NAR   nix could not make one (${fresh}); the committed fixtures only`)
      else {
        cleanups.push(() => fresh.close())
        paths.push(...fresh.paths)
        publicKeys.push(fresh.publicKey)
        say(`fresh NAR   ${fresh.paths.map((p) => p.name).join(', ')}: made by nix just now, signed with a throwaway key`)
      }
    }
    signal.throwIfAborted()
    const index = openIndex()
    cleanups.push(() => index.close())
    const roots = [...new Set(paths.map((p) => p.cacheDir))]
    const slow = await startUpstream(roots, SLOW)
    cleanups.push(() => slow.close())
    const dead = await deadUpstream()
    say(`slow cache  ${slow.url}  (first byte after ${SLOW.firstByteDelayMs} ms, ${SLOW.bytesPerSecond / 1024 / 1024} MiB/s)`)
    say(`dead cache  ${dead}  (connection refused)`)
    signal.throwIfAborted()

    const ipfs = await startIpfs(paths.filter(ON_IPFS).map((p) => join(p.cacheDir, p.url)), index, signal)
    cleanups.push(() => ipfs.close())
    // The proxy's own node, as `--ipfs embedded --ipfs-bootstrap <that node>` starts it: a DHT server that
    // also looks NARs up by FileHash in the DHT.
    const embedded = await startEmbeddedIpfs({ listen: [...DEFAULT_IPFS_LISTEN], bootstrap: [ipfs.bootstrap], discover: true, index, signal })
    cleanups.push(() => embedded.close())
    say(`IPFS        a Helia DHT server on loopback TCP with ${paths.filter(ON_IPFS).length} NARs; the proxy's own node joins through it`)
    signal.throwIfAborted()
    const torrent = await startTorrent(paths.filter(ON_TORRENT).map((p) => join(p.cacheDir, p.url)), index)
    cleanups.push(() => torrent.close())
    say(`torrent     a tracker and a seeder on 127.0.0.1, ${paths.filter(ON_TORRENT).length} NARs seeded`)
    signal.throwIfAborted()

    const { logger, winners, donated } = proxyLog()
    // --store --donate --ipfs embedded: the proxy keeps what it serves, and gives it back to IPFS (through
    // its own Helia node, announced in the DHT by FileHash) and to the torrent swarm.
    const storeDir = await mkdtemp(join(tmpdir(), 'narrace-demo-store-'))
    cleanups.push(() => rm(storeDir, { recursive: true, force: true }))
    const store = await openStore(storeDir, { maxBytes: STORE_MAX_BYTES })
    cleanups.push(() => store.close())
    const seeder = createClient()
    seeder.on('error', () => {})
    cleanups.push(() => new Promise((resolve) => seeder.destroy(resolve)))
    const donation = new Donation({
      store,
      index,
      logger,
      ipfs: { helia: embedded.node, announce: embedded.announce, withdraw: embedded.withdraw },
      torrent: { client: seeder, announce: torrent.announce },
    })
    cleanups.push(() => donation.close())
    const proxy = createProxy({
      upstreams: [dead, slow.url],
      trustedPublicKeys: publicKeys,
      index,
      backends: [embedded.backend, torrent.backend],
      logger,
      store: new ProxyStore(store, { logger }),
    })
    cleanups.push(() => proxy.close())
    await proxy.listen()
    say(`proxy       ${proxy.url}  (upstreams: the dead cache, then the slow one; IPFS node ${embedded.info.addrs[0]})\n`)

    const agent = new Agent({ keepAlive: true })
    cleanups.push(() => agent.destroy())
    say(`fetching ${paths.length} NARs through the proxy, each after its narinfo, as Nix does:\n`)
    /** Fetches every NAR through the proxy at `url`, after its narinfo; `wonBy` is that proxy's log. */
    const pass = async (url: string, wonBy: Map<string, string>, foundBy?: (path: CachedPath) => string): Promise<Row[]> => {
      const rows: Row[] = []
      for (const path of paths) {
        const narinfo = await fetchTimed(`${url}/${path.hashPart}.narinfo`, agent, signal)
        if (narinfo.status !== 200) throw new Error(`the proxy answered ${narinfo.status} for ${path.hashPart}.narinfo`)
        const nar = await fetchTimed(`${url}/${path.url}`, agent, signal)
        const verified =
          nar.status === 200 && nar.complete && createHash('sha256').update(nar.body).digest('hex') === path.fileHashHex
        const nix32 = path.url.slice('nar/'.length, -'.nar.xz'.length)
        rows.push({
          name: path.name,
          size: path.fileSize,
          winner: wonBy.get(nix32) ?? '?',
          ...(foundBy ? { foundBy: foundBy(path) } : {}),
          firstByteMs: nar.firstByteMs,
          totalMs: nar.totalMs,
          verified,
        })
      }
      return rows
    }
    const rows = await pass(proxy.url, winners)
    const label = (backend: string): string =>
      backend === slow.url ? 'slow cache' : backend === dead ? 'dead cache' : backend
    say(table(rows, label))
    say(`(first byte as the client saw it: the proxy verifies a NAR of up to ${DEFAULT_VERIFY_FIRST_BELOW / 1024 / 1024} MiB whole before sending it; MB/s over the whole request)`)
    const wins = new Map<string, number>()
    for (const row of rows) wins.set(label(row.winner), (wins.get(label(row.winner)) ?? 0) + 1)
    const verified = rows.filter((r) => r.verified).length
    say(`\n${verified} of ${rows.length} NARs verified against their FileHash; wins: ${[...wins].map(([k, n]) => `${k} ${n}`).join(', ')}`)

    say(`\nsecond pass: the same NARs again, now kept in the proxy's store (${storeDir}):\n`)
    const again = await pass(proxy.url, winners)
    say(table(again, label))
    const fromStore = again.filter((r) => r.winner === 'store' && r.verified).length
    say(`\n${fromStore} of ${again.length} NARs served from the store, verified; the upstreams were not asked for them`)
    await donation.settled()
    say(`donated     ${donated.size} NARs the store took in: added to IPFS through the proxy's Helia node and announced in the DHT by FileHash, seeded as torrents`)

    const b = await dhtOnlyProxy(roots, publicKeys, embedded.info.addrs[0]!, signal, cleanups)
    say(`\nproxy B     ${b.url}  (an empty index, no store; its only upstream is the slow cache with its NAR files gone, ${b.upstream};`)
    say(`            its only IPFS peer the first proxy's node, named as its DHT bootstrap)\n`)
    say(`third pass: the same NARs through proxy B, each found on IPFS by its FileHash alone:\n`)
    const third = await pass(b.url, b.winners, b.foundBy)
    say(table(third, label))
    const fromIpfs = third.filter((r) => r.winner === 'ipfs' && r.verified)
    const byDht = fromIpfs.filter((r) => r.foundBy === 'dht').length
    const needDht = third.filter((r) => r.size > DEFAULT_RAW_BLOCK_MAX_BYTES).length
    say(
      `\n${fromIpfs.length} of ${third.length} NARs served by proxy B from IPFS, verified: ${byDht} over 1 MiB by a mapping found in the DHT ` +
        `(source dht), ${fromIpfs.length - byDht} by the raw CID of their FileHash (one block each)`,
    )

    const nix = await nixCopy(proxy.url, paths.map((p) => p.storePath), publicKeys, signal)
    say(nix)
    say(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`)
    return (
      verified === rows.length &&
      fromStore === again.length &&
      fromIpfs.length === third.length &&
      byDht === needDht &&
      !nix.includes('FAILED')
    )
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup()
  }
}

const controller = new AbortController()
const deadline = setTimeout(() => controller.abort(new Error(`the demo took longer than ${DEADLINE_MS / 1000} s`)), DEADLINE_MS)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    controller.abort(new Error('interrupted'))
    // A second signal does not wait for the cleanup.
    process.once(signal, () => process.exit(130))
  })
}
try {
  const ok = await demo(controller.signal)
  process.exitCode = ok ? 0 : 1
} catch (error) {
  const reason: unknown = controller.signal.aborted ? controller.signal.reason : error
  process.stderr.write(`demo: ${reason instanceof Error ? reason.message : String(reason)}\n`)
  process.exitCode = controller.signal.reason instanceof Error && controller.signal.reason.message === 'interrupted' ? 130 : 1
} finally {
  clearTimeout(deadline)
}
// Everything was closed above; exiting here keeps a library's stray timer from holding the demo open.
process.exit()
