import type { NarLocation } from './location.js'

/**
 * What a write does to the stored mapping, in one place for the database and for writes still queued:
 * the fields it gives replace the stored ones, the others stay. A new infohash without a magnet drops the
 * old magnet, which named the other torrent. An address in `bad` (it failed verification for this
 * FileHash) is never taken again. A write that gives an address revives a `gone` mapping; one marked
 * `gone` keeps only the addresses it gives itself.
 */
export function mergeLocation(
  old: NarLocation | undefined,
  next: NarLocation,
  bad: ReadonlySet<string>,
  now: string,
): NarLocation {
  const cid = next.cid !== undefined && !bad.has(next.cid) ? next.cid : undefined
  const btihOk = next.btih !== undefined && !bad.has(next.btih)
  const btih = btihOk ? next.btih : undefined
  const magnet = next.btih === undefined || btihOk ? next.magnet : undefined
  const revived = cid !== undefined || btih !== undefined
  const status = revived ? next.status : (next.status ?? old?.status)

  const merged: NarLocation = { fileHash: next.fileHash }
  const size = next.size ?? old?.size
  if (size !== undefined) merged.size = size
  if (status === 'gone' && next.status === 'gone') {
    if (cid !== undefined) merged.cid = cid
    if (btih !== undefined) merged.btih = btih
    if (magnet !== undefined) merged.magnet = magnet
  } else {
    const keptCid = cid ?? old?.cid
    if (keptCid !== undefined) merged.cid = keptCid
    const keptBtih = btih ?? old?.btih
    if (keptBtih !== undefined) merged.btih = keptBtih
    const keptMagnet = magnet ?? (btih !== undefined && btih !== old?.btih ? undefined : old?.magnet)
    if (keptMagnet !== undefined) merged.magnet = keptMagnet
  }
  const storePath = next.storePath ?? old?.storePath
  if (storePath !== undefined) merged.storePath = storePath
  const url = next.url ?? old?.url
  if (url !== undefined) merged.url = url
  if (status !== undefined) merged.status = status
  const source = next.source ?? old?.source
  if (source !== undefined) merged.source = source
  merged.updatedAt = next.updatedAt ?? now
  return merged
}

/** Drops the addresses in `bad` from a stored mapping (the magnet goes with its infohash). */
export function withoutBad(location: NarLocation, bad: ReadonlySet<string>): NarLocation {
  if (bad.size === 0) return location
  const out = { ...location }
  if (out.cid !== undefined && bad.has(out.cid)) delete out.cid
  if (out.btih !== undefined && bad.has(out.btih)) {
    delete out.btih
    delete out.magnet
  }
  return out
}
