import { lookup as dnsLookup, type LookupAddress } from 'node:dns'
import { BlockList, isIP } from 'node:net'
import { NarBackendError } from '@narrace/core'
import { raceSignal } from 'race-signal'
import { buildConnector } from 'undici'

/** `dns.lookup`'s shape, as `net.connect` calls it: with `all: true` it wants every address. */
export type LookupFunction = (
  hostname: string,
  options: { all?: boolean; family?: number | string; hints?: number },
  callback: (error: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
) => void

/**
 * Addresses that stand for this machine or its networks, not the internet: unspecified, loopback,
 * private, carrier-grade NAT, link-local, benchmarking, multicast and reserved. BlockList also matches an
 * IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) against the IPv4 ranges.
 */
const PRIVATE = new BlockList()
for (const [network, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  PRIVATE.addSubnet(network, prefix, 'ipv4')
}
for (const [network, prefix] of [
  ['::', 96], // unspecified, loopback, and the old IPv4-compatible form ::a.b.c.d
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // the old site-local
  ['ff00::', 8], // multicast
  ['2002::', 16], // 6to4, which embeds any IPv4 address
  ['64:ff9b:1::', 48], // local-use NAT64
] as const) {
  PRIVATE.addSubnet(network, prefix, 'ipv6')
}

/** The IPv4 address a NAT64 address `64:ff9b::a.b.c.d` reaches, if it is one. */
function nat64(address: string): string | undefined {
  const match = /^64:ff9b::(?:ffff:)?([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address)
  if (!match) return /^64:ff9b::(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1]
  const high = Number.parseInt(match[1]!, 16)
  const low = Number.parseInt(match[2]!, 16)
  return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`
}

/** Whether an IP address (v4 or v6, brackets allowed) is loopback, private, link-local or otherwise not public. */
export function isPrivateAddress(address: string): boolean {
  const ip = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '')
  const family = isIP(ip)
  if (family === 4) return PRIVATE.check(ip, 'ipv4')
  if (family !== 6) return false
  const embedded = nat64(ip)
  return PRIVATE.check(ip, 'ipv6') || (embedded !== undefined && PRIVATE.check(embedded, 'ipv4'))
}

/** Whether a host (a name or an IP literal) is, or resolves to, a loopback or private address. */
export async function resolvesToPrivate(hostname: string, lookup: LookupFunction): Promise<boolean> {
  const host = hostname.replace(/^\[|\]$/g, '')
  if (isIP(host)) return isPrivateAddress(host)
  const addresses = await new Promise<LookupAddress[]>((resolve, reject) =>
    lookup(host, { all: true }, (error, found) => (error ? reject(error) : resolve(found as LookupAddress[]))),
  )
  return addresses.some((a) => isPrivateAddress(a.address))
}

export interface GuardedConnectOptions {
  /** The cache's host name: connects to it are always allowed, whatever it resolves to. */
  cacheHost: string
  /** The name in errors. */
  name: string
  timeout: number
  lookup?: LookupFunction | undefined
}

/** A host name as connects and URLs compare it: lower case, an IPv6 address without its brackets. */
export function bareHost(hostname: string): string {
  return hostname.replace(/^\[|\]$/g, '').toLowerCase()
}

/**
 * An undici `connect` that reaches a loopback or private address only on the cache's own host, or when
 * the cache itself is on such an address. It checks at connect time, on the address the socket is
 * about to use (an IP literal, or every address a name resolves to), so a name that resolves to a public
 * address when checked and to 127.0.0.1 when connected can't slip through.
 */
export function guardedConnect(options: GuardedConnectOptions): buildConnector.connector {
  const { cacheHost, name, timeout } = options
  const lookup = options.lookup ?? (dnsLookup as unknown as LookupFunction)
  const refused = (host: string, address: string): NarBackendError =>
    new NarBackendError(
      `${name}: refused to connect to ${host}: it is at ${address}, a loopback or private address, and the cache is not on one`,
      { backend: name },
    )
  const strictLookup: LookupFunction = (hostname, lookupOptions, callback) => {
    lookup(hostname, lookupOptions, (error, address, family) => {
      if (error) return callback(error, address, family)
      const list = Array.isArray(address) ? address : [{ address, family: family ?? 0 }]
      const bad = list.find((a) => isPrivateAddress(a.address))
      if (bad) return callback(refused(hostname, bad.address) as NodeJS.ErrnoException, address, family)
      callback(null, address, family)
    })
  }
  const open = buildConnector({ timeout, ...(options.lookup && { lookup: options.lookup }) } as buildConnector.BuildOptions)
  const strict = buildConnector({ timeout, lookup: strictLookup } as buildConnector.BuildOptions)
  const host = bareHost(cacheHost)
  // One lookup of the cache's own host at a time, shared by the connects that wait for it: a resolver that
  // hangs holds one of libuv's few threads (which file reads need too), not one per connect. Once the
  // connect timeout gives up on it, the next connect looks up afresh (a resolver may drop a question).
  let cacheLookup: Promise<boolean> | undefined
  const cacheIsPrivate = (): Promise<boolean> =>
    (cacheLookup ??= resolvesToPrivate(host, lookup).finally(() => {
      cacheLookup = undefined
    }))
  // AbortSignal.timeout takes whole milliseconds only.
  const lookupTimeout = Math.max(1, Math.ceil(timeout))

  return (connectOptions, callback) => {
    const target = bareHost(connectOptions.hostname)
    if (target === host) return open(connectOptions, callback)
    // The cache's own lookup, under the connect timeout too: a resolver that never answers must not hold
    // a request (and the stall watchdog, which waits for the request to go out) for ever.
    const shared = cacheIsPrivate()
    raceSignal(shared, AbortSignal.timeout(lookupTimeout), {
      translateError: () => {
        if (cacheLookup === shared) cacheLookup = undefined
        return new NarBackendError(`${name}: looking up ${host} took more than ${timeout} ms`, { backend: name })
      },
    }).then(
      (privateCache) => {
        if (privateCache) return open(connectOptions, callback)
        if (isIP(target) && isPrivateAddress(target)) return callback(refused(target, target), null)
        return strict(connectOptions, callback)
      },
      (error: unknown) => callback(error as Error, null),
    )
  }
}
