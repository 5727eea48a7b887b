import { answerParent, spawnRpc } from './child.js'
import { PROFILES, startShaper, type Shaper, type ShaperFaults } from './shaper.js'

/** A shaper in the shapers' own process: its faults and counters are one message away. */
export interface RemoteShaper {
  readonly url: string
  setFaults(faults: ShaperFaults): Promise<void>
  /** Bytes forwarded server to client so far, over all connections. */
  bytesDown(): Promise<number>
  close(): Promise<void>
}

/** A process that runs shapers. */
export interface ShaperHost {
  open(target: string, profile: keyof typeof PROFILES): Promise<RemoteShaper>
  close(): Promise<void>
}

type Request =
  | { id: number; op: 'open'; target: string; profile: keyof typeof PROFILES }
  | { id: number; op: 'faults'; shaper: number; faults: ShaperFaults }
  | { id: number; op: 'bytes'; shaper: number }
  | { id: number; op: 'close'; shaper: number }

/** A request before it gets its id; distributes over the union. */
type Call<T = Request> = T extends unknown ? Omit<T, 'id'> : never

/**
 * Starts a child process for shapers. At 100 MiB/s and more, pacing costs a good part of a core: in the
 * client's process it would slow the client under test, and not a baseline run as another program.
 */
export async function spawnShapers(): Promise<ShaperHost> {
  const child = await spawnRpc<Call>('shaper-main')
  return {
    async open(target, profile) {
      const { shaper, url } = await child.call<{ shaper: number; url: string }>({ op: 'open', target, profile })
      return {
        url,
        setFaults: (faults) => child.call<void>({ op: 'faults', shaper, faults }),
        bytesDown: () => child.call<number>({ op: 'bytes', shaper }),
        close: () => child.call<void>({ op: 'close', shaper }),
      }
    },
    close: () => child.close(),
  }
}

/** The body of the child process started by {@link spawnShapers}. */
export function shapeFromChild(): void {
  const shapers: Shaper[] = []
  answerParent<Request>(
    true,
    async (request) => {
      if (request.op === 'open') {
        const target = new URL(request.target)
        const shaper = await startShaper({ target: { host: target.hostname, port: Number(target.port) }, profile: PROFILES[request.profile] })
        shapers.push(shaper)
        return { shaper: shapers.length - 1, url: shaper.url }
      }
      const shaper = shapers[request.shaper]
      if (!shaper) throw new Error(`no shaper ${request.shaper}`)
      if (request.op === 'faults') return shaper.setFaults(request.faults)
      if (request.op === 'bytes') return shaper.bytesDown
      return shaper.close()
    },
    () => Promise.allSettled(shapers.map((s) => s.close())),
  )
}
