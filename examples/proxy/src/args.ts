import { parseArgs } from 'node:util'
import { parseUpstreamHeader, upstreamsWith, type UpstreamHeader } from '@narrace/http'
import { DEFAULT_MAX_PASSTHROUGH_BYTES } from './passthrough.js'
import { DEFAULT_CLIENT_TIMEOUT_MS } from './send.js'

/** NARs at or below this size are verified whole before the first byte goes out. */
export const DEFAULT_VERIFY_FIRST_BELOW = 8 * 1024 * 1024
/** The store's budget without --store-max-bytes: 10 GiB. */
export const DEFAULT_STORE_MAX_BYTES = 10 * 1024 ** 3
/** The `Priority` in nix-cache-info: below cache.nixos.org's 40, so Nix asks the proxy first. */
export const DEFAULT_PRIORITY = 30
export const DEFAULT_LISTEN = '127.0.0.1:8080'
/** Verify-first buffering across all requests stays under this; larger NARs are verified on disk. @default 256 MiB */
export const DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024
/** Downloads open at once to each upstream (Nix's `http-connections`). @default 25 */
export const DEFAULT_MAX_CONNECTIONS = 25
/** After SIGTERM, downloads in flight get this long to finish before they are aborted. @default 10 s */
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000
/** Where `--ipfs embedded` listens without --ipfs-listen: loopback only, any free port. */
export const DEFAULT_IPFS_LISTEN_ARG = '/ip4/127.0.0.1/tcp/0'

/** What the command line asks for. */
export interface ProxyArgs {
  help: boolean
  listen: { host: string; port: number }
  upstreams: string[]
  trustedPublicKeys: string[]
  /** The index file; undefined for the CLI's default one, `:memory:` for none. */
  index: string | undefined
  /** A netrc file with credentials for the upstreams, as Nix's `netrc-file`. */
  netrcFile: string | undefined
  /** From each `--upstream-header 'URL=Name: value'`; the URL is one of `upstreams` (a trailing slash aside). */
  upstreamHeaders: UpstreamHeader[]
  maxPassthroughBytes: number
  ipfsApi: string | undefined
  torrent: boolean
  announce: string[]
  verifyFirstBelow: number
  priority: number
  /** `--store DIR`: keep every NAR served (and its narinfo) in this folder, and answer from it first. */
  store: string | undefined
  /** `--store-max-bytes N` */
  storeMaxBytes: number
  /** `--donate`: publish every NAR that enters the store to IPFS and/or as a torrent. */
  donate: boolean
  /** `--mappings-from URL`: other proxies asked for mappings the index lacks. */
  mappingsFrom: string[]
  /** `--memory-budget BYTES` */
  memoryBudget: number
  /** `--max-connections N`, per upstream */
  maxConnections: number
  /** `--shutdown-grace SECONDS`, in ms */
  shutdownGraceMs: number
  /** `--client-timeout SECONDS`, in ms */
  clientTimeoutMs: number
  /** `--ipfs embedded`: run a Helia node inside the proxy. */
  ipfs: 'embedded' | undefined
  /** `--ipfs-listen MULTIADDR`: where the embedded node listens. */
  ipfsListen: string[]
  /** `--ipfs-bootstrap MULTIADDR`: the DHT peers to join through; `amino` = the public Amino DHT. */
  ipfsBootstrap: string[]
  /** False with `--no-discover`: no DHT discovery of mappings by FileHash. */
  discover: boolean
  /** `--peer URL`: other narrace proxies, raced as NAR sources and asked for mappings. */
  peers: string[]
  /** `--lan`: advertise over mDNS and take the proxies found there as peers. */
  lan: boolean
}

/** Thrown for a command line the proxy can't run with; main prints the message and exits with 2. */
export class ProxyUsageError extends Error {
  override name = 'ProxyUsageError' as const
}

