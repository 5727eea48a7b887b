import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import net, { type AddressInfo, type Socket } from 'node:net'

/** The network a profile stands for: extra round-trip time and the server-to-client bandwidth. */
export interface NetworkProfile {
  readonly name: string
  /** Round-trip time added on top of loopback, half on each direction, plus one RTT for the TCP handshake. */
  readonly rttMs: number
  /** Server-to-client bytes per second, shared by all connections through one shaper. `Infinity` adds no limit. */
  readonly bytesPerSecond: number
}

const MiB = 1024 * 1024

/** The named profiles every scenario states its assumptions with. `dead` is {@link startBlackhole}. */
export const PROFILES = {
  lan: { name: 'lan', rttMs: 1, bytesPerSecond: 125_000_000 },
  'fast-cdn': { name: 'fast-cdn', rttMs: 20, bytesPerSecond: 50 * MiB },
  'far-cache': { name: 'far-cache', rttMs: 250, bytesPerSecond: 2 * MiB },
} as const satisfies Record<string, NetworkProfile>

/** A named network; `dead` is a host that never answers. */
export type ProfileName = keyof typeof PROFILES | 'dead'

/** Faults that can be switched on while a shaper runs. Byte counts are per connection, server to client. */
export interface ShaperFaults {
  /** Forward this many bytes, then hold the connection open and send nothing more (loss as a stall). */
  stallAfterBytes?: number
  /** Forward this many bytes, then destroy both sides (the source dies). */
  cutAfterBytes?: number
  /** Reset every new connection right after accepting it. */
  refuse?: boolean
  /**
   * Forward this many bytes over all connections together, then cut every connection open at that moment;
   * later connections go through. A download spread over several connections loses all of them at once.
   */
  cutAllAfterBytes?: number
}

/** Where a shaper forwards to, over what network, with which faults. */
export interface ShaperOptions extends ShaperFaults {
  /** Where the relay forwards to. */
  target: { host: string; port: number }
  profile: NetworkProfile
}

/** A running relay. */
export interface Shaper {
  readonly port: number
  /** `http://127.0.0.1:<port>`. */
  readonly url: string
  readonly profile: NetworkProfile
  /** Bytes forwarded server to client, over all connections. */
  readonly bytesDown: number
  /** Connections accepted so far. */
  readonly connections: number
  /** Replaces the faults for connections made from now on. */
  setFaults(faults: ShaperFaults): void
  close(): Promise<void>
}

/** Pieces are paced one by one; small pieces keep a slow link smooth. */
const PIECE = 16 * 1024
/** A direction pauses its reader when this much is waiting in its delay line. */
const HIGH_WATER = 4 * MiB

/** One direction of a relayed connection: a delay line with a serialisation rate. */
class Lane {
  private readonly queue: { at: number; chunk: Buffer }[] = []
  private queued = 0
  private timer: NodeJS.Timeout | undefined
  private waitingForDrain = false
  /** Set once a fault withholds bytes: from then on nothing more goes out, not even the end. */
  private blocked = false

  constructor(
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly delayMs: number,
    private readonly bytesPerSecond: number,
    /** When the link is next free to serialise a byte; shared by every connection over the same link. */
    private readonly link: { freeAt: number },
    /** Returns how many bytes of `chunk` may still go out; 0 stops the lane. */
    private readonly allow: (length: number) => number,
    private readonly onForward: (length: number) => void,
  ) {
    from.on('data', (chunk: Buffer) => this.push(chunk))
    to.on('drain', () => {
      this.waitingForDrain = false
      this.flush()
    })
  }

  private push(chunk: Buffer): void {
    if (this.blocked) return
    const now = performance.now()
    for (let i = 0; i < chunk.length; i += PIECE) {
      const piece = chunk.subarray(i, i + PIECE)
      const start = Math.max(now, this.link.freeAt)
      this.link.freeAt = start + (piece.length * 1000) / this.bytesPerSecond
      this.queue.push({ at: this.link.freeAt + this.delayMs, chunk: piece })
      this.queued += piece.length
    }
    if (this.queued > HIGH_WATER) this.from.pause()
    this.flush()
  }

  private flush(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    const now = performance.now()
    while (!this.waitingForDrain && this.queue.length > 0 && this.queue[0]!.at <= now) {
      const { chunk } = this.queue.shift()!
      this.queued -= chunk.length
      const allowed = this.allow(chunk.length)
      if (allowed < chunk.length) this.blocked = true
      if (allowed > 0 && !this.to.destroyed) {
        const out = allowed < chunk.length ? chunk.subarray(0, allowed) : chunk
        this.onForward(out.length)
        if (!this.to.write(out)) this.waitingForDrain = true
      }
      if (this.blocked) {
        this.queue.length = 0
        this.queued = 0
        return
      }
    }
    if (this.queued <= HIGH_WATER / 2 && this.from.isPaused()) this.from.resume()
    if (!this.waitingForDrain && this.queue.length > 0) {
      this.timer = setTimeout(() => this.flush(), Math.max(0, this.queue[0]!.at - now))
    }
  }

  /** Ends `to` once everything queued has gone out. */
  end(): void {
    const finish = (): void => {
      if (this.blocked) return
      if (this.queue.length > 0) {
        setTimeout(finish, Math.max(1, this.queue.at(-1)!.at - performance.now()))
        return
      }
      this.to.end()
    }
    finish()
  }

  stop(): void {
    clearTimeout(this.timer)
    this.queue.length = 0
  }
}

/**
 * Starts a TCP relay on 127.0.0.1 that shapes what passes through it like `options.profile`, with optional
 * faults. Each accepted connection waits one RTT (the handshake a real link costs) before it reaches the target.
 */
