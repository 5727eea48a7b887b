import { createHash } from 'node:crypto'
import { availableParallelism, loadavg } from 'node:os'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Libp2pOptions } from 'libp2p'
import { CID } from 'multiformats/cid'
import { Closer } from '../caches.js'
import { fileHash, makeNar } from '../data.js'
import { timeResolve } from '../measure.js'
import { loadDht, loadIndex, type DhtModule, type DhtNode } from '../optional.js'
import type { Ratio, Row, Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { MiB, formatSize, median, pairedRatio, quantile, round } from '../stats.js'

/** Two 1 MiB leaves: the least that only a mapping or the DHT can find by FileHash, so the lookup weighs most. */
const SIZE = 2 * MiB
const HOPS = [1, 2, 3] as const
/** Runs per hop count and variant, each on a line of new nodes with a new file and a new fetcher. */
const RUNS = 9
const SEED = 1414
/** Identities the line's DHT servers are picked from for each file (seeded, so runs repeat). */
const POOL = 32
/** One measurement (line built, fetcher started, the NAR fetched) gives up after this. */
const RUN_TIMEOUT_MS = 30_000
/** The publisher's announcement runs this long while it is alone, so that its records stay on it. */
const ANNOUNCE_ALONE_MS = 20
/** After its first self-query, a fetcher's routing-table refresh (random keys, at start) is let run this long. */
const SETTLE_MS = 300

type Variant = 'discovery' | 'index'
const VARIANT_LABEL: Record<Variant, string> = { discovery: 'DHT discovery by FileHash', index: 'mapping in the index' }

/** Kademlia's position of a key or a peer: the SHA-256 of its multihash bytes. */
const kadId = (multihash: Uint8Array): Buffer => createHash('sha256').update(multihash).digest()

/** Whether `a` is strictly closer (XOR) to `target` than `b`. */
function nearer(a: Buffer, b: Buffer, target: Buffer): boolean {
  for (let i = 0; i < target.length; i++) {
    const da = a[i]! ^ target[i]!
    const db = b[i]! ^ target[i]!
    if (da !== db) return da < db
  }
  return false
}

interface Identity {
  key: NonNullable<Libp2pOptions['privateKey']>
  /** Hex of the peer id's multihash: what the connection gater compares. */
  id: string
  kad: Buffer
}

/**
 * `hops` identities from `pool`, each strictly closer than the one before it to every key in `targets`:
 * a lookup for any of those keys that starts at the first must ask each in turn to reach the last.
 */
export function pickLine(pool: Identity[], targets: Buffer[], hops: number): Identity[] {
  const first = targets[0]!
  const sorted = [...pool].sort((a, b) => (nearer(a.kad, b.kad, first) ? 1 : nearer(b.kad, a.kad, first) ? -1 : 0))
  // Longest chain in which every key gets strictly closer (quadratic, on a few dozen identities).
  const best = sorted.map(() => ({ length: 1, previous: -1 }))
  for (let i = 0; i < sorted.length; i++) {
    for (let j = 0; j < i; j++) {
      const nearerToAll = targets.every((t) => nearer(sorted[i]!.kad, sorted[j]!.kad, t))
      if (nearerToAll && best[j]!.length + 1 > best[i]!.length) best[i] = { length: best[j]!.length + 1, previous: j }
    }
  }
  let at = best.findIndex((b) => b.length >= hops)
  if (at === -1) throw new Error(`no line of ${hops} among ${pool.length} identities for these keys`)
  const line: Identity[] = []
  while (at !== -1 && line.length < hops) {
    line.unshift(sorted[at]!)
    at = best[at]!.previous
  }
  return line
}

const hexId = (peer: { toMultihash(): { bytes: Uint8Array } }): string => Buffer.from(peer.toMultihash().bytes).toString('hex')

/** Polls `ready` every 20 ms until it holds or `signal` aborts. */
async function until(ready: () => boolean, signal: AbortSignal, what: string): Promise<void> {
  while (!ready()) {
    if (signal.aborted) throw new Error(`timed out waiting for ${what}`, { cause: signal.reason })
    await sleep(20)
  }
}

/** The size of a node's DHT routing table (kad-dht keeps it off its public type). */
function routingTableSize(node: DhtNode): number {
  return (node.libp2p.services.dht as unknown as { routingTable: { size: number } }).routingTable.size
}

/** The libp2p modules a line's DHT servers are made of, loaded when the scenario runs. */
async function serverParts() {
  const [{ createHelia }, { tcp }, { noise }, { yamux }, { identify }, { ping }, { kadDHT, passthroughMapper }] = await Promise.all([
    import('helia'),
    import('@libp2p/tcp'),
    import('@chainsafe/libp2p-noise'),
    import('@chainsafe/libp2p-yamux'),
    import('@libp2p/identify'),
    import('@libp2p/ping'),
    import('@libp2p/kad-dht'),
  ])
  /**
   * A DHT server configured as `createIpfsNode` configures one (kad-dht in server mode, private
   * addresses kept, loopback TCP, bitswap), with a chosen identity and a connection gater: it connects
   * to no peer `admits` refuses.
   */
  return async (me: Identity, admits: (peer: string) => boolean): Promise<DhtNode> => {
    const refused = (peer: { toMultihash(): { bytes: Uint8Array } }): boolean => !admits(hexId(peer))
    const helia = await createHelia({
      libp2p: {
        privateKey: me.key,
        addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
        transports: [tcp()],
        connectionEncrypters: [noise()],
        streamMuxers: [yamux()],
        peerDiscovery: [],
        connectionGater: {
          denyDialPeer: refused,
          denyInboundEncryptedConnection: refused,
          denyOutboundEncryptedConnection: refused,
        },
        connectionManager: { allow: ['/ip4/127.0.0.1'] },
        services: { identify: identify(), ping: ping(), dht: kadDHT({ clientMode: false, peerInfoMapper: passthroughMapper }) },
      },
      http: { delegatedRouters: [], recursiveGateways: [] },
    })
    await helia.start()
    return helia as unknown as DhtNode
  }
}

/** What one measurement needs. */
interface Rig {
  dht: DhtModule
  openIndex: typeof import('@narrace/index').openIndex
  server: Awaited<ReturnType<typeof serverParts>>
  pool: Identity[]
}

/**
 * One fetch: a new line of `hops` DHT servers, the last one publishing a new file whose records only
 * it holds, and a new fetcher that knows only the first; the time from resolveNar to the first byte.
 */
async function measure(rig: Rig, hops: number, variant: Variant, seed: number, outer: AbortSignal): Promise<{ ttfbMs: number; ms: number }> {
  const signal = AbortSignal.any([outer, AbortSignal.timeout(RUN_TIMEOUT_MS)])
  const closer = new Closer()
  try {
    const bytes = makeNar(SIZE, seed)
    const hash = fileHash(bytes)
    // The root CID the publisher's node will make, from a node of its own that is never connected.
    const scratch = closer.add(stopper(await rig.dht.createIpfsNode({ signal })))
    const root = (await rig.dht.publishToIpfs(bytes, { helia: scratch.node, signal })).cid
    await closer.close()
    const keys = [kadId(rig.dht.narCid(hash).multihash.bytes), kadId(CID.parse(root).multihash.bytes)]
    const line = pickLine(rig.pool, keys, hops)
    // A server of the line reaches its neighbours only. Past the first, it lets the fetcher in only once
    // the measurement starts: the fetcher's start-up queries (its own id, random keys) must not show it
    // the line beforehand.
    let measuring: string | undefined
    const admits =
      (at: number) =>
      (peer: string): boolean =>
        line.some((i) => i.id === peer) ? line[at - 1]?.id === peer || line[at + 1]?.id === peer : at === 0 || peer === measuring
    const nodes: DhtNode[] = []
    for (const [at, me] of line.entries()) nodes.push(closer.add(stopper(await rig.server(me, admits(at)))).node)
    const publisher = nodes.at(-1)!
    const published = await rig.dht.publishToIpfs(bytes, { helia: publisher, signal })
    if (published.cid !== root) throw new Error(`the publisher made ${published.cid}, not ${root}`)
    // Alone, the publisher keeps both provider records locally and sends them nowhere: then, in the
    // line, only it holds them.
    await rig.dht.announceNar(publisher, hash, root, { size: SIZE, timeoutMs: ANNOUNCE_ALONE_MS })
    await sleep(ANNOUNCE_ALONE_MS * 2, undefined, { signal })
    for (let at = 0; at + 1 < nodes.length; at++) await nodes[at]!.libp2p.dial(nodes[at + 1]!.libp2p.getMultiaddrs()[0]!, { signal })
    await until(() => nodes.every((n, at) => routingTableSize(n) === (at > 0 ? 1 : 0) + (at < nodes.length - 1 ? 1 : 0)), signal, 'the line to form')

    const fetcher = closer.add(stopper(await startFetcher(rig, nodes[0]!, line[0]!, signal))).node
    measuring = hexId(fetcher.libp2p.peerId)
    const index = closer.add(rig.openIndex())
    if (variant === 'index') index.put({ fileHash: hash, cid: root, size: SIZE })
    const backend = rig.dht.ipfsBackend({ helia: fetcher, index, discover: true })
    const timing = await timeResolve(hash, { backends: [backend], size: SIZE, signal })
    if (timing.bytes !== SIZE) throw new Error(`read ${timing.bytes} bytes of ${SIZE}`)
    if (variant === 'discovery' && index.get(hash)?.source !== 'dht') throw new Error('the mapping was not recorded as from the DHT')
    // The fetcher reached every server of the line: it was told of each by the one before.
    const reached = line.filter((i) => fetcher.libp2p.getConnections().some((c) => hexId(c.remotePeer) === i.id)).length
    if (reached !== hops) throw new Error(`the fetcher reached ${reached} of the ${hops} servers of the line`)
    return { ttfbMs: timing.ttfbMs, ms: timing.ms }
  } finally {
    await closer.close()
  }
}

function stopper(node: DhtNode): { node: DhtNode; close(): Promise<void> } {
  return { node, close: async () => void (await node.stop()) }
}

/**
 * A fetcher made by `createIpfsNode` that joins through the line's first server, once its DHT's start-up
 * queries have run: the self-query (1 s after start; kad-dht holds every query until it ran) and the
 * routing-table refresh (random keys). The rest of the line refuses it meanwhile, so it then knows the
 * first server alone; checked.
 */
async function startFetcher(rig: Rig, first: DhtNode, firstId: Identity, signal: AbortSignal): Promise<DhtNode> {
  const fetcher = await rig.dht.createIpfsNode({ bootstrap: [first.libp2p.getMultiaddrs()[0]!.toString()], signal })
  try {
    await once(fetcher.libp2p as unknown as EventTarget, 'kad-dht:query:self', { signal })
    await sleep(SETTLE_MS, undefined, { signal })
    const peers = fetcher.libp2p.getConnections().map((c) => hexId(c.remotePeer))
    if (routingTableSize(fetcher) !== 1 || peers.some((p) => p !== firstId.id)) {
      throw new Error(`before the lookup the fetcher knows ${routingTableSize(fetcher)} DHT servers, not the first alone`)
    }
    return fetcher
  } catch (error) {
    await fetcher.stop()
    throw error
  }
}

/** Issue 14: time to the first byte when the mapping comes from the DHT, 1 to 3 hops away, against the index. */
export const dht: Scenario = {
  name: 'dht',
  title: 'dht: a NAR found by FileHash in a loopback DHT, 1, 2 and 3 hops away, against the mapping in the index',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const [dhtModule, indexModule] = await Promise.all([loadDht(), loadIndex()])
    if (!dhtModule.ok || !indexModule.ok) {
      const why = !dhtModule.ok ? dhtModule.why : (indexModule as { why: string }).why
      return { assumptions: [], ratios: [], tables: [], notMeasured: [`every row: ${why}`], samples }
    }
    const { generateKeyPairFromSeed } = await import('@libp2p/crypto/keys')
    const { openIndex } = (await import('@narrace/index')) as { openIndex: Rig['openIndex'] }
    const pool: Identity[] = []
    for (let i = 0; i < POOL; i++) {
      const key = await generateKeyPairFromSeed('Ed25519', createHash('sha256').update(`narrace-bench-dht-${SEED}-${i}`).digest())
      const multihash = key.publicKey.toMultihash().bytes
      pool.push({ key, id: Buffer.from(multihash).toString('hex'), kad: kadId(multihash) })
    }
    const rig: Rig = {
      dht: dhtModule.module,
      openIndex,
      server: await serverParts(),
      pool,
    }
    const failures: string[] = []
    for (let run = 0; run < RUNS; run++) {
      for (const hops of HOPS) {
        // Which variant goes first alternates, so that neither always runs on a warmer process.
        const order: Variant[] = run % 2 === 0 ? ['discovery', 'index'] : ['index', 'discovery']
        for (const variant of order) {
          signal.throwIfAborted()
          const seed = SEED * 1000 + run * 10 + hops
          try {
            const m = await measure(rig, hops, variant, seed, signal)
            samples.push({ variant: `${hops}-${variant}`, run, hops, ttfbMs: m.ttfbMs, ms: m.ms })
            log(`${hops} hop(s), ${VARIANT_LABEL[variant]}, run ${run}: first byte ${m.ttfbMs.toFixed(1)} ms`)
          } catch (error) {
            if (signal.aborted) throw error
            failures.push(`${hops} hop(s), ${VARIANT_LABEL[variant]}, run ${run}: ${(error as Error).message}`)
            log(failures.at(-1)!)
          }
        }
      }
    }

    const of = (hops: number, variant: Variant): Sample[] => samples.filter((s) => s.variant === `${hops}-${variant}`)
    const rows: Row[] = HOPS.flatMap((hops) =>
      (['discovery', 'index'] as const).map((variant) => {
        const mine = of(hops, variant)
        const ttfb = mine.map((s) => s.ttfbMs as number)
        return {
          hops,
          'mapping from': VARIANT_LABEL[variant],
          runs: mine.length,
          'TTFB ms p50': mine.length ? round(median(ttfb)) : null,
          'TTFB ms max': mine.length ? round(quantile(ttfb, 1)) : null,
          'whole file ms p50': mine.length ? round(median(mine.map((s) => s.ms as number))) : null,
        }
      }),
    )
    const ratios: Ratio[] = HOPS.flatMap((hops) => {
      const discovery = of(hops, 'discovery').map((s) => s.ttfbMs as number)
      return [
        {
          id: `dht/discovery-vs-index-ttfb-${hops}hop`,
          label: `DHT discovery / mapping in the index, TTFB p50 of paired runs, ${hops} hop${hops > 1 ? 's' : ''}`,
          value: pairedRatio(samples, `${hops}-discovery`, `${hops}-index`, 'ttfbMs'),
        },
        {
          id: `dht/discovery-ttfb-ms-${hops}hop`,
          label: `DHT discovery, TTFB p50 ms, ${hops} hop${hops > 1 ? 's' : ''}`,
          value: discovery.length ? round(median(discovery)) : null,
        },
      ]
    })
    return {
      assumptions: [
        `Every run: a new file of ${formatSize(SIZE)} (1 MiB raw-leaf chunks, so only a mapping or the DHT can find it by FileHash), a new line of DHT servers and a new fetcher, all Helia 7 nodes in this process on loopback TCP; nothing is reused between runs. ${RUNS} runs per hop count and variant, the variants alternating which goes first. The ratio is the median of per-run ratios of two runs made one after the other.`,
        'Hops: the fetcher is `createIpfsNode({ bootstrap: [S1] })`, and S1 – S2 – … – Sh is a line of DHT servers whose last, Sh, publishes the file. Each server runs kad-dht in server mode as createIpfsNode configures it, with an identity picked from a seeded pool so that each is strictly XOR-closer than the one before to both keys (the raw CID of the FileHash and the root CID), and a connection gater that lets it reach no server of the line but its neighbours. Kademlia\'s lookup is iterative and goes on only to peers closer to the key, so the fetcher asks S1, is told of S2, dials and asks it, and so on: h sequential GET_PROVIDERS round trips, h − 1 of them on a connection dialled then (TCP, noise, yamux). 1 hop: the fetcher knows the publisher itself.',
        'The publisher announces (announceNar) before it joins the line, so both provider records are on it alone. The fetcher\'s start-up DHT queries (its self-query 1 s after start, which kad-dht holds every query for, and the routing-table refresh) are let finish before the call, while S2 … Sh refuse its connections; at the call it knows S1 alone (checked), and the rest of the line lets it in. Each run checks that the fetcher then reached every server of the line, and (discovery) that the mapping went into its index as from the DHT.',
        'Discovery: an empty index, ipfsBackend({ discover: true }): findProviders on the FileHash, the mapping asked over /narrace/mapping/1.0.0, then bitswap. Mapping in the index: the same fetcher set-up with the mapping put in its index first; bitswap then finds the providers of the root CID through the same line. Times are from the resolveNar call to the first byte (and to the verified end) with ipfsBackend the only backend.',
        `No fixed goal: the issue asks for the figures, not a bound. A run that fails is listed below and left out of the medians. Load average (1, 5, 15 min) at the end of this run: ${loadavg().map((l) => l.toFixed(1)).join(', ')} on ${availableParallelism()} cores; other work on the machine shows as spread between runs.`,
      ],
      ratios,
      tables: [{ caption: `A ${formatSize(SIZE)} NAR over IPFS on loopback, its publisher 1 to 3 DHT hops from the fetcher`, rows }],
      notMeasured: failures,
      samples,
    }
  },
}
