import type { NarHash } from '@narrace/core'
import type { PeerId } from '@libp2p/interface'
import type { KadDHT } from '@libp2p/kad-dht'
import { narCid } from './cid.js'
import { askMapping, DEFAULT_MAPPING_TIMEOUT_MS, type MappingAsker, type NarMapping } from './mapping-protocol.js'

/** How long discovery may look for providers and their answers before it gives up. @default 5_000 */
export const DEFAULT_DISCOVERY_TIMEOUT_MS = 5_000

/** Providers asked for a mapping per file, at most; the rest of what the DHT names is ignored. @default 20 */
export const DEFAULT_DISCOVERY_MAX_PROVIDERS = 20

/**
 * Once this many providers gave a mapping, the search stops: enough to outvote a liar, without waiting
 * for a slow DHT query to finish. @default 3
 */
export const DEFAULT_DISCOVERY_ENOUGH_ANSWERS = 3

/** A mapping the DHT's providers gave, with the providers that agree on it. */
export interface DiscoveredMapping extends NarMapping {
  providers: PeerId[]
}

/** The libp2p node discovery runs on: its DHT and its dialler. */
export interface DiscoveryNode {
  libp2p: MappingAsker & { peerId: PeerId; services: { dht: Pick<KadDHT, 'findProviders'> } }
}

export interface DiscoverOptions {
  /** The FileSize, when known: a mapping of another size is a lie and is left out (and reported). */
  size?: number | undefined
  /** @default DEFAULT_DISCOVERY_TIMEOUT_MS */
  timeoutMs?: number
  /** @default DEFAULT_MAPPING_TIMEOUT_MS */
  mappingTimeoutMs?: number
  /** @default DEFAULT_DISCOVERY_MAX_PROVIDERS */
  maxProviders?: number
  /** Called for each mapping left out for its size, so that the caller can mark it bad. */
  onWrongSize?: (mapping: NarMapping, provider: PeerId) => void
  signal?: AbortSignal
}

/**
 * Finds the mappings of `hash` through the DHT: the providers of the FileHash's raw CID, each asked over
 * `/narrace/mapping/1.0.0`. Resolves to the distinct mappings, those most providers agree on first, once
 * the DHT query ended, enough providers answered, or `timeoutMs` passed; an empty list when no provider
 * gave one. Rejects only when `signal` aborts.
 */
export async function discoverMappings(node: DiscoveryNode, hash: NarHash, options: DiscoverOptions = {}): Promise<DiscoveredMapping[]> {
  const { signal, size } = options
  signal?.throwIfAborted()
  const timeout = AbortSignal.timeout(options.timeoutMs ?? DEFAULT_DISCOVERY_TIMEOUT_MS)
  const enough = new AbortController()
  const search = AbortSignal.any([timeout, enough.signal, ...(signal ? [signal] : [])])
  const maxProviders = options.maxProviders ?? DEFAULT_DISCOVERY_MAX_PROVIDERS
  const libp2p = node.libp2p
  const asked = new Set<string>()
  const asks: Array<Promise<void>> = []
  const found = new Map<string, DiscoveredMapping>()
  let answers = 0

  const ask = async (provider: Parameters<typeof askMapping>[1]): Promise<void> => {
    const mapping = await askMapping(libp2p, provider, hash, {
      signal: AbortSignal.any([timeout, ...(signal ? [signal] : [])]),
      timeoutMs: options.mappingTimeoutMs ?? DEFAULT_MAPPING_TIMEOUT_MS,
    })
    if (mapping === undefined) return
    if (size !== undefined && mapping.size !== size) {
      options.onWrongSize?.(mapping, provider.id)
      return
    }
    const key = mapping.cid.toV1().toString()
    const entry = found.get(key) ?? { ...mapping, providers: [] }
    entry.providers.push(provider.id)
    found.set(key, entry)
    if (++answers >= DEFAULT_DISCOVERY_ENOUGH_ANSWERS) enough.abort()
  }

  try {
    for await (const event of libp2p.services.dht.findProviders(narCid(hash), { signal: search })) {
      if (event.name !== 'PROVIDER') continue
      for (const provider of event.providers) {
        const id = provider.id.toString()
        if (provider.id.equals(libp2p.peerId) || asked.has(id) || asked.size >= maxProviders) continue
        asked.add(id)
        // A provider that can't be reached or answers nonsense is one fewer answer, nothing more.
        asks.push(ask(provider).catch(() => {}))
      }
    }
  } catch (error) {
    if (!search.aborted) throw error
  }
  await Promise.all(asks)
  signal?.throwIfAborted()
  return [...found.values()].sort((a, b) => b.providers.length - a.providers.length)
}
