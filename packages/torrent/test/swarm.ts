import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { Server } from 'bittorrent-tracker'
import { parseNarHash, type NarHash } from '@narrace/core'
import { createClient, type WebTorrent, type WebTorrentTorrent } from '../src/index.js'

/** An HTTP tracker on 127.0.0.1, port 0, with UDP and WebSocket off. */
export interface Tracker {
  announce: string[]
  close(): Promise<void>
}

export async function startTracker(): Promise<Tracker> {
  const server = new Server({ http: true, udp: false, ws: false, stats: false })
  // Tracker warnings (a peer announcing junk) are not test failures.
  server.on('warning', () => {})
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  // Idle announce connections close quickly, so that tests counting sockets see them go.
  server.http!.keepAliveTimeout = 100
  const { port } = server.http!.address() as AddressInfo
  return {
    announce: [`http://127.0.0.1:${port}/announce`],
    close: () =>
      new Promise<void>((resolve) => {
        server.http!.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** A client with narrace's loopback-safe defaults; `close()` resolves when its sockets are closed. */
export function newClient(): WebTorrent & { close(): Promise<void> } {
  const client = createClient()
  client.on('error', () => {})
  return Object.assign(client, {
    close: () =>
      new Promise<void>((resolve) => {
        if (client.destroyed) resolve()
        else client.destroy(() => resolve())
      }),
  })
}

/** A temporary directory under os.tmpdir(), removed by `remove()`. */
export async function tempDir(prefix: string): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix))
  return { path, remove: () => rm(path, { recursive: true, force: true }) }
}

/** A random `.nar.xz` stand-in written as `<dir>/<nix32>.nar.xz`. */
export async function writeNar(dir: string, size: number): Promise<{ path: string; bytes: Buffer; hash: NarHash }> {
  const bytes = randomBytes(size)
  const hash = parseNarHash(createHash('sha256').update(bytes).digest('hex'))
  const path = join(dir, `${hash.nix32}.nar.xz`)
  await writeFile(path, bytes)
  return { path, bytes, hash }
}

/** Seeds several files as one multi-file torrent (not a NAR torrent), its copy kept under `storeDir`. */
export function seedFiles(
  client: WebTorrent,
  paths: string[],
  storeDir: string,
  announce: string[],
): Promise<WebTorrentTorrent> {
  return new Promise((resolve, reject) => {
    const torrent = (client.seed as unknown as (
      input: string[],
      options: { announce: string[]; name: string; path: string },
      onseed: (t: WebTorrentTorrent) => void,
    ) => WebTorrentTorrent)(paths, { announce, name: 'not-a-nar', path: storeDir }, resolve)
    torrent.once('error', reject)
  })
}

/** Polls `check` every 20 ms until it is true or `ms` have passed; returns its last answer. */
export async function waitFor(check: () => boolean | Promise<boolean>, ms = 3000): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await check()) return true
    if (Date.now() >= deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Reads a whole body. */
export async function collect(body: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  for await (const chunk of body) chunks.push(chunk)
  return Buffer.concat(chunks)
}

/** Caps a client's upload rate, so that a download is still running when a test cuts it. */
export function throttleUpload(client: WebTorrent, bytesPerSecond: number): void {
  ;(client as unknown as { throttleUpload(rate: number): void }).throttleUpload(bytesPerSecond)
}

/** How many of each kind of resource keep the event loop alive (`process.getActiveResourcesInfo()`). */
export function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1
  return counts
}