export const USAGE = `Usage: narrace-proxy --upstream URL [--upstream URL …] [options]

A Nix substituter: put http://HOST:PORT first in 'substituters'. Every NAR is raced across the
upstream caches (and IPFS and torrents when enabled) and verified against its FileHash.

Options:
  --listen HOST:PORT              address to serve on; port 0 picks a free one (default ${DEFAULT_LISTEN})
  --upstream URL                  an HTTP binary cache to race; repeat for more (at least one)
  --trusted-public-key NAME:KEY   accept only narinfo signed by this key; repeat for more
  --index PATH                    the index (SQLite): what each upstream calls each file, FileHash → CID/infohash;
                                  ':memory:' keeps nothing (default: the file of 'narrace index',
                                  $NARRACE_INDEX or $XDG_DATA_HOME/narrace/index.sqlite)
  --netrc-file PATH               credentials for private upstreams, in Nix's netrc-file format
                                  (machine HOST login USER password PASS); sent to that host only
  --upstream-header 'URL=Name: value'
                                  a header for one --upstream, e.g. 'https://c.example=Authorization: Bearer …';
                                  sent to that upstream's origin only; repeat for more
  --max-passthrough-bytes BYTES   cut build logs, .ls listings, realisations and debuginfo passed through
                                  from upstreams at this size (default ${DEFAULT_MAX_PASSTHROUGH_BYTES})
  --ipfs-api URL                  also fetch from IPFS through this Kubo RPC API
  --ipfs embedded                 also fetch from IPFS through a Helia node inside the proxy (no daemon),
                                  which finds NARs by FileHash in its DHT
  --ipfs-listen MULTIADDR         where the embedded node listens; repeat for more (default ${DEFAULT_IPFS_LISTEN_ARG})
  --ipfs-bootstrap MULTIADDR      a DHT peer (…/p2p/PEER_ID) to join through; repeat for more (default none:
                                  a DHT of those who dial this one); 'amino' joins the public IPFS DHT
  --no-discover                   do not look NARs up by FileHash in the DHT (on whenever IPFS is embedded)
  --peer URL                      another narrace proxy: raced as a NAR source and asked for mappings;
                                  its narinfo is used only when signed by a trusted key; repeat for more
  --lan                           advertise this proxy on the LAN over mDNS (_narrace._tcp) and race the
                                  narrace proxies found there as --peers while they answer (off by default;
                                  needs --listen on an address the LAN reaches, e.g. 0.0.0.0:8080)
  --torrent                       also fetch from BitTorrent, through mappings in the index
  --announce URL                  a tracker for --torrent; repeat for more
  --verify-first-below BYTES      verify NARs up to this size before sending a byte (default ${DEFAULT_VERIFY_FIRST_BELOW})
  --priority N                    the Priority in nix-cache-info (default ${DEFAULT_PRIORITY})
  --store DIR                     keep every NAR served, and its narinfo, in DIR (a file:// binary cache);
                                  it answers first, also when no upstream can be reached
  --store-max-bytes N             the store's budget; least recently used NARs not pinned go first
                                  (default ${DEFAULT_STORE_MAX_BYTES}); pin closures with 'narrace pin'
  --donate                        publish every NAR that enters the store to IPFS (--ipfs-api) and as a
                                  torrent (--torrent), recording the mappings; eviction withdraws them
  --mappings-from URL             another narrace proxy to ask for mappings the index lacks; repeat for more
  --memory-budget BYTES           verify-first buffering across all requests stays under this; beyond it a
                                  NAR is verified in a temporary file before it is sent (default ${DEFAULT_MEMORY_BUDGET})
  --max-connections N             downloads open at once to each upstream; the rest queue (default ${DEFAULT_MAX_CONNECTIONS})
  --shutdown-grace SECONDS        on SIGTERM, stop accepting and let downloads in flight finish this long,
                                  then abort the rest (default ${DEFAULT_SHUTDOWN_GRACE_MS / 1000})
  --client-timeout SECONDS        cut a client whose socket does not drain this long (it takes a few KB/s
                                  or less), freeing its connection and, for a pass-through file, the
                                  upstream's (default ${DEFAULT_CLIENT_TIMEOUT_MS / 1000}, Nix's stalled-download-timeout)
  -h, --help                      show this text

Output: JSON log lines (pino) on stdout. The first one has the bound address in "url" and reads
"narrace proxy listening on http://HOST:PORT …"; then one line per NAR. SIGINT or SIGTERM stops the
proxy with exit code 0; a wrong flag stops it with one line on stderr and exit code 2.
`

function httpUrl(value: string, flag: string): string {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new ProxyUsageError(`${flag}: '${value}' is not a URL`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ProxyUsageError(`${flag}: '${value}' is not an http or https URL`)
  }
  return value.replace(/\/+$/, '')
}

function count(value: string, flag: string, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) > max) {
    throw new ProxyUsageError(`${flag}: '${value}' is not a whole number from 0 to ${max}`)
  }
  return Number(value)
}

