import { once } from 'node:events'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

/** A static binary cache on 127.0.0.1 that answers like a distant one: late, and at a limited rate. */
export interface Upstream {
  url: string
  close(): Promise<void>
}

/** Only the files a binary cache has; nothing else is looked up on disk. */
const CACHE_FILE = /^\/(nix-cache-info|[0-9a-z]{32}\.narinfo|nar\/[0-9a-z]{52}\.nar(?:\.xz)?)$/

/**
 * Serves the files of `roots`, looked up in that order, as one cache. With `narFiles: false` it is the
 * same cache after its NAR files are gone: narinfo only, 404 for every `nar/` file.
 */
export async function startUpstream(
  roots: string[],
  options: { firstByteDelayMs: number; bytesPerSecond: number; narFiles?: boolean },
): Promise<Upstream> {
  const tick = 50
  const piece = Math.max(1, Math.floor((options.bytesPerSecond * tick) / 1000))
  const server: Server = createServer((req, res) => {
    void (async () => {
      const gone = new AbortController()
      res.once('close', () => gone.abort())
      const match = CACHE_FILE.exec(req.url ?? '')
      let file: { path: string; size: number } | undefined
      const narGone = options.narFiles === false && match?.[1]!.startsWith('nar/') === true
      for (const root of match && !narGone ? roots : []) {
        const path = join(root, match![1]!)
        const info = await stat(path).catch(() => undefined)
        if (info?.isFile()) {
          file = { path, size: info.size }
          break
        }
      }
      await sleep(options.firstByteDelayMs, undefined, { signal: gone.signal })
      if (!file) {
        res.writeHead(404, { 'content-length': 0 }).end()
        return
      }
      res.writeHead(200, { 'content-length': file.size })
      if (req.method === 'HEAD') {
        res.end()
        return
      }
      for await (const chunk of createReadStream(file.path, { highWaterMark: piece, signal: gone.signal })) {
        if (!res.write(chunk)) await once(res, 'drain', { signal: gone.signal })
        await sleep(tick, undefined, { signal: gone.signal })
      }
      res.end()
    })().catch(() => res.destroy())
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

/** A cache URL on a port nobody listens on: every connection is refused. */
export async function deadUpstream(): Promise<string> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return `http://127.0.0.1:${port}`
}
