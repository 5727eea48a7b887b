import { join } from 'node:path'

/** A real Kubo RPC API for tests: ipfs-core behind ipfs-http-server, offline, on 127.0.0.1. */
export interface KuboRpc {
  /** The API URL, `http://127.0.0.1:<port>`. */
  url: string
  stop(): Promise<void>
}

/**
 * Starts an offline ipfs-core node with its repo under `dir` and serves its RPC API on a free loopback
 * port. Both packages are deprecated; they are here only because they install from npm, where the
 * `kubo` package downloads its binary at install time.
 */
export async function startKuboRpc(dir: string): Promise<KuboRpc> {
  const { create } = await import('ipfs-core')
  const { HttpApi } = await import('ipfs-http-server')
  const node = await create({
    repo: join(dir, 'ipfs-repo'),
    offline: true,
    preload: { enabled: false },
    silent: true,
    config: {
      Addresses: { API: '/ip4/127.0.0.1/tcp/0', Gateway: '/ip4/127.0.0.1/tcp/0', Swarm: [] },
      Bootstrap: [],
      Discovery: { MDNS: { Enabled: false }, webRTCStar: { Enabled: false } },
    },
  })
  const server = new HttpApi(node) as unknown as {
    start(): Promise<void>
    stop(): Promise<void>
    apiAddr: { nodeAddress(): { port: number } }
  }
  try {
    await server.start()
  } catch (error) {
    await node.stop()
    throw error
  }
  return {
    url: `http://127.0.0.1:${server.apiAddr.nodeAddress().port}`,
    async stop() {
      await server.stop()
      await node.stop()
    },
  }
}
