import { fallbackRouter } from '@helia/fallback-router'
import type { Helia } from '@helia/interface'

/** The router name the gateways are registered under. */
const ROUTER_NAME = 'narrace-trustless-gateways'

/**
 * Creates and starts a Helia node with no libp2p at all, that fetches blocks over HTTP from these
 * trustless gateways (`GET /ipfs/<cid>?format=raw`) and checks each block against its CID. Give it to
 * `ipfsBackend({ helia })`; stop it when done. Any Kubo gateway or public trustless gateway can serve.
 *
 * Needs the optional peer dependencies `helia` and `@helia/http`.
 */
export async function trustlessGatewayHelia(gateways: string[], options: { signal?: AbortSignal } = {}): Promise<Helia> {
  if (gateways.length === 0) throw new TypeError('trustlessGatewayHelia needs at least one gateway URL')
  for (const gateway of gateways) {
    if (!URL.canParse(gateway)) throw new TypeError(`'${gateway}' is not a gateway URL`)
  }
  options.signal?.throwIfAborted()
  const [{ createHeliaLight }, { withHTTP }] = await Promise.all([import('helia'), import('@helia/http')])
  const helia = createHeliaLight()
  // Registered as an ordinary router: Helia 7 asks fallback routers only after the ordinary ones, and
  // with none of those (recursiveGateways alone) its provider search never gets there.
  const gatewayRouter = fallbackRouter({ gateways, shuffle: false })
  helia.addRouter({ name: ROUTER_NAME, findProviders: (cid, opts) => gatewayRouter.findProviders!(cid, opts) })
  // The caller named these gateways, so plain-HTTP and local ones are as welcome as any.
  withHTTP(helia, { delegatedRouters: [], recursiveGateways: [], allowInsecure: true, allowLocal: true })
  await helia.start()
  if (options.signal?.aborted) {
    await helia.stop()
    throw options.signal.reason
  }
  return helia
}