/** A duration in seconds (`10`, `2.5`), at most a day, as whole ms. */
function seconds(value: string, flag: string): number {
  if (!/^\d+(\.\d+)?$/.test(value) || Number(value) > 86_400) {
    throw new ProxyUsageError(`${flag}: '${value}' is not a number of seconds from 0 to 86400`)
  }
  return Math.round(Number(value) * 1000)
}

/** Seconds as `seconds` reads them, but never 0: a client timeout of 0 would cut every answer at once. */
function positiveSeconds(value: string, flag: string): number {
  const ms = seconds(value, flag)
  if (ms <= 0) throw new ProxyUsageError(`${flag}: '${value}' is not a number of seconds above 0, up to 86400`)
  return ms
}

/** Reads `HOST:PORT`, `[v6]:PORT` or a bare `PORT` (on 127.0.0.1). */
export function parseListen(value: string): { host: string; port: number } {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d+)$/.exec(value) ?? /^()()(\d+)$/.exec(value)
  if (!match) throw new ProxyUsageError(`--listen: '${value}' is not HOST:PORT`)
  const host = match[1] || match[2] || '127.0.0.1'
  return { host, port: count(match[3]!, '--listen port', 65535) }
}

/** Checks the `name:base64` form Nix uses; the key itself is 32 bytes of ed25519. */
function publicKey(value: string): string {
  const colon = value.indexOf(':')
  const key = value.slice(colon + 1)
  if (colon < 1 || !/^[A-Za-z0-9+/]{43}=$/.test(key)) {
    throw new ProxyUsageError(`--trusted-public-key: '${value}' is not NAME:BASE64 of a 32-byte ed25519 key`)
  }
  return value
}

