import { Dispatcher, Pool } from 'undici'

/**
 * One keep-alive Pool per origin, kept until close: what undici's Agent does, without its cleanup on
 * disconnect. In undici 7 that cleanup closes a pool whose connection dropped while a new request was
 * on its way (nodejs/undici#5022, fixed in 8, which needs Node 22.19): every aborted race loser then
 * cost its upstream a new connection for each request after it. The origins are the cache's own and
 * those its configuration allows, since every hop is checked before it gets here.
 */
export class OriginPools extends Dispatcher {
  readonly #options: Pool.Options
  readonly #pools = new Map<string, Pool>()
  #closed = false

  constructor(options: Pool.Options) {
    super()
    this.#options = options
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const origin = String(options.origin)
    let pool = this.#pools.get(origin)
    if (!pool) {
      if (this.#closed) throw new TypeError('the dispatcher is closed')
      pool = new Pool(origin, this.#options)
      this.#pools.set(origin, pool)
    }
    return pool.dispatch(options, handler)
  }

  override close(): Promise<void>
  override close(callback: () => void): void
  override close(callback?: () => void): Promise<void> | void {
    this.#closed = true
    const done = Promise.all([...this.#pools.values()].map((pool) => pool.close())).then(() => undefined)
    if (!callback) return done
    void done.then(callback, callback)
  }

  override destroy(): Promise<void>
  override destroy(error: Error | null): Promise<void>
  override destroy(error: Error | null, callback: () => void): void
  override destroy(callback: () => void): void
  override destroy(first?: Error | null | (() => void), second?: () => void): Promise<void> | void {
    this.#closed = true
    const error = typeof first === 'function' ? null : (first ?? null)
    const done = Promise.all([...this.#pools.values()].map((pool) => pool.destroy(error))).then(() => undefined)
    const callback = typeof first === 'function' ? first : second
    if (!callback) return done
    void done.then(callback, callback)
  }
}
