import { createHash, type Hash } from 'node:crypto'
import { NarHashMismatchError, NarSizeMismatchError } from './errors.js'
import { encodeNix32, type NarHash } from './hash.js'

/** A run of bytes from one sender, with the SHA-256 of what arrived. */
export interface Piece {
  start: number
  end: number
  sender: string
  digest: Buffer
}

/**
 * Checks one copy of a file as it is delivered, in order: its size against the FileSize (or the
 * maxNarBytes bound), its SHA-256 against the FileHash, and which source sent which bytes. With `pieces`
 * on, it also keeps a SHA-256 of each run of bytes from one sender, so that a bad copy assembled from
 * several sources can be blamed on the one that lied; with `boundaries`, it cuts its digests there
 * instead, to be compared with such a copy.
 */
export class Verifier {
  bytes = 0
  /** Every sender, in the order of their first byte. */
  readonly sources: string[] = []
  readonly pieces: Piece[] = []
  private readonly hasher: Hash = createHash('sha256')
  private piece: { start: number; sender: string; hasher: Hash } | undefined
  private next = 0

  constructor(
    private readonly hash: NarHash,
    private readonly options: { track: boolean; boundaries?: readonly number[] },
  ) {}

  /** Whether it keeps digests per piece. */
  get tracking(): boolean {
    return this.options.track
  }

  /** Throws NarSizeMismatchError when `length` more bytes from `sender` would pass `limit`. */
  checkSize(length: number, sender: string, limit: number, known: boolean): void {
    if (this.bytes + length <= limit) return
    const bound = known ? `the ${limit} bytes of ${this.hash}` : `maxNarBytes (${limit})`
    throw new NarSizeMismatchError(`${sender} sent more than ${bound}`, {
      expected: limit,
      actual: this.bytes + length,
      hash: this.hash.toString(),
      sources: [...this.sources, sender].filter((v, i, all) => all.indexOf(v) === i),
    })
  }

  update(chunk: Uint8Array, sender: string): void {
    if (!this.sources.includes(sender)) this.sources.push(sender)
    this.hasher.update(chunk)
    if (this.options.track) this.track(chunk, sender)
    this.bytes += chunk.length
  }

  /** Throws NarHashMismatchError unless the bytes so far are the file; `sources` names them all. */
  finish(): void {
    this.closePiece(this.bytes)
    const actual = this.hasher.digest()
    if (!actual.equals(this.hash.bytes)) {
      throw new NarHashMismatchError(
        `${this.hash} does not match the bytes received from ${this.sources.join(', ')} (sha256:${encodeNix32(actual)})`,
        { expected: this.hash.toString(), actual: `sha256:${encodeNix32(actual)}`, sources: [...this.sources] },
      )
    }
  }

  private track(chunk: Uint8Array, sender: string): void {
    const cuts = this.options.boundaries
    let at = this.bytes
    let offset = 0
    while (offset < chunk.length) {
      if (this.piece && this.piece.sender !== sender) this.closePiece(at)
      let stop = chunk.length
      const cut = cuts?.[this.next]
      if (cut !== undefined) {
        if (cut <= at) {
          this.closePiece(at)
          this.next++
          continue
        }
        stop = Math.min(stop, offset + cut - at)
      }
      this.piece ??= { start: at, sender, hasher: createHash('sha256') }
      this.piece.hasher.update(chunk.subarray(offset, stop))
      at += stop - offset
      offset = stop
    }
  }

  private closePiece(end: number): void {
    const piece = this.piece
    if (!piece) return
    this.piece = undefined
    this.pieces.push({ start: piece.start, end, sender: piece.sender, digest: piece.hasher.digest() })
  }
}

/**
 * The senders of the pieces of a bad copy whose bytes differ from a verified copy's, cut at the same
 * boundaries: the sources that lied.
 */
export function blame(bad: readonly Piece[], good: readonly Piece[]): string[] {
  const liars: string[] = []
  for (const piece of bad) {
    const match = good.find((g) => g.start === piece.start && g.end === piece.end)
    if (match && match.digest.equals(piece.digest)) continue
    if (!liars.includes(piece.sender)) liars.push(piece.sender)
  }
  return liars
}