export async function startShaper(options: ShaperOptions): Promise<Shaper> {
  const { profile, target } = options
  let faults: ShaperFaults = { ...options }
  let bytesDown = 0
  let connections = 0
  let cutAll = false
  /** bytesDown when the faults were last set: cutAllAfterBytes counts from there, not from the start. */
  let cutFrom = 0
  const sockets = new Set<Socket>()
  const lanes = new Set<Lane>()
  // One link per shaper: parallel connections share its bandwidth, as they would share a real line.
  const downLink = { freeAt: 0 }
  const track = (socket: Socket): void => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
    socket.on('error', () => socket.destroy())
  }

  const server = net.createServer({ pauseOnConnect: true }, (client) => {
    connections++
    track(client)
    const current = faults
    if (current.refuse) {
      client.resetAndDestroy()
      return
    }
    const handshake = setTimeout(() => {
      if (client.destroyed) return
      const upstream = net.connect(target)
      track(upstream)
      upstream.setNoDelay(true)
      client.setNoDelay(true)
      let down = 0
      const allowDown = (length: number): number => {
        const limit = Math.min(current.stallAfterBytes ?? Infinity, current.cutAfterBytes ?? Infinity)
        const left = current.cutAllAfterBytes === undefined || cutAll ? Infinity : current.cutAllAfterBytes - (bytesDown - cutFrom)
        const allowed = Math.max(0, Math.min(length, limit - down, left))
        down += allowed
        if (!cutAll && current.cutAllAfterBytes !== undefined && bytesDown - cutFrom + allowed >= current.cutAllAfterBytes) {
          cutAll = true
          const open = [...sockets]
          setImmediate(() => {
            for (const socket of open) socket.destroy()
          })
        }
        if (current.cutAfterBytes !== undefined && down >= current.cutAfterBytes) {
          // The last allowed bytes still leave: end() flushes them, then the client sees a short body.
          setImmediate(() => {
            client.end()
            upstream.destroy()
          })
        }
        return allowed
      }
      const half = profile.rttMs / 2
      const downLane = new Lane(upstream, client, half, profile.bytesPerSecond, downLink, allowDown, (n) => (bytesDown += n))
      const upLane = new Lane(client, upstream, half, Infinity, { freeAt: 0 }, (n) => n, () => {})
      lanes.add(downLane).add(upLane)
      upstream.once('end', () => downLane.end())
      client.once('end', () => upLane.end())
      const teardown = (): void => {
        downLane.stop()
        upLane.stop()
        lanes.delete(downLane)
        lanes.delete(upLane)
        if (!client.writableEnded) client.destroy()
        upstream.destroy()
      }
      upstream.once('close', () => {
        // A clean upstream end still lets the delay line drain before the client side closes.
        if (!upstream.readableEnded) teardown()
      })
      client.once('close', teardown)
      client.resume()
    }, profile.rttMs)
    client.once('close', () => clearTimeout(handshake))
  })
  server.listen({ host: '127.0.0.1', port: 0 })
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    profile,
    get bytesDown() {
      return bytesDown
    },
    get connections() {
      return connections
    },
    setFaults(next) {
      faults = { ...next }
      cutAll = false
      cutFrom = bytesDown
    },
    async close() {
      for (const lane of lanes) lane.stop()
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/** A loopback port with nothing listening on it: connecting gets ECONNREFUSED at once. */
export async function refusedPort(): Promise<number> {
  const server = net.createServer()
  server.listen({ host: '127.0.0.1', port: 0 })
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

/** A running dead host. */
export interface Blackhole {
  readonly port: number
  readonly url: string
  close(): Promise<void>
}

/**
 * A dead host on loopback: a TCP connect to it never completes, like a SYN sent into the void.
 *
 * Loopback answers every SYN at once, so a plain listening socket (or a relay that accepts and stays
 * silent) would let the connect succeed and only the response hang. That tests a header timeout, not a
 * connect timeout. Instead a child process listens with a backlog of 1 and is stopped with SIGSTOP, so
 * it never calls accept(). A few connections fill its accept queue, after which Linux drops every new
 * SYN and the client's connect stays in SYN_SENT until its own timeout fires: exactly what a client sees
 * from a host that is down.
 */
export async function startBlackhole(): Promise<Blackhole> {
  const child: ChildProcess = spawn(
    process.execPath,
    [
      '-e',
      "const s=require('node:net').createServer();" +
        "s.listen({host:'127.0.0.1',port:0,backlog:1},()=>process.stdout.write(s.address().port+'\\n'))",
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const fillers: Socket[] = []
  const close = async (): Promise<void> => {
    for (const socket of fillers) socket.destroy()
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit')
      child.kill('SIGKILL')
      await exited
    }
  }
  try {
    const [line] = (await once(child.stdout!, 'data')) as [Buffer]
    const port = Number(String(line).trim())
    child.stdout!.destroy()
    child.kill('SIGSTOP')
    // Fill the accept queue until connects no longer complete; bounded, the queue holds backlog + 1.
    // Two probes in a row must hang, so that a busy event loop cannot pass for a full queue.
    let hung = 0
    for (let i = 0; i < 10; i++) {
      const socket = net.connect({ host: '127.0.0.1', port })
      socket.on('error', () => {})
      let timer: NodeJS.Timeout | undefined
      const connected = await Promise.race([
        once(socket, 'connect').then(() => true),
        new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), 300))),
      ])
      clearTimeout(timer)
      if (connected) {
        fillers.push(socket)
        hung = 0
        continue
      }
      socket.destroy()
      if (++hung === 2) return { port, url: `http://127.0.0.1:${port}`, close }
    }
    throw new Error('the blackhole kept accepting connections')
  } catch (error) {
    await close()
    throw error
  }
}