/** Whether no other machine can reach a proxy listening on `host`. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}

/** Parses the proxy's command line; throws ProxyUsageError with a one-line message. */
export function parseProxyArgs(argv: readonly string[]): ProxyArgs {
  // `pnpm proxy -- --flag` hands the separator through.
  const args = argv[0] === '--' ? argv.slice(1) : [...argv]
  let values: ReturnType<typeof parse>['values']
  try {
    values = parse(args).values
  } catch (error) {
    throw new ProxyUsageError((error as Error).message.split('\n')[0]!)
  }
  const result: ProxyArgs = {
    help: values.help ?? false,
    listen: parseListen(values.listen ?? DEFAULT_LISTEN),
    upstreams: (values.upstream ?? []).map((u) => httpUrl(u, '--upstream')),
    trustedPublicKeys: (values['trusted-public-key'] ?? []).map(publicKey),
    index: values.index,
    netrcFile: values['netrc-file'],
    upstreamHeaders: [],
    maxPassthroughBytes:
      values['max-passthrough-bytes'] === undefined
        ? DEFAULT_MAX_PASSTHROUGH_BYTES
        : count(values['max-passthrough-bytes'], '--max-passthrough-bytes', Number.MAX_SAFE_INTEGER),
    ipfsApi: values['ipfs-api'] === undefined ? undefined : httpUrl(values['ipfs-api'], '--ipfs-api'),
    torrent: values.torrent ?? false,
    announce: values.announce ?? [],
    verifyFirstBelow:
      values['verify-first-below'] === undefined
        ? DEFAULT_VERIFY_FIRST_BELOW
        : count(values['verify-first-below'], '--verify-first-below', Number.MAX_SAFE_INTEGER),
    priority: values.priority === undefined ? DEFAULT_PRIORITY : count(values.priority, '--priority', 1_000_000),
    store: values.store,
    storeMaxBytes:
      values['store-max-bytes'] === undefined
        ? DEFAULT_STORE_MAX_BYTES
        : count(values['store-max-bytes'], '--store-max-bytes', Number.MAX_SAFE_INTEGER),
    donate: values.donate ?? false,
    mappingsFrom: (values['mappings-from'] ?? []).map((u) => httpUrl(u, '--mappings-from')),
    memoryBudget:
      values['memory-budget'] === undefined
        ? DEFAULT_MEMORY_BUDGET
        : count(values['memory-budget'], '--memory-budget', Number.MAX_SAFE_INTEGER),
    maxConnections:
      values['max-connections'] === undefined ? DEFAULT_MAX_CONNECTIONS : count(values['max-connections'], '--max-connections', 10_000),
    shutdownGraceMs: values['shutdown-grace'] === undefined ? DEFAULT_SHUTDOWN_GRACE_MS : seconds(values['shutdown-grace'], '--shutdown-grace'),
    clientTimeoutMs: values['client-timeout'] === undefined ? DEFAULT_CLIENT_TIMEOUT_MS : positiveSeconds(values['client-timeout'], '--client-timeout'),
    ipfs: undefined,
    ipfsListen: values['ipfs-listen'] ?? [DEFAULT_IPFS_LISTEN_ARG],
    ipfsBootstrap: values['ipfs-bootstrap'] ?? [],
    discover: !(values['no-discover'] ?? false),
    peers: (values.peer ?? []).map((u) => httpUrl(u, '--peer')),
    lan: values.lan ?? false,
  }
  if (values.ipfs !== undefined) {
    if (values.ipfs !== 'embedded') throw new ProxyUsageError(`--ipfs: '${values.ipfs}' is not 'embedded' (for Kubo, use --ipfs-api URL)`)
    result.ipfs = 'embedded'
  }
  if (result.help) return result
  if (result.upstreams.length === 0) throw new ProxyUsageError('at least one --upstream URL is needed')
  if (result.index === '') throw new ProxyUsageError('--index: empty path')
  if (result.netrcFile === '') throw new ProxyUsageError('--netrc-file: empty path')
  try {
    result.upstreamHeaders = (values['upstream-header'] ?? []).map((h) => parseUpstreamHeader(h))
    // A header for a URL that is not an upstream is a mistake the user must hear about now.
    upstreamsWith(result.upstreams, { headers: result.upstreamHeaders })
  } catch (error) {
    if (error instanceof TypeError) throw new ProxyUsageError(`--upstream-header: ${error.message.split('\n')[0]}`)
    throw error
  }
  if (result.announce.length > 0 && !result.torrent) throw new ProxyUsageError('--announce needs --torrent')
  if (result.store === '') throw new ProxyUsageError('--store: empty path')
  if (values['store-max-bytes'] !== undefined && result.store === undefined) throw new ProxyUsageError('--store-max-bytes needs --store')
  if (result.storeMaxBytes < 1) throw new ProxyUsageError('--store-max-bytes: must be at least 1')
  if (result.maxConnections < 1) throw new ProxyUsageError('--max-connections: must be at least 1')
  if (result.ipfs !== undefined && result.ipfsApi !== undefined) throw new ProxyUsageError('give --ipfs embedded or --ipfs-api URL, not both')
  if (result.ipfs === undefined && (values['ipfs-listen'] !== undefined || values['ipfs-bootstrap'] !== undefined)) {
    throw new ProxyUsageError('--ipfs-listen and --ipfs-bootstrap need --ipfs embedded')
  }
  if (result.donate && result.store === undefined) throw new ProxyUsageError('--donate needs --store: what is donated is what the store keeps')
  if (result.lan && isLoopbackHost(result.listen.host)) {
    throw new ProxyUsageError(`--lan needs --listen on an address the LAN reaches (e.g. 0.0.0.0:8080), not ${result.listen.host}`)
  }
  return result
}

function parse(args: string[]) {
  return parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      help: { type: 'boolean', short: 'h' },
      listen: { type: 'string' },
      upstream: { type: 'string', multiple: true },
      'trusted-public-key': { type: 'string', multiple: true },
      index: { type: 'string' },
      'netrc-file': { type: 'string' },
      'upstream-header': { type: 'string', multiple: true },
      'max-passthrough-bytes': { type: 'string' },
      'ipfs-api': { type: 'string' },
      torrent: { type: 'boolean' },
      announce: { type: 'string', multiple: true },
      'verify-first-below': { type: 'string' },
      priority: { type: 'string' },
      store: { type: 'string' },
      'store-max-bytes': { type: 'string' },
      donate: { type: 'boolean' },
      'mappings-from': { type: 'string', multiple: true },
      'memory-budget': { type: 'string' },
      'max-connections': { type: 'string' },
      'shutdown-grace': { type: 'string' },
      'client-timeout': { type: 'string' },
      ipfs: { type: 'string' },
      'ipfs-listen': { type: 'string', multiple: true },
      'ipfs-bootstrap': { type: 'string', multiple: true },
      'no-discover': { type: 'boolean' },
      peer: { type: 'string', multiple: true },
      lan: { type: 'boolean' },
    },
  })
}
