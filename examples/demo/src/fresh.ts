import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { parseNarHash } from '@narrace/core'

const run = promisify(execFile)

/** One store path as the demo fetches it, with the binary cache folder that holds its files. */
export interface CachedPath {
  name: string
  storePath: string
  hashPart: string
  fileHashHex: string
  fileSize: number
  /** Relative to `cacheDir`: `nar/<nix32>.nar.xz`. */
  url: string
  cacheDir: string
}

/** A binary cache made by Nix during the demo, with its own throwaway signing key. */
export interface FreshCache {
  dir: string
  publicKey: string
  paths: CachedPath[]
  close(): Promise<void>
}

/** Nix without a daemon, in throwaway folders: no /nix, no sandbox, no build users. */
export function nixEnv(home: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    XDG_CACHE_HOME: join(home, 'cache'),
    NIX_CONFIG: 'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\n',
  }
}

/**
 * Makes a store path of fresh random bytes with `nix-store --add` in a throwaway store, and copies it
 * into a new xz-compressed binary cache signed with a new key: a NAR no committed fixture could hold.
 */
export async function freshCache(signal: AbortSignal): Promise<FreshCache> {
  const work = await mkdtemp(join(tmpdir(), 'narrace-demo-fresh-'))
  const close = async (): Promise<void> => {
    // Nix makes store paths read-only; make them writable so the folder can go.
    await run('chmod', ['-R', 'u+w', work]).catch(() => undefined)
    await rm(work, { recursive: true, force: true })
  }
  try {
    const options = { env: nixEnv(work), signal }
    const name = 'fresh-2m'
    await mkdir(join(work, 'src'))
    await writeFile(join(work, 'src', name), randomBytes(2 * 1024 * 1024))
    const [secret, pub] = [join(work, 'secret.key'), join(work, 'public.key')]
    await run('nix-store', ['--generate-binary-cache-key', 'narrace-demo-1', secret, pub], options)
    const store = join(work, 'store')
    const storePath = (await run('nix-store', ['--store', store, '--add', join(work, 'src', name)], options)).stdout.trim()
    const cacheDir = join(work, 'binary-cache')
    await run('nix', ['copy', '--store', store, '--to', `file://${cacheDir}?compression=xz&secret-key=${secret}`, storePath], options)

    const hashPart = storePath.slice('/nix/store/'.length, '/nix/store/'.length + 32)
    const narinfo = await readFile(join(cacheDir, `${hashPart}.narinfo`), 'utf8')
    const field = (key: string): string => {
      const value = new RegExp(`^${key}: (.+)$`, 'm').exec(narinfo)?.[1]
      if (value === undefined) throw new Error(`the narinfo Nix wrote has no ${key}`)
      return value
    }
    return {
      dir: cacheDir,
      publicKey: (await readFile(pub, 'utf8')).trim(),
      paths: [
        {
          name,
          storePath,
          hashPart,
          fileHashHex: parseNarHash(field('FileHash')).hex,
          fileSize: Number(field('FileSize')),
          url: field('URL'),
          cacheDir,
        },
      ],
      close,
    }
  } catch (error) {
    await close()
    throw error
  }
}
