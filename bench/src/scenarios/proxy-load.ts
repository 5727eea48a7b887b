import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readdir, readFile, readlink } from 'node:fs/promises'
import { request as httpRequest } from 'node:http'
import { connect, type Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import { narInfoText, randomHashPart } from '../narinfo-text.js'
import { spawnFloorServer } from '../floor.js'
import { CLIENT_TIMEOUT_MS, fetchAll, spawnCrowd, type Crowd, type Fetched } from '../crowd.js'
import { epochNow, spawnPoller, worstBetween, type PollResult } from '../poll.js'
import { FIXTURE_CACHE, fixtureClosure, nixAvailable, nixSandbox, serveCacheDir } from '../nix.js'
import type { Sample } from '../results.js'
import type { Scenario } from '../scenario.js'
import { spawnNarServer, type ServedNar } from '../server.js'
import { MiB, formatSize, median, round } from '../stats.js'

const PROXY_MAIN = fileURLToPath(new URL('../../../examples/proxy/dist/main.js', import.meta.url))
const NAR_SIZE = 8 * MiB
const CLIENTS = 500
const SLOWLORIS = 500
const HANGUPS = 200

interface RunningProxy {
  child: ChildProcess
  url: string
  stop(): Promise<void>
}

async function startProxy(upstream: string): Promise<RunningProxy> {
  const child = spawn(process.execPath, [PROXY_MAIN, '--listen', '127.0.0.1:0', '--upstream', upstream, '--index', ':memory:'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the proxy did not start within 20 s')), 20_000)
    child.stdout!.on('data', (data: Buffer) => {
      out += data.toString()
      const match = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(out)
      if (match) {
        clearTimeout(timer)
        resolve(match[1]!)
      }
    })
    child.once('exit', (code) => reject(new Error(`the proxy exited with ${code}`)))
  })
  // Drain its log lines so that a full pipe never stalls it.
  child.stdout!.resume()
  return {
    child,
    url,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGINT')
        await once(child, 'exit')
      }
    },
  }
}

/** The proxy's resident memory now and at its peak, from /proc, in MiB. */
async function memory(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN)
  return { rss: kib('VmRSS') / 1024, peak: kib('VmHWM') / 1024 }
}

const openFiles = async (pid: number): Promise<number> => (await readdir(`/proc/${pid}/fd`)).length

/**
 * The process's open TCP connections by what they are: accepted on `port` (clients), or dialled to
 * `upstreamPort`; from its descriptors' socket inodes and the kernel's table in /proc/net/tcp.
 */
