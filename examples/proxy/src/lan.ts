import { randomBytes } from 'node:crypto'
import { isIPv4 } from 'node:net'
import type { NarBackend } from '@narrace/core'
import BonjourModule from 'bonjour-service'
import type { Logger } from 'pino'
import { isLoopbackHost } from './args.js'

/** The DNS-SD service type: `_narrace._tcp`. */
export const LAN_SERVICE_TYPE = 'narrace'
/** How often the LAN is asked again who is there. @default 10 s */
export const DEFAULT_LAN_QUERY_MS = 10_000
/** A peer that has not answered for this long is dropped (three missed queries). @default 30 s */
export const DEFAULT_LAN_EXPIRY_MS = 30_000
/** Peers kept at most: a host that floods the LAN with services can't grow the race without bound. @default 32 */
export const DEFAULT_MAX_LAN_PEERS = 32
/** The longest TXT `path` taken from a peer. */
const MAX_PATH_LENGTH = 200

type Bonjour = InstanceType<typeof BonjourModule.Bonjour>
type Browser = ReturnType<Bonjour['find']>
type Service = BonjourModule.Service

export interface LanOptions {
  /** Where the proxy listens: a specific IPv4 address limits mDNS to that interface. */
  listen: { host: string; port: number }
  /** The proxy's base path, advertised in the TXT record. @default '/' */
  path?: string
  logger: Logger
  /** Makes the NAR source for a peer's base URL (`peerBackend`). */
  backend(url: string): NarBackend
  /** @default DEFAULT_LAN_QUERY_MS */
  queryMs?: number
  /** @default DEFAULT_LAN_EXPIRY_MS */
  expiryMs?: number
  /** @default DEFAULT_MAX_LAN_PEERS */
  maxPeers?: number
}

interface LanPeer {
  url: string
  backend: NarBackend
  lastSeen: number
}

/** Thrown when `--lan` can't work with the address the proxy listens on. */
export class LanListenError extends Error {
  override name = 'LanListenError' as const
  readonly code = 'NARRACE_LAN_LISTEN' as const
}

/**
 * `--lan`: advertises this proxy over mDNS as `_narrace._tcp` (its port, and its path in TXT) and
 * browses for the others. Each one that answers becomes a peer, raced as a NAR source and asked for
 * mappings as a `--peer` is, until it says goodbye or stops answering. What a peer sends is a hint like
 * any other: its address is the one its answer came from (never an address it names), and its bytes are
 * verified. Nothing is sent before `start`.
 */
export class LanPeers {
  private readonly options: LanOptions
  private readonly name = `narrace-${randomBytes(6).toString('hex')}`
  private readonly peers = new Map<string, LanPeer>()
  private bonjour: Bonjour | undefined
  private browser: Browser | undefined
  private timer: ReturnType<typeof setInterval> | undefined

  constructor(options: LanOptions) {
    if (isLoopbackHost(options.listen.host)) {
      throw new LanListenError(
        `--lan: the proxy listens on ${options.listen.host}, which no other machine can reach; listen on a LAN address or 0.0.0.0`,
      )
    }
    this.options = options
  }

  /** Base URLs of the peers that answer now. */
  urls(): string[] {
    return [...this.peers.keys()]
  }

  /** The NAR sources of the peers that answer now. */
  backends(): NarBackend[] {
    return [...this.peers.values()].map((peer) => peer.backend)
  }

  /** Starts advertising `port` (the one the proxy is bound to) and browsing. */
  start(port: number): void {
    if (this.bonjour) return
    const { host } = this.options.listen
    // A specific address: mDNS only on its interface. A wildcard: every interface, as the proxy listens.
    // (bound to the wildcard all the same: a socket bound to a unicast address gets no multicast).
    const config = isIPv4(host) && host !== '0.0.0.0' ? { interface: host, bind: '0.0.0.0' } : {}
    this.bonjour = new BonjourModule.Bonjour(config as object, (error: Error) =>
      this.options.logger.warn({ err: error }, 'lan: mDNS failed'),
    )
    this.bonjour.publish({
      name: this.name,
      type: LAN_SERVICE_TYPE,
      port,
      txt: { path: this.options.path ?? '/' },
      disableIPv6: true,
    })
    this.browse()
    this.timer = setInterval(() => this.browse(), this.options.queryMs ?? DEFAULT_LAN_QUERY_MS)
    this.timer.unref()
  }

