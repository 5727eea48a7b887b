import type { NarHash } from './hash.js'

/** What `resolveNar` passes to a backend. */
export interface NarFetchOptions {
  /** Fires when the backend lost the race, the consumer went away or the caller aborted. */
  signal: AbortSignal
  /** Where to start: a backend that can, starts here and reports it in `NarSource.offset`. */
  offset?: number
  /**
   * Where to stop, exclusive: a backend that serves ranges sends no byte from here on and says so with
   * `NarSource.ranges`. narrace cuts a body that goes on past it, so a backend may ignore it.
   */
  end?: number
  /** The narinfo FileSize, when known. */
  size?: number
  /** The narinfo URL (`nar/<nix32>.nar.xz`), relative to a binary cache. */
  url?: string
  /**
   * For a backend that holds requests back in a queue of its own (a cap on its connections): call it with
   * `true` when the request starts to wait there and `false` when it goes out. The stall watchdog stands
   * still in between, since that wait is this process's doing, not the source's.
   */
  queued?: (waiting: boolean) => void
}

/** One source of a file's bytes. Backends map the FileHash to their own address. */
export interface NarBackend {
  readonly name: string
  /** Resolves once the source is ready to stream; rejects with NarNotFoundError when it has no copy. */
  fetch(hash: NarHash, options: NarFetchOptions): Promise<NarSource>
  close?(): Promise<void>
}

export interface NarSource {
  body: AsyncIterable<Uint8Array>
  /** The offset the body starts at: the requested one if honoured, 0 if ignored. */
  offset: number
  /** The size of the whole file, when the source knows it. */
  size?: number
  /**
   * True when this backend serves any byte range asked of it (`offset` and `end` both honoured, on this
   * and later calls). Only such sources get segments of a striped download; the others are used whole.
   */
  ranges?: boolean
}

/**
 * `restart` marks a start over from byte 0 after a failed verification (verify-first): what was counted
 * for the earlier sources is void.
 */
export type NarEventType = 'start' | 'first-byte' | 'win' | 'abort' | 'fail' | 'failover' | 'restart' | 'done'

export interface NarEvent {
  type: NarEventType
  backend: string
  /** Milliseconds since the call to resolveNar. */
  ms: number
  /** Bytes delivered to the consumer so far. */
  bytes: number
  /** With `fail`: why that backend failed. */
  error?: unknown
}

export interface ResolveNarOptions {
  backends: NarBackend[]
  signal?: AbortSignal
  /** The narinfo FileSize: more or fewer bytes than this fail. */
  size?: number
  /** The narinfo URL, passed to every backend. */
  url?: string
  /** A source that yields no byte for this long is dropped and the next takes over. @default 30000 */
  stallTimeoutMs?: number
  /**
   * A source that sends fewer bytes than this per second, on average over `stallTimeoutMs` of waiting
   * for it, counts as stalled too (curl's low-speed limit, which Nix relies on). 0 turns it off.
   * @default 1024
   */
  minBytesPerSecond?: number
  /**
   * Without a `size`, a file is cut here with NarSizeMismatchError: a source that never ends can't fill
   * the disk. Pass a tighter bound when one is known (the narinfo's NarSize plus compression overhead).
   * @default 68719476736 (64 GiB)
   */
  maxNarBytes?: number
  /** Per-backend start delay in ms, by backend name. @default {} */
  hedge?: Record<string, number>
  /** Files of at most this many bytes are verified whole before the first byte is yielded. @default 0 */
  verifyFirstBelow?: number
  /**
   * Once the size is known and at least this many bytes are left, the rest is striped over every source
   * that serves ranges. `Infinity` turns striping off. @default 8388608 (8 MiB)
   */
  stripeAbove?: number
  /** While striping, at most this many segments at a time from one source. @default 2 */
  connectionsPerSource?: number
  /**
   * While striping, bytes that arrived ahead of the consumer wait in a buffer of at most this many bytes;
   * no segment starts that could overflow it. @default 33554432 (32 MiB)
   */
  maxBufferBytes?: number
  onEvent?: (event: NarEvent) => void
}

/** The verified stream of one file. Iterate it once; leaving the loop early cancels every source. */
export interface NarStream extends AsyncIterable<Uint8Array> {
  readonly hash: NarHash
  /** The backend that delivered the first byte. */
  readonly winner: string
  /** The expected size: the narinfo FileSize, or what the winner announced. */
  readonly size: number | undefined
  /** Bytes delivered to the consumer so far. */
  readonly bytesRead: number
  /** Every backend that delivered bytes, in order. */
  readonly sources: readonly string[]
}
