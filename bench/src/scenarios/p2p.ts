import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import type { NarBackend } from '@narrace/core'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Closer } from '../caches.js'
import { fileHash, makeNar } from '../data.js'
import { timeResolve } from '../measure.js'
import { loadHttp, loadIndex, loadIpfs, loadTorrent, type Loaded, type TorrentClient } from '../optional.js'
import type { Row, Sample } from '../results.js'
import { spawnNarServer } from '../server.js'
import { PROFILES, startShaper, type ProfileName } from '../shaper.js'
import { formatSize } from '../stats.js'
import { summarise } from './summary.js'

/** Table rows, samples and what could not be measured. */
export interface Measured {
  rows: Row[]
  samples: Sample[]
  notMeasured: string[]
}

/** What a measurement needs from its scenario. */
export interface MeasureOptions {
  signal: AbortSignal
  log(line: string): void
  sizes: { size: number; runs: number }[]
  closer: Closer
}

/** Each run fetches a file no peer has fetched before, so no node serves it from its own store. */
export const seedFor = (size: number, run: number, salt: number): number => salt * 1_000_000 + (size % 999_983) * 100 + run

/** 64 MiB at 2 MiB/s is 32 s a run; the far cache's rate shows as well at 4 MiB. */
export const FAR_MAX = 4 * 1024 * 1024

/** A shaper profile, or `loopback` for a direct connection. */
export type IpfsProfile = Exclude<ProfileName, 'dead'> | 'loopback'

/** A publishing Helia node, and fetching nodes that reach it over a link of a given profile. */
export interface IpfsRig {
  /** Adds a file to the publishing node (recording the mapping when it is more than one block). */
  publish(bytes: Uint8Array): Promise<{ fileHash: string; singleBlock: boolean }>
  /**
   * An ipfsBackend on a fetching node whose one connection to the publisher crosses `profile`; the node is
   * shared by profile unless `fresh`, which starts one with an empty blockstore, stopped with its link when
   * the backend is closed.
   */
  backend(profile: IpfsProfile, name?: string, fresh?: boolean): Promise<NarBackend>
}

/**
 * IPFS between Helia nodes on loopback TCP: one publishes, others back `ipfsBackend`, each dialled to the
 * publisher straight (`loopback`) or through a shaper of its profile, so libp2p crosses the same links as
 * HTTP. Files of at most 1 MiB are found by their raw CID, larger ones through the index.
 */
export async function startIpfsRig(closer: Closer, signal: AbortSignal): Promise<Loaded<IpfsRig>> {
  const [ipfs, index] = await Promise.all([loadIpfs(), loadIndex()])
  if (!ipfs.ok) return ipfs
  if (!index.ok) return index
  const [{ createHelia }, { tcp }, { noise }, { yamux }, { identify }] = await Promise.all([
    import('helia'),
    import('@libp2p/tcp'),
    import('@chainsafe/libp2p-noise'),
    import('@chainsafe/libp2p-yamux'),
    import('@libp2p/identify'),
  ])
  const node = async (owner: Closer) => {
    const helia = await createHelia({
      libp2p: {
        addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
        transports: [tcp()],
        connectionEncrypters: [noise()],
        streamMuxers: [yamux()],
        peerDiscovery: [],
        services: { identify: identify() },
      },
      http: { delegatedRouters: [], recursiveGateways: [] },
    })
    owner.add({ close: async () => void (await helia.stop()) })
    await helia.start()
    return helia
  }
  const provider = await node(closer)
  const address = provider.libp2p.getMultiaddrs()[0]!
  const providerPort = Number(/\/tcp\/(\d+)/.exec(address.toString())![1])
  const mappings = closer.add(index.module.openIndex())
  const fetchers = new Map<IpfsProfile, Awaited<ReturnType<typeof node>>>()
  return {
    ok: true,
    module: {
      async publish(bytes) {
        // A file of one block needs no mapping: it is found by the raw CID of its FileHash.
        return ipfs.module.publishToIpfs(bytes, { helia: provider, ...(bytes.length > 1024 * 1024 ? { index: mappings } : {}) })
      },
      async backend(profile, name = 'ipfs', fresh = false) {
        // A fresh node must not go on working (blocks still arriving, its link) during later runs.
        const owner = fresh ? closer.add(new Closer()) : closer
        let fetcher = fresh ? undefined : fetchers.get(profile)
        if (!fetcher) {
          fetcher = await node(owner)
          if (!fresh) fetchers.set(profile, fetcher)
          if (profile === 'loopback') await fetcher.libp2p.dial(address, { signal })
          else {
            const link = owner.add(await startShaper({ target: { host: '127.0.0.1', port: providerPort }, profile: PROFILES[profile] }))
            const rest = address.toString().slice(address.toString().indexOf('/p2p/'))
            await fetcher.libp2p.dial(address.decapsulate('/tcp').encapsulate(`/tcp/${link.port}${rest}`), { signal })
          }
        }
        const backend = ipfs.module.ipfsBackend({ helia: fetcher, index: mappings, name })
        return fresh ? { ...backend, close: () => owner.close() } : backend
      },
    },
  }
}