  /** Says goodbye on the LAN and forgets every peer. */
  async close(): Promise<void> {
    clearInterval(this.timer)
    this.browser?.stop()
    const bonjour = this.bonjour
    this.bonjour = undefined
    if (bonjour) {
      await new Promise<void>((resolve) => bonjour.unpublishAll(() => resolve()))
      await new Promise<void>((resolve) => bonjour.destroy(() => resolve()))
    }
    const closing = [...this.peers.values()].map((peer) => peer.backend.close?.())
    this.peers.clear()
    await Promise.allSettled(closing)
  }

  /** A fresh browser per round, so that every peer that still answers is seen again. */
  private browse(): void {
    if (!this.bonjour) return
    this.browser?.stop()
    this.browser = this.bonjour.find({ type: LAN_SERVICE_TYPE })
    this.browser.on('up', (service: Service) => this.seen(service))
    this.browser.on('down', (service: Service) => this.gone(service, 'said goodbye'))
    const now = Date.now()
    const expiry = this.options.expiryMs ?? DEFAULT_LAN_EXPIRY_MS
    for (const peer of [...this.peers.values()]) {
      if (now - peer.lastSeen > expiry) this.drop(peer.url, 'stopped answering')
    }
  }

  private seen(service: Service): void {
    if (service.name === this.name) return
    const url = peerUrl(service)
    if (url === undefined) {
      this.options.logger.warn({ name: service.name, address: service.referer?.address, port: service.port }, 'lan: peer ignored, unusable address')
      return
    }
    const known = this.peers.get(url)
    if (known) {
      known.lastSeen = Date.now()
      return
    }
    if (this.peers.size >= (this.options.maxPeers ?? DEFAULT_MAX_LAN_PEERS)) {
      this.options.logger.warn({ peer: url }, 'lan: peer ignored, too many peers')
      return
    }
    this.peers.set(url, { url, backend: this.options.backend(url), lastSeen: Date.now() })
    this.options.logger.info({ peer: url }, 'lan peer up')
  }

  private gone(service: Service, reason: string): void {
    const url = peerUrl(service)
    if (url !== undefined) this.drop(url, reason)
  }

  private drop(url: string, reason: string): void {
    const peer = this.peers.get(url)
    if (!peer) return
    this.peers.delete(url)
    void peer.backend.close?.()
    this.options.logger.info({ peer: url, reason }, 'lan peer down')
  }
}

/**
 * The base URL of a peer: the address its mDNS answer came from (a LAN host can't make us dial loopback
 * or another host by naming it), its SRV port, and its TXT path when that is a plain path.
 */
export function peerUrl(service: Pick<Service, 'port' | 'txt' | 'referer'>): string | undefined {
  const address = service.referer?.address
  if (address === undefined || !isIPv4(address) || address.startsWith('127.') || address === '0.0.0.0') return undefined
  const first = Number(address.split('.')[0])
  // Multicast and reserved senders are not hosts.
  if (first >= 224) return undefined
  const port = service.port
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined
  const raw: unknown = (service.txt as Record<string, unknown> | undefined)?.path ?? '/'
  const path = typeof raw === 'string' ? raw : Buffer.isBuffer(raw) ? raw.toString() : undefined
  if (path === undefined || path.length > MAX_PATH_LENGTH || !/^\/[A-Za-z0-9._~/-]*$/.test(path) || path.includes('..') || path.includes('//')) return undefined
  return `http://${address}:${port}${path.replace(/\/+$/, '')}`
}
