import type { NarBackend } from '@narrace/core'

/**
 * The backend packages are loaded when a scenario runs, not imported statically: a package that is not
 * built (or not written yet) turns its rows into "not measured" instead of breaking the whole bench.
 * These types are the parts of each package's contract the bench uses.
 */
export interface HttpModule {
  httpBackend(options: { url: string; name?: string; connectTimeoutMs?: number }): NarBackend & { close(): Promise<void> }
  resolveNarInfo(
    hashPart: string,
    options: { caches: string[]; signal?: AbortSignal },
  ): Promise<{ cache: string; text: string }>
}

/** A loaded package, or why it could not be loaded. */
export type Loaded<T> = { ok: true; module: T } | { ok: false; why: string }

async function load<T>(specifier: string, exports: string[]): Promise<Loaded<T>> {
  try {
    const module = (await import(specifier)) as Record<string, unknown>
    const missing = exports.filter((name) => typeof module[name] !== 'function')
    if (missing.length > 0) return { ok: false, why: `${specifier} has no ${missing.join(', ')}` }
    return { ok: true, module: module as T }
  } catch (error) {
    // The code, not the message: a message would carry this machine's paths into the results.
    const code = (error as { code?: unknown }).code
    return { ok: false, why: `package not available (${specifier}: ${typeof code === 'string' ? code : 'failed to load'})` }
  }
}

/** Loads `@narrace/http`. */
export const loadHttp = (): Promise<Loaded<HttpModule>> => load('@narrace/http', ['httpBackend', 'resolveNarInfo'])

/** The part of `@narrace/index`'s NarIndex the bench touches. */
export interface NarIndexLike {
  close(): void
}

/** `@narrace/index`, as the bench uses it. */
export interface IndexModule {
  openIndex(path?: string): NarIndexLike
}

/** `@narrace/ipfs`, as the bench uses it. */
export interface IpfsModule {
  ipfsBackend(options: { helia: unknown; index?: NarIndexLike; name?: string }): NarBackend
  publishToIpfs(
    file: string | Uint8Array,
    options: { helia: unknown; index?: NarIndexLike },
  ): Promise<{ cid: string; singleBlock: boolean; fileHash: string; size: number }>
}

/** A webtorrent client, as far as the bench uses one. */
export interface TorrentClient {
  readonly destroyed: boolean
  destroy(callback?: (error?: Error | null) => void): void
  on(event: 'error', listener: (error: unknown) => void): unknown
}

/** `@narrace/torrent`, as the bench uses it. */
export interface TorrentModule {
  createClient(): TorrentClient
  torrentBackend(options: {
    index: NarIndexLike
    announce?: string[]
    name?: string
  }): NarBackend & { close(): Promise<void> }
  publishToTorrent(
    file: string,
    options: { index: NarIndexLike; client: TorrentClient; announce: string[] },
  ): Promise<{ infoHash: string; magnet: string }>
}

/** Loaders for the p2p packages and the mapping index. */
export const loadIndex = (): Promise<Loaded<IndexModule>> => load('@narrace/index', ['openIndex'])
export const loadIpfs = (): Promise<Loaded<IpfsModule>> => load('@narrace/ipfs', ['ipfsBackend', 'publishToIpfs'])
/** `@narrace/ipfs`'s embedded node, announcing and discovery by FileHash: what the dht scenario calls. */
export type DhtModule = Pick<typeof import('@narrace/ipfs'), 'announceNar' | 'createIpfsNode' | 'ipfsBackend' | 'narCid' | 'publishToIpfs'>
/** A Helia node with a DHT, as `createIpfsNode` makes one. */
export type DhtNode = import('@narrace/ipfs').EmbeddedIpfsNode
export const loadDht = (): Promise<Loaded<DhtModule>> =>
  load('@narrace/ipfs', ['announceNar', 'createIpfsNode', 'ipfsBackend', 'narCid', 'publishToIpfs'])
export const loadTorrent = (): Promise<Loaded<TorrentModule>> =>
  load('@narrace/torrent', ['createClient', 'torrentBackend', 'publishToTorrent'])

/** The substituter proxy in examples/proxy, as the bench uses it. */
export interface ProxyModule {
  createProxy(options: {
    upstreams: string[]
    trustedPublicKeys?: string[]
    logger?: unknown
    store?: unknown
  }): { readonly url: string; listen(): Promise<string>; close(): Promise<void> }
  /** `--store`'s wiring, for the store scenario. */
  ProxyStore?: new (store: unknown, options: { logger: unknown }) => unknown
}

/** `@narrace/store`, as the bench uses it. */
export interface StoreModule {
  openStore(
    dir: string,
    options: { maxBytes: number },
  ): Promise<{ entries(): { path: string }[]; close(): Promise<void> }>
}

/** Loads `@narrace/store`. */
export const loadStore = (): Promise<Loaded<StoreModule>> => load('@narrace/store', ['openStore'])

/** Loads the substituter proxy. */
export const loadProxy = (): Promise<Loaded<ProxyModule>> => load('@narrace/proxy-example', ['createProxy'])