/** Each backend alone over IPFS, by profile and size; every run fetches a file it has never seen. */
export async function measureIpfs({ signal, log, sizes, closer }: MeasureOptions, profiles: IpfsProfile[] = ['loopback']): Promise<Measured> {
  const rig = await startIpfsRig(closer, signal)
  if (!rig.ok) return { rows: [], samples: [], notMeasured: [`IPFS: ${rig.why}`] }
  const rows: Row[] = []
  const samples: Sample[] = []
  for (const [salt, profile] of profiles.entries()) {
    for (const { size, runs } of sizes) {
      if (profile === 'far-cache' && size > FAR_MAX) continue
      const mine: Sample[] = []
      for (let run = 0; run < runs; run++) {
        const published = await rig.module.publish(makeNar(size, seedFor(size, run, 40 + salt)))
        const backend = await rig.module.backend(profile)
        const t = await timeResolve(published.fileHash, { backends: [backend], size, signal })
        mine.push({ variant: 'ipfs', run, profile, size, ttfbMs: t.ttfbMs, ms: t.ms, bytes: t.bytes, rawCid: published.singleBlock })
      }
      samples.push(...mine)
      rows.push(summarise(size <= 1024 * 1024 ? 'ipfs (raw CID)' : 'ipfs (index)', profile, size, mine))
      log(`ipfs ${profile} ${formatSize(size)}: TTFB ${rows.at(-1)!['TTFB ms p50']} ms, ${rows.at(-1)!['MiB/s p50']} MiB/s`)
    }
  }
  return { rows, samples, notMeasured: [] }
}

/** An HTTP tracker on 127.0.0.1, with UDP and WebSocket off. */
export async function startTracker(closer: Closer): Promise<string[]> {
  const { Server } = await import('bittorrent-tracker')
  const server = new Server({ http: true, udp: false, ws: false, stats: false })
  server.on('warning', () => {})
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  closer.add({
    close: () =>
      new Promise<void>((resolve) => {
        server.http?.closeAllConnections()
        server.close(() => resolve())
      }),
  })
  return [`http://127.0.0.1:${(server.http!.address() as AddressInfo).port}/announce`]
}

/**
 * BitTorrent on loopback: a tracker, `seeders` webtorrent clients seeding the same file, and a new
 * `torrentBackend` (with its own client) per run, so the metadata exchange is in every first byte.
 */