async function connections(pid: number, port: number, upstreamPort: number): Promise<{ clients: number; upstream: number }> {
  const inodes = new Set<string>()
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')
    const match = /^socket:\[(\d+)\]$/.exec(target)
    if (match) inodes.add(match[1]!)
  }
  const result = { clients: 0, upstream: 0 }
  for (const table of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${pid}/net/${table}`, 'utf8').catch(() => '')
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/)
      if (fields.length < 10 || !inodes.has(fields[9]!) || fields[3] === '0A') continue
      const localPort = parseInt(fields[1]!.split(':')[1]!, 16)
      const remotePort = parseInt(fields[2]!.split(':')[1]!, 16)
      if (localPort === port) result.clients++
      else if (remotePort === upstreamPort) result.upstream++
    }
  }
  return result
}

/** A burst: `clients` GETs of `url` at once, with `/nix-cache-info` of `pollUrl` polled meanwhile. */
interface Burst {
  answers: Fetched[]
  polled: PollResult
  /** Slowest answer asked before the last head came: while the clients connected and waited for their heads. */
  connectingMs: number
  /** Slowest answer asked after the last head came, while the bodies went out. */
  streamingMs: number
}

/** The clients come from `crowd`, a process of their own. */
async function burst(crowd: Crowd, url: string, pollUrl: string, clients: number): Promise<Burst> {
  const poller = await spawnPoller(pollUrl)
  const start = epochNow()
  let answers: Fetched[]
  let polled: PollResult
  try {
    answers = await crowd.fetch(url, clients)
  } finally {
    polled = await poller.stop()
  }
  // A client that failed got no head: the split is at the last head that came (those failures show in `ok`).
  const heads = answers.map((answer) => answer.headAt).filter((at): at is number => Number.isFinite(at))
  const lastHead = heads.length > 0 ? Math.max(...heads) : Infinity
  return {
    answers,
    polled,
    connectingMs: worstBetween(polled.polls, start, lastHead),
    streamingMs: worstBetween(polled.polls, lastHead),
  }
}

/** One burst on a proxy and the same on node:http doing nothing, from one warmed crowd. */
interface OneNarRound {
  floor: Burst
  burst: Burst
  ok: number
  downloads: number
  peak: number
}

function floorRow(case_: string, floor: Burst): Record<string, string | number> {
  return {
    case: case_,
    ok: floor.answers.filter((a) => a.status === 204).length,
    '/nix-cache-info asked': floor.polled.count,
    failed: floor.polled.failed,
    'p50 ms': round(floor.polled.p50Ms),
    'p99 ms': round(floor.polled.p99Ms),
    'worst ms': round(floor.polled.worstMs),
    'worst ms, connecting': round(floor.connectingMs),
  }
}

/** Holds a connection open by sending one header byte every 5 s and never ending the head. */
function slowloris(url: string): Socket {
  const { port } = new URL(url)
  const socket = connect(Number(port), '127.0.0.1')
  socket.on('error', () => {})
  socket.write('GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n')
  const timer = setInterval(() => socket.write('X'), 5_000)
  socket.once('close', () => clearInterval(timer))
  return socket
}

/** A pass as Nix makes it: each narinfo, then its NAR, one after another; its time in ms. */
async function pass(url: string, nars: { hashPart: string; nar: ServedNar }[]): Promise<number> {
  const t0 = performance.now()
  for (const { hashPart, nar } of nars) {
    const info = await fetchAll(`${url}/${hashPart}.narinfo`)
    const body = await fetchAll(`${url}/${nar.url}`)
    if (info.status !== 200 || body.status !== 200 || !body.complete) throw new Error(`${nar.url}: ${body.status}`)
  }
  return performance.now() - t0
}

async function metric(url: string, name: string): Promise<number> {
  const text = await new Promise<string>((resolve, reject) => {
    httpRequest(`${url}/metrics`, { agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => (body += chunk))
      res.on('end', () => resolve(body))
    })
      .once('error', reject)
      .end()
  })
  let sum = 0
  for (const line of text.split('\n')) if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(' ') + 1))
  return sum
}

/**
 * Interleaved rounds of the real `nix copy`, quiet and beside slowloris. A copy takes about 0.1 s here,
 * and single copies vary by 20-30 %: with five rounds each the ratio of medians went from 0.90 to 1.17
 * between runs of the same code.
 */
const NIX_ROUNDS = 15

/**
 * Times `measure` alone and beside SLOWLORIS connections to `url` that never finish their head, `rounds`
 * times each, interleaved, so that a change in the machine's load falls on both alike.
 */
async function besideSlowloris(url: string, rounds: number, measure: () => Promise<number>): Promise<{ quiet: number[]; loaded: number[] }> {
  const quiet: number[] = []
  const loaded: number[] = []
  for (let round_ = 0; round_ < rounds; round_++) {
    quiet.push(await measure())
    const sockets = Array.from({ length: SLOWLORIS }, () => slowloris(url))
    await new Promise((resolve) => setTimeout(resolve, 500))
    try {
      loaded.push(await measure())
    } finally {
      for (const socket of sockets) socket.destroy()
    }
  }
  return { quiet, loaded }
}

/**
 * Real Nix (`nix copy --from` the built proxy into a fresh store, narinfo cache of its own) of the fixture
 * closure, with and without SLOWLORIS connections that never finish their head; rounds interleaved.
 */
async function nixCopyBesideSlowloris(signal: AbortSignal): Promise<{ quiet: number[]; loaded: number[] } | string> {
  if (!nixAvailable()) return 'nix copy beside slowloris: no `nix` on PATH (Debian: apt-get install nix-bin)'
  const root = await fixtureClosure()
  if (typeof root === 'string') return `nix copy beside slowloris: ${root}`
  const origin = await serveCacheDir(FIXTURE_CACHE)
  const sandbox = await nixSandbox()
  const proxy = await startProxy(origin.url)
  try {
    const copy = async (): Promise<number> => {
      signal.throwIfAborted()
      const run = await sandbox.run(
        'nix',
        (store) => ['copy', '--from', proxy.url, '--to', store, root.storePath, '--option', 'trusted-public-keys', root.publicKey],
        { timeoutMs: 120_000, signal },
      )
      if (run.code !== 0) throw new Error(`nix copy failed: ${run.stderr.slice(-500)}`)
      return run.ms
    }
    // A first copy fills the proxy's narinfo cache, as it is for every round after.
    await copy()
    return await besideSlowloris(proxy.url, NIX_ROUNDS, copy)
  } finally {
    await proxy.stop()
    await sandbox.close()
    await origin.close()
  }
}

/** Issue 12: the built proxy under many clients, slowloris and hang-ups; its memory and descriptors. */
export const proxyLoad: Scenario = {
  name: 'proxy-load',
  title: 'proxy-load: 500 clients on one NAR and on 500 NARs, slowloris, hang-ups',
  async run({ signal, log }) {
    const samples: Sample[] = []
    const server = await spawnNarServer()
    const rows: Record<string, string | number>[] = []
    const notMeasured: string[] = []
    const ratios: { id: string; label: string; value: number | null }[] = []
    try {
      // One NAR, every client at once; first the same burst on a server that does nothing with it.
      const one = await server.add(NAR_SIZE, 1)
      const oneHash = randomHashPart()
      await server.addNarInfo(oneHash, narInfoText(oneHash, one))
      const oneNar = async (): Promise<OneNarRound> => {
        const crowd = await spawnCrowd()
        try {
          const floorServer = await spawnFloorServer(CLIENTS)
          let floor: Burst
          try {
            // Untimed: the crowd's first burst warms its own code, so that it meets both servers warm.
            await crowd.fetch(`${floorServer.url}/held`, CLIENTS)
            floor = await burst(crowd, `${floorServer.url}/held`, `${floorServer.url}/nix-cache-info`, CLIENTS)
          } finally {
            await floorServer.close()
          }
          signal.throwIfAborted()
          const proxy = await startProxy(server.url)
          try {
            await fetchAll(`${proxy.url}/${oneHash}.narinfo`)
            const burst_ = await burst(crowd, `${proxy.url}/${one.url}`, `${proxy.url}/nix-cache-info`, CLIENTS)
            const ok = burst_.answers.filter((a) => a.status === 200 && a.complete && a.bytes === NAR_SIZE).length
            const downloads = await metric(proxy.url, 'narrace_backend_wins_total')
            const { peak } = await memory(proxy.child.pid!)
            return { floor, burst: burst_, ok, downloads, peak }
          } finally {
            await proxy.stop()
          }
        } finally {
          await crowd.close()
        }
      }
      {
        const { floor, burst: { polled, connectingMs, streamingMs }, ok, downloads, peak } = await oneNar()
        const worst = polled.worstMs
        const vsFloor = floor.connectingMs > 0 ? round(connectingMs / floor.connectingMs) : null
        rows.push({
          case: `${CLIENTS} clients, one ${formatSize(NAR_SIZE)} NAR`,
          ok,
          'upstream downloads': downloads,
          'peak RSS MiB': round(peak),
          '/nix-cache-info asked': polled.count,
          failed: polled.failed,
          'p50 ms': round(polled.p50Ms),
          'p99 ms': round(polled.p99Ms),
          'worst ms': round(worst),
          'worst ms, connecting': round(connectingMs),
          'worst ms, streaming': round(streamingMs),
        })
        rows.push(floorRow(`the same ${CLIENTS} connections to node:http doing nothing with them (baseline)`, floor))
        samples.push({ variant: 'one NAR', run: 0, ms: worst, bytes: peak * MiB })
        ratios.push({ id: 'proxy-load/one-nar-errors', label: `clients of one NAR that did not get it whole`, value: CLIENTS - ok })
        ratios.push({ id: 'proxy-load/one-nar-downloads', label: `upstream downloads for ${CLIENTS} clients of one NAR`, value: downloads })
        ratios.push({ id: 'proxy-load/one-nar-peak-rss-mib', label: 'peak proxy RSS (MiB), one NAR', value: round(peak) })
        ratios.push({ id: 'proxy-load/one-nar-cache-info-ms', label: 'slowest /nix-cache-info meanwhile (ms)', value: round(worst) })
        ratios.push({ id: 'proxy-load/one-nar-cache-info-streaming-ms', label: `of those, asked after the last client had its head, while the bodies went out (ms)`, value: round(streamingMs) })
        ratios.push({ id: 'proxy-load/one-nar-cache-info-connecting-ms', label: `of those, asked before: while the ${CLIENTS} connected, the NAR was fetched and verified, and the heads went out (ms)`, value: round(connectingMs) })
        ratios.push({ id: 'proxy-load/floor-cache-info-connecting-ms', label: `the same ${CLIENTS} connections to node:http doing nothing with them: slowest /nix-cache-info (ms)`, value: round(floor.connectingMs) })
        ratios.push({ id: 'proxy-load/one-nar-connecting-vs-floor', label: 'slowest /nix-cache-info while connecting, proxy / node:http doing nothing', value: vsFloor })
        log(
          `one NAR: ${ok}/${CLIENTS} ok, ${downloads} downloads, peak ${round(peak)} MiB, /nix-cache-info p99 ${round(polled.p99Ms)} ms, ` +
            `worst ${round(worst)} ms (connecting ${round(connectingMs)}, streaming ${round(streamingMs)}; node:http doing nothing: ${round(floor.connectingMs)})`,
        )
      }
      signal.throwIfAborted()
      // As many NARs as clients.
      const many: { hashPart: string; nar: ServedNar }[] = []
      for (let i = 0; i < CLIENTS; i++) {
        const nar = await server.add(NAR_SIZE, 1000 + i)
        const hashPart = randomHashPart()
        await server.addNarInfo(hashPart, narInfoText(hashPart, nar))
        many.push({ hashPart, nar })
      }
      let proxy = await startProxy(server.url)
      try {
        const answers = await Promise.all(
          many.map(async ({ hashPart, nar }) => {
            await fetchAll(`${proxy.url}/${hashPart}.narinfo`)
            return fetchAll(`${proxy.url}/${nar.url}`)
          }),
        )
        const errors = answers.filter((a) => a.status !== 200 || !a.complete || a.bytes !== NAR_SIZE).length
        const { peak } = await memory(proxy.child.pid!)
        await new Promise((resolve) => setTimeout(resolve, 5_000))
        const { rss: idle } = await memory(proxy.child.pid!)
        rows.push({ case: `${CLIENTS} clients, ${CLIENTS} distinct ${formatSize(NAR_SIZE)} NARs`, ok: CLIENTS - errors, errors, 'peak RSS MiB': round(peak), 'idle RSS MiB (5 s after)': round(idle) })
        ratios.push({ id: 'proxy-load/many-nars-errors', label: `errors, ${CLIENTS} distinct NARs`, value: errors })
        ratios.push({ id: 'proxy-load/many-nars-peak-rss-mib', label: 'peak proxy RSS (MiB), distinct NARs', value: round(peak) })
        ratios.push({ id: 'proxy-load/many-nars-idle-rss-mib', label: 'idle proxy RSS (MiB) after the run', value: round(idle) })
        log(`${CLIENTS} NARs: ${errors} errors, peak ${round(peak)} MiB, idle ${round(idle)} MiB`)
      } finally {
        await proxy.stop()
      }
      signal.throwIfAborted()

      // Slowloris: a normal pass with and without 500 connections that never finish their head.
      proxy = await startProxy(server.url)
      const sample = many.slice(0, 6)
      try {
        await pass(proxy.url, sample)
        const { quiet, loaded } = await besideSlowloris(proxy.url, 3, () => pass(proxy.url, sample))
        const ratio = round(median(loaded) / median(quiet))
        rows.push({ case: `a pass of 6 NARs beside ${SLOWLORIS} slowloris connections`, 'quiet ms p50': round(median(quiet)), 'slowloris ms p50': round(median(loaded)), ratio })
        ratios.push({ id: 'proxy-load/slowloris-ratio', label: `pass time with ${SLOWLORIS} slowloris / without`, value: ratio })
        log(`slowloris: ${ratio}`)

        // Hang-ups at random points: descriptors back to where they were.
        // The slowloris sockets are gone once the proxy has seen them close.
        await new Promise((resolve) => setTimeout(resolve, 1_000))
        const count = (): Promise<{ clients: number; upstream: number }> =>
          connections(proxy.child.pid!, Number(new URL(proxy.url).port), Number(new URL(server.url).port))
        const before = await openFiles(proxy.child.pid!)
        const openBefore = await count()
        await Promise.all(
          Array.from({ length: HANGUPS }, (_, i) => fetchAll(`${proxy.url}/${many[i % many.length]!.nar.url}`, Math.floor(Math.random() * NAR_SIZE))),
        )
        // Waits (at most 10 s) until no client connection is left and the upstream keep-alive connections
        // that undici opened meanwhile explain every descriptor beyond the baseline.
        let after = await openFiles(proxy.child.pid!)
        let open = await count()
        const beyond = (): number => after - open.upstream - (before - openBefore.upstream)
        for (let i = 0; i < 100 && (open.clients > 0 || beyond() > 0); i++) {
          await new Promise((resolve) => setTimeout(resolve, 100))
          after = await openFiles(proxy.child.pid!)
          open = await count()
        }
        rows.push({
          case: `${HANGUPS} clients hanging up at random points`,
          'fds before': before,
          'fds after': after,
          'client connections after': open.clients,
          'upstream connections after': open.upstream,
          'fds beyond keep-alive': beyond(),
        })
        ratios.push({ id: 'proxy-load/hangup-fds-delta', label: `open descriptors after ${HANGUPS} hang-ups minus before`, value: after - before })
        ratios.push({ id: 'proxy-load/hangup-fds-beyond-keepalive', label: 'of those, descriptors that are not upstream keep-alive connections (goal 0)', value: beyond() })
        ratios.push({ id: 'proxy-load/hangup-client-connections', label: `client connections still open after ${HANGUPS} hang-ups (goal 0)`, value: open.clients })
        ratios.push({ id: 'proxy-load/hangup-upstream-connections', label: 'upstream keep-alive connections then (at most --max-connections, 25)', value: open.upstream })
        log(`hang-ups: fds ${before} → ${after}; connections open: ${open.clients} from clients, ${open.upstream} to the upstream (${openBefore.upstream} before); ${beyond()} descriptors beyond those`)
      } finally {
        await proxy.stop()
      }
      signal.throwIfAborted()

      // The same with real Nix: a `nix copy` of a 20-path closure through the proxy.
      const nixCopy = await nixCopyBesideSlowloris(signal)
      if (typeof nixCopy === 'string') notMeasured.push(nixCopy)
      else {
        const ratio = round(median(nixCopy.loaded) / median(nixCopy.quiet))
        rows.push({
          case: `nix copy of a 20-path closure beside ${SLOWLORIS} slowloris connections (${NIX_ROUNDS} rounds)`,
          'quiet ms p50': round(median(nixCopy.quiet)),
          'slowloris ms p50': round(median(nixCopy.loaded)),
          ratio,
        })
        for (const [i, ms] of nixCopy.quiet.entries()) samples.push({ variant: 'nix copy, quiet', run: i, ms })
        for (const [i, ms] of nixCopy.loaded.entries()) samples.push({ variant: 'nix copy, slowloris', run: i, ms })
        ratios.push({ id: 'proxy-load/slowloris-nix-copy-ratio', label: `nix copy time with ${SLOWLORIS} slowloris / without (goal ≤ 1.1)`, value: ratio })
        log(`nix copy beside slowloris: ${ratio}`)
      }
    } finally {
      await server.close()
    }
    return {
      assumptions: [
        `The built proxy (examples/proxy/dist/main.js) in its own process, its one upstream the bench cache in another, all on 127.0.0.1; NARs of ${formatSize(NAR_SIZE)}, verified whole before they go out (8 MiB is the verify-first bound). Clients read everything they get.`,
        'Peak RSS is the kernel\'s high-water mark (VmHWM) of the proxy process; idle RSS is VmRSS 5 s after the last client.',
        `The ${CLIENTS} clients of a burst run in a crowd process of their own, at the bench's priority, with node:http's client (one connection each, no agent). Run from the bench's own process, beside its results and its children's channels, they used 90-137 ms of CPU in the first 150 ms of a burst and their collector threads up to 90 ms more, on 2 cores (the proxy, 33-104 ms). The crowd first makes one untimed burst of its own on node:http doing nothing, so that it meets both timed servers warm.`,
        '/nix-cache-info is asked every 20 ms, each time over a new connection, by a process of its own while the clients read: timed as another client (Nix) sees it, not through an event loop that is busy reading 500 bodies (timed from there, the same proxy answers within seconds).',
        `Its answers are split by when they were asked, at the moment the crowd saw the last of the ${CLIENTS} clients get its response head (busy reading bodies by then, it sees it late). Before: the ${CLIENTS} connect (every connection is accepted and its request parsed on the proxy\'s one thread, first come first served, the poller\'s among them), the NAR is fetched and verified whole, and the heads and first bytes go out. After: the bodies go out. An answer asked before and given after counts before.`,
        `The baseline in the same run: the same ${CLIENTS} clients and poller against node:http with its defaults in a process of its own, warmed at start by 512 requests of its own as the proxy warms itself, which answers /nix-cache-info at once and holds every other request, doing nothing, until all ${CLIENTS} are in (then an empty 204 each). It shows what accepting that many connections at once costs on this machine before a server does anything with them.`,
        `Upstream downloads are counted by the proxy's narrace_backend_wins_total: one per race.`,
        `Slowloris connections send a request head one byte every 5 s; the proxy cuts heads after 10 s. Every client has a ${CLIENT_TIMEOUT_MS / 1000} s timeout.`,
        'After the hang-ups, the proxy\'s connections are counted from its descriptors and /proc/net/tcp: accepted from clients, and dialled to the upstream, which undici keeps alive for as long as the upstream allows (60 s for the bench cache), at most --max-connections.',
        'The nix copy row: real Nix (nix-bin, no daemon) copies closure-root and its 19 references from the checked-in Nix-made fixture cache through a fresh built proxy into a fresh store each time, signatures checked; quiet and slowloris rounds alternate after one warm-up copy.',
      ],
      ratios,
      tables: [{ caption: 'The proxy under load', rows }],
      notMeasured,
      samples,
    }
  },
}
