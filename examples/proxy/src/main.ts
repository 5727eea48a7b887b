#!/usr/bin/env node
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import type { NarBackend } from '@narrace/core'
import { readNetrc, upstreamsWith, type Netrc } from '@narrace/http'
import { openIndex, type NarIndex } from '@narrace/index'
import { openStore, type NarStore } from '@narrace/store'
import type { WebTorrent } from '@narrace/torrent'
import { defaultIndexPath } from 'narrace'
import { pino, type Logger } from 'pino'
import { Donation } from './donation.js'
import { startEmbeddedIpfs, type EmbeddedIpfs } from './embedded-ipfs.js'
import type { LanPeers } from './lan.js'
import { peerBackend } from './peers.js'
import { logDestination } from './log.js'
import { PeerMappings } from './peer-mappings.js'
import { ProxyStore } from './store-wiring.js'
import { parseProxyArgs, ProxyUsageError, USAGE, type ProxyArgs } from './args.js'
import { UpstreamStoreDirError } from './cache-info.js'
import { createProxy } from './proxy.js'
import { warmUp } from './warm-up.js'

/** Backends that own resources the proxy must release on exit. */
interface Closable extends NarBackend {
  close?(): Promise<void>
}

/** The parts of the p2p packages the proxy uses; they are loaded only when a flag asks for them. */
interface IpfsModule {
  ipfsBackend(options: { api: string; index: NarIndex }): Closable
}
interface TorrentModule {
  torrentBackend(options: { index: NarIndex; announce: string[]; client?: WebTorrent }): Closable
  createClient(): WebTorrent
}

function fail(text: string): never {
  process.stderr.write(`narrace-proxy: ${text}\n`)
  process.exit(2)
}

/** Loads a p2p package only when its flag asks for it, so that the proxy starts fast without them. */
async function load<T>(name: string, flag: string): Promise<T> {
  try {
    return (await import(name)) as T
  } catch (error) {
    return fail(`${flag} is not available: ${name} could not be loaded (${(error as Error).message.split('\n')[0]})`)
  }
}

async function p2pBackends(
  args: ProxyArgs,
  index: NarIndex,
): Promise<{ backends: Closable[]; torrentClient?: WebTorrent; embedded?: EmbeddedIpfs }> {
  const backends: Closable[] = []
  let torrentClient: WebTorrent | undefined
  let embedded: EmbeddedIpfs | undefined
  if (args.ipfs === 'embedded') {
    try {
      embedded = await startEmbeddedIpfs({ listen: args.ipfsListen, bootstrap: args.ipfsBootstrap, discover: args.discover, index })
    } catch (error) {
      fail(`--ipfs embedded: ${(error as Error).message.split('\n')[0]}`)
    }
    backends.push(embedded.backend)
  }
  if (args.ipfsApi !== undefined) {
    const { ipfsBackend } = await load<IpfsModule>('@narrace/ipfs', '--ipfs-api')
    backends.push(ipfsBackend({ api: args.ipfsApi, index }))
  }
  if (args.torrent) {
    const { torrentBackend, createClient } = await load<TorrentModule>('@narrace/torrent', '--torrent')
    // One client fetches and, with --donate, seeds; the proxy destroys it on exit.
    if (args.donate) torrentClient = createClient()
    backends.push(torrentBackend({ index, announce: args.announce, ...(torrentClient ? { client: torrentClient } : {}) }))
  }
  for (const peer of args.peers) backends.push(peerBackend(peer))
  return { backends, ...(torrentClient ? { torrentClient } : {}), ...(embedded ? { embedded } : {}) }
}

/** `--lan`: loaded only when asked for, so that the proxy starts without mDNS otherwise. */
async function lanPeers(args: ProxyArgs, logger: Logger): Promise<LanPeers> {
  const { LanPeers } = await import('./lan.js')
  return new LanPeers({ listen: args.listen, logger, backend: peerBackend })
}

/** `--store` and `--donate`: the store opened (one owner: a second proxy gets one line), and the donation. */
async function openStoreParts(
  args: ProxyArgs,
  index: NarIndex,
  logger: Logger,
  torrentClient: WebTorrent | undefined,
  embedded: EmbeddedIpfs | undefined,
): Promise<{ store?: NarStore; proxyStore?: ProxyStore; donation?: Donation }> {
  if (args.store === undefined) return {}
  let store: NarStore
  try {
    store = await openStore(args.store, { maxBytes: args.storeMaxBytes })
  } catch (error) {
    process.stderr.write(`narrace-proxy: --store: ${(error as Error).message.split('\n')[0]}\n`)
    process.exit(1)
  }
  const proxyStore = new ProxyStore(store, { logger })
  if (!args.donate) return { store, proxyStore }
  if (args.ipfsApi === undefined && !embedded && !torrentClient) {
    fail('--donate needs --ipfs embedded, --ipfs-api URL and/or --torrent')
  }
  const donation = new Donation({
    store,
    index,
    logger,
    ...(args.ipfsApi !== undefined ? { ipfs: { api: args.ipfsApi } } : {}),
    ...(embedded ? { ipfs: { helia: embedded.node, announce: embedded.announce, withdraw: embedded.withdraw } } : {}),
    ...(torrentClient ? { torrent: { client: torrentClient, announce: args.announce } } : {}),
  })
  return { store, proxyStore, donation }
}

/** V8's young generation, per semi-space, in MiB. @default 8 */
export const YOUNG_GENERATION_SEMI_SPACE_MIB = 8

/**
 * Restarts this process (the same process id, through execve) with V8's young generation capped at
 * `YOUNG_GENERATION_SEMI_SPACE_MIB`, unless the flag was given. Under hundreds of clients V8 grows
 * each semi-space to 64 MiB and keeps them after the burst: over 100 MiB of an idle proxy's memory.
 * V8 reads the flag only when it starts.
 */
