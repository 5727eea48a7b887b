import { execFile, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, normalize, sep } from 'node:path'
import { BENCH_DIR } from './results.js'

/** The checked-in, Nix-made fixture cache: 20 paths under closure-root, signed. */
export const FIXTURE_CACHE = join(BENCH_DIR, '..', 'test', 'fixtures', 'cache')

/** The fixture closure's root and the key that signed the cache, or why they are missing. */
export async function fixtureClosure(): Promise<{ storePath: string; publicKey: string } | string> {
  const manifest = JSON.parse(await readFile(join(FIXTURE_CACHE, '..', 'cache.json'), 'utf8')) as {
    publicKey: string
    paths: { name: string; storePath: string }[]
  }
  const root = manifest.paths.find((p) => p.name === 'closure-root')
  return root ? { storePath: root.storePath, publicKey: manifest.publicKey } : 'no closure-root in test/fixtures/cache.json'
}

/** Whether a `nix` binary is on PATH. */
export const nixAvailable = (): boolean => spawnSync('nix', ['--version'], { stdio: 'ignore' }).status === 0

/** How one Nix command ended. */
export interface NixRun {
  code: number
  ms: number
  stderr: string
}

/**
 * Nix without a daemon, on stores in a temporary folder, with HOME and XDG folders of its own so that no
 * run finds narinfo in another run's disk cache.
 */
export interface NixSandbox {
  /** Runs `command args(store)…` with a fresh store folder and a fresh cache folder. */
  run(
    command: 'nix' | 'nix-store',
    args: (store: string) => string[],
    options: { timeoutMs: number; signal: AbortSignal },
  ): Promise<NixRun>
  close(): Promise<void>
}

/** Makes a sandbox folder under os.tmpdir(); `close()` removes it. */
export async function nixSandbox(): Promise<NixSandbox> {
  const dir = await mkdtemp(join(tmpdir(), 'narrace-bench-nix-'))
  let runs = 0
  return {
    run(command, args, { timeoutMs, signal }) {
      const n = ++runs
      const env: NodeJS.ProcessEnv = {
        PATH: process.env.PATH,
        HOME: join(dir, `home-${n}`),
        XDG_CACHE_HOME: join(dir, `cache-${n}`),
        XDG_CONFIG_HOME: join(dir, `config-${n}`),
        NIX_CONFIG: 'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\n',
      }
      const store = join(dir, `store-${n}`)
      return new Promise((resolve) => {
        const t0 = performance.now()
        execFile(command, args(store), { env, timeout: timeoutMs, signal, maxBuffer: 16 * 1024 * 1024 }, (error, _stdout, stderr) => {
          const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0
          resolve({ code, ms: performance.now() - t0, stderr })
        })
      })
    },
    async close() {
      // Nix makes store paths read-only; make them writable so the folder can go.
      spawnSync('chmod', ['-R', 'u+w', dir], { stdio: 'ignore' })
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/** Serves a `file://` binary cache folder over HTTP on 127.0.0.1. */
export async function serveCacheDir(root: string): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent((req.url ?? '/').split('?')[0]!))
    const file = join(root, path)
    if (!file.startsWith(root + sep)) {
      res.statusCode = 400
      res.end()
      return
    }
    readFile(file).then(
      (body) => {
        res.setHeader('content-length', body.length)
        res.end(req.method === 'HEAD' ? undefined : body)
      },
      () => {
        res.statusCode = 404
        res.end()
      },
    )
  })
  server.listen({ host: '127.0.0.1', port: 0 })
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
