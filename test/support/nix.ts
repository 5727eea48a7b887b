import { execFile, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'

/** Whether a `nix` binary is on PATH; the real-Nix tests skip, saying so, when it is not. */
export const nixAvailable: boolean = spawnSync('nix', ['--version'], { stdio: 'ignore' }).status === 0

/**
 * Nix used without a daemon, on a store in a temporary folder: no /nix, no sandbox, no build users, and no
 * default substituter, so nothing is ever asked of a host but the ones a test names.
 */
const NIX_CONFIG = 'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\n'

export interface NixRun {
  code: number
  stdout: string
  stderr: string
  ms: number
}

/** A throwaway Nix world: a store folder and a HOME/XDG cache of its own, so runs share no narinfo cache. */
export interface NixSandbox {
  dir: string
  /** A new, empty store folder under `dir` on each call. */
  store(): string
  run(command: 'nix' | 'nix-store', args: string[], timeoutMs?: number): Promise<NixRun>
  /** `nix copy --from URL --to <store> paths…` with the trusted key; extra Nix options may be given. */
  copyFrom(url: string, store: string, paths: string[], publicKey: string, options?: Record<string, string>): Promise<NixRun>
  /** Whether `storePath` is a valid path of `store`. */
  has(store: string, storePath: string): Promise<boolean>
  close(): Promise<void>
}

/** `wrap`: a command Nix runs under, such as `ip netns exec NS`. */
export async function nixSandbox(wrap: string[] = []): Promise<NixSandbox> {
  const dir = await mkdtemp(join(tmpdir(), 'narrace-nix-'))
  let stores = 0
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: join(dir, 'home'),
    XDG_CACHE_HOME: join(dir, 'cache'),
    XDG_CONFIG_HOME: join(dir, 'config'),
    NIX_CONFIG,
  }

  const run = (command: 'nix' | 'nix-store', args: string[], timeoutMs = 60_000): Promise<NixRun> =>
    new Promise((resolve) => {
      const started = performance.now()
      const [file, ...prefix] = [...wrap, command]
      execFile(file!, [...prefix, ...args], { env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0
        resolve({ code, stdout, stderr, ms: performance.now() - started })
      })
    })

  return {
    dir,
    store: () => join(dir, `store-${++stores}`),
    run,
    copyFrom(url, store, paths, publicKey, options = {}) {
      const extra = Object.entries(options).flatMap(([key, value]) => ['--option', key, value])
      return run('nix', ['copy', '--from', url, '--to', store, '--option', 'trusted-public-keys', publicKey, ...extra, ...paths])
    },
    async has(store, storePath) {
      if (!existsSync(join(store, storePath))) return false
      return (await run('nix-store', ['--store', store, '--check-validity', storePath])).code === 0
    },
    async close() {
      // Nix makes store paths read-only; make them writable so the folder can go.
      spawnSync('chmod', ['-R', 'u+w', dir], { stdio: 'ignore' })
      await rm(dir, { recursive: true, force: true })
    },
  }
}