function capYoungGeneration(): void {
  const flag = '--max-semi-space-size'
  if (typeof process.execve !== 'function' || process.platform === 'win32') return
  if ([...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((arg) => arg.includes(flag))) return
  process.execve(process.execPath, [process.execPath, `${flag}=${YOUNG_GENERATION_SEMI_SPACE_MIB}`, ...process.execArgv, ...process.argv.slice(1)], process.env)
}

async function main(): Promise<void> {
  capYoungGeneration()
  let args: ProxyArgs
  try {
    args = parseProxyArgs(process.argv.slice(2))
  } catch (error) {
    if (error instanceof ProxyUsageError) fail(`${error.message} (see --help)`)
    throw error
  }
  if (args.help) {
    process.stdout.write(USAGE)
    return
  }
  let netrc: Netrc | undefined
  try {
    netrc = args.netrcFile === undefined ? undefined : await readNetrc(args.netrcFile)
  } catch (error) {
    fail(`--netrc-file ${args.netrcFile}: ${(error as Error).message.split('\n')[0]}`)
  }
  // The index `narrace index` uses, so that a restart (and the CLI) keeps what the proxy learned.
  const indexPath = args.index ?? defaultIndexPath()
  let index: NarIndex
  try {
    if (indexPath !== ':memory:') mkdirSync(dirname(indexPath), { recursive: true })
    // Writes are queued and batched off the request path: a lock held by another process makes them
    // late, never a narinfo answer slow.
    index = openIndex(indexPath, { deferWrites: true })
  } catch (error) {
    fail(`--index: ${(error as Error).message.split('\n')[0]}`)
  }
  const { backends: p2p, torrentClient, embedded } = await p2pBackends(args, index)
  // Lines dropped before the proxy (and its metrics) exists are counted here and handed over then.
  let droppedEarly = 0
  let countDrop = (): void => {
    droppedEarly++
  }
  const logOut = logDestination(() => countDrop())
  const logger = pino({}, logOut)
  const lan = args.lan ? await lanPeers(args, logger) : undefined
  // A --peer (and a peer found on the LAN) is asked for mappings as a --mappings-from is.
  const mappingPeers = [...new Set([...args.mappingsFrom, ...args.peers])]
  const peerMappings =
    mappingPeers.length > 0 || lan
      ? new PeerMappings({ peers: lan ? () => [...new Set([...mappingPeers, ...lan.urls()])] : mappingPeers, index })
      : undefined
  // With --mappings-from, a p2p source asks the peers for a mapping before it reads the index.
  const backends = peerMappings ? p2p.map((backend) => peerMappings.wrap(backend)) : p2p
  const { store, proxyStore, donation } = await openStoreParts(args, index, logger, torrentClient, embedded)
  const proxy = createProxy({
    logger,
    upstreams: upstreamsWith(args.upstreams, { netrc, headers: args.upstreamHeaders }),
    trustedPublicKeys: args.trustedPublicKeys,
    index,
    backends,
    listen: args.listen,
    verifyFirstBelow: args.verifyFirstBelow,
    priority: args.priority,
    maxPassthroughBytes: args.maxPassthroughBytes,
    memoryBudget: args.memoryBudget,
    maxConnections: args.maxConnections,
    clientTimeoutMs: args.clientTimeoutMs,
    ...(proxyStore ? { store: proxyStore } : {}),
    ...(peerMappings ? { peerMappings } : {}),
    ...(lan ? { dynamicBackends: () => lan.backends() } : {}),
  })
  countDrop = () => proxy.metrics.logDropped.inc()
  if (droppedEarly > 0) proxy.metrics.logDropped.inc(droppedEarly)
  // Stopping is possible from the moment the proxy exists: a signal during listen or the warm-up ends
  // the warm-up and stops the proxy as cleanly as later, not by the signal's default.
  const warming = new AbortController()
  const stop = async (signal: NodeJS.Signals): Promise<void> => {
    warming.abort()
    let code = 0
    try {
      // SIGTERM drains (downloads in flight get the grace); SIGINT, a person at the terminal, stops at once.
      if (signal === 'SIGTERM') await proxy.shutdown(args.shutdownGraceMs)
      else await proxy.close()
      await lan?.close()
      await donation?.close()
      await Promise.all(backends.map((backend) => backend.close?.()))
      if (torrentClient) await new Promise<void>((resolve) => torrentClient.destroy(() => resolve()))
      await embedded?.close()
      await store?.close()
      index.close()
      logger.info({ signal }, 'narrace proxy stopped')
    } catch (error) {
      logger.error({ err: error }, 'narrace proxy did not stop cleanly')
      code = 1
    }
    await logOut.close()
    process.exit(code)
  }
  process.once('SIGINT', (signal) => void stop(signal))
  process.once('SIGTERM', (signal) => void stop(signal))
  const url = await proxy.listen().catch((error: Error) => {
    if (error instanceof UpstreamStoreDirError) return fail(error.message)
    return fail(`--listen: ${error.message}`)
  })
  // Before it says it listens: the first burst of clients meets warm code and a grown heap.
  await warmUp(proxy.server, { signal: warming.signal })
  if (warming.signal.aborted) return
  // The bound port (URL drops a default 80), now that port 0 became a real one.
  lan?.start(Number(new URL(url).port || 80))
  // A log line like every other, so stdout stays one JSON object per line; the words after the URL keep
  // it easy to cut out of the message too.
  logger.info({ url, ...(embedded ? { ipfs: embedded.info } : {}) }, `narrace proxy listening on ${url} (put it first in Nix's substituters)`)
}

await main()
