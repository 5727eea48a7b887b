import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'

/** Every byte under a folder, bookkeeping and temporary files included, as `du --apparent-size` counts them. */
export async function folderBytes(path: string): Promise<number> {
  let total = 0
  for (const entry of await readdir(path, { withFileTypes: true }).catch(() => [])) {
    const full = join(path, entry.name)
    if (entry.isDirectory()) total += await folderBytes(full)
    else total += (await stat(full).catch(() => undefined))?.size ?? 0
  }
  return total
}
