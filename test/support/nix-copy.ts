import { setTimeout as sleep } from 'node:timers/promises'
import { expect } from 'vitest'
import { nixSandbox, type NixRun } from './nix.js'

/** Polls `check` every 50 ms until it holds; throws naming `what` after `ms`. */
export async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  for (const end = Date.now() + ms; !check(); ) {
    if (Date.now() > end) throw new Error(`${what}: not reached in ${ms} ms`)
    await sleep(50)
  }
}

/** `nix copy --from url` of these store paths into a fresh store, checking that each arrived; `wrap` as for nixSandbox. */
export async function copyPaths(
  url: string,
  paths: Array<{ name: string; storePath: string }>,
  key: string,
  wrap: string[] = [],
): Promise<NixRun> {
  const nix = await nixSandbox(wrap)
  try {
    const store = nix.store()
    const run = await nix.copyFrom(url, store, paths.map((p) => p.storePath), key)
    if (run.code === 0) for (const path of paths) expect(await nix.has(store, path.storePath), path.name).toBe(true)
    return run
  } finally {
    await nix.close()
  }
}