export async function measureTorrent({ signal, log, sizes, closer }: MeasureOptions, seederCounts: number[]): Promise<Measured> {
  const [torrent, index] = await Promise.all([loadTorrent(), loadIndex()])
  if (!torrent.ok || !index.ok) return { rows: [], samples: [], notMeasured: [`torrent: ${torrent.ok ? '' : torrent.why}${index.ok ? '' : index.why}`] }
  const announce = await startTracker(closer)
  const dir = await mkdtemp(join(tmpdir(), 'narrace-bench-torrent-'))
  closer.add({ close: () => rm(dir, { recursive: true, force: true }) })
  const seeders: TorrentClient[] = []
  for (let i = 0; i < Math.max(...seederCounts); i++) {
    const client = torrent.module.createClient()
    client.on('error', () => {})
    closer.add({ close: () => new Promise<void>((resolve) => (client.destroyed ? resolve() : client.destroy(() => resolve()))) })
    seeders.push(client)
  }
  const mappings = closer.add(index.module.openIndex())
  const rows: Row[] = []
  const samples: Sample[] = []
  for (const count of seederCounts) {
    for (const { size, runs } of sizes) {
      // One file per size and seeder count; every run downloads it with a fresh client of its own.
      const bytes = makeNar(size, seedFor(size, count, 5))
      const hash = fileHash(bytes)
      const path = join(dir, `${hash.slice('sha256:'.length)}.nar.xz`)
      await writeFile(path, bytes)
      for (const client of seeders.slice(0, count)) {
        await torrent.module.publishToTorrent(path, { index: mappings, client, announce })
      }
      const mine: Sample[] = []
      const label = `torrent, ${count} seeder${count > 1 ? 's' : ''}`
      for (let run = 0; run < runs; run++) {
        signal.throwIfAborted()
        const backend = torrent.module.torrentBackend({ index: mappings, announce, name: 'torrent' })
        try {
          const t = await timeResolve(hash, { backends: [backend], size, signal })
          mine.push({ variant: label, run, profile: 'loopback', size, seeders: count, ttfbMs: t.ttfbMs, ms: t.ms, bytes: t.bytes })
        } finally {
          await backend.close()
        }
      }
      samples.push(...mine)
      rows.push(summarise(label, 'loopback', size, mine))
      log(`${label} ${formatSize(size)}: TTFB ${rows.at(-1)!['TTFB ms p50']} ms, ${rows.at(-1)!['MiB/s p50']} MiB/s`)
    }
  }
  return { rows, samples, notMeasured: [] }
}

/** HTTP from a server in a child process, unshaped, as the baseline for the p2p rows. */
export async function measureHttpLoopback({ signal, log, sizes, closer }: MeasureOptions, salt: number): Promise<Measured> {
  const http = await loadHttp()
  if (!http.ok) return { rows: [], samples: [], notMeasured: [`HTTP baseline: ${http.why}`] }
  const server = closer.add(await spawnNarServer())
  const rows: Row[] = []
  const samples: Sample[] = []
  for (const { size, runs } of sizes) {
    const mine: Sample[] = []
    for (let run = 0; run < runs; run++) {
      const nar = await server.add(size, seedFor(size, run, salt))
      const backend = http.module.httpBackend({ url: server.url, name: 'http' })
      try {
        const t = await timeResolve(nar.hash, { backends: [backend], size, url: nar.url, signal })
        mine.push({ variant: 'http', run, profile: 'loopback', size, ttfbMs: t.ttfbMs, ms: t.ms, bytes: t.bytes })
      } finally {
        await backend.close()
      }
    }
    samples.push(...mine)
    rows.push(summarise('http', 'loopback', size, mine))
    log(`http loopback ${formatSize(size)}: TTFB ${rows.at(-1)!['TTFB ms p50']} ms, ${rows.at(-1)!['MiB/s p50']} MiB/s`)
  }
  return { rows, samples, notMeasured: [] }
}

/** Concatenates measurements. */
export function merge(...parts: Measured[]): Measured {
  return {
    rows: parts.flatMap((p) => p.rows),
    samples: parts.flatMap((p) => p.samples),
    notMeasured: parts.flatMap((p) => p.notMeasured),
  }
}
