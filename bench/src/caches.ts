import { PROFILES, startBlackhole, startShaper, type ProfileName, type Shaper, type ShaperFaults } from './shaper.js'

/** A binary cache as a client sees it: a server behind a shaped link, or a dead host. */
export interface Cache {
  readonly url: string
  readonly profile: ProfileName
  /** The relay, for faults and byte counts; undefined for `dead`. */
  readonly shaper: Shaper | undefined
  close(): Promise<void>
}

/** Puts `server` behind a link of `profile`; `dead` ignores the server and is a blackhole. */
export async function openCache(server: { url: string }, profile: ProfileName, faults: ShaperFaults = {}): Promise<Cache> {
  if (profile === 'dead') {
    const hole = await startBlackhole()
    return { url: hole.url, profile, shaper: undefined, close: () => hole.close() }
  }
  const target = new URL(server.url)
  const shaper = await startShaper({
    target: { host: target.hostname, port: Number(target.port) },
    profile: PROFILES[profile],
    ...faults,
  })
  return { url: shaper.url, profile, shaper, close: () => shaper.close() }
}

/** Closes everything opened so far, even when some closes fail. */
export class Closer {
  private readonly items: { close(): Promise<void> | void }[] = []

  add<T extends { close(): Promise<void> | void }>(item: T): T {
    this.items.push(item)
    return item
  }

  async close(): Promise<void> {
    const items = this.items.splice(0).reverse()
    await Promise.allSettled(items.map(async (item) => item.close()))
  }
}
