import { randomBytes } from 'node:crypto'
import { encodeNix32 } from '@narrace/core'
import type { ServedNar } from './server.js'

/** A random 32-char store hash part. */
export function randomHashPart(): string {
  return encodeNix32(randomBytes(20))
}

/** An unsigned narinfo for a NAR the bench server holds, in the order Nix writes the fields. */
export function narInfoText(hashPart: string, nar: ServedNar): string {
  return [
    `StorePath: /nix/store/${hashPart}-bench-${nar.size}`,
    `URL: ${nar.url}`,
    'Compression: xz',
    `FileHash: ${nar.hash}`,
    `FileSize: ${nar.size}`,
    `NarHash: ${nar.hash}`,
    `NarSize: ${nar.size}`,
    'References: ',
    '',
  ].join('\n')
}
