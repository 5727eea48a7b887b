import type { Scenario } from '../scenario.js'
import { backends } from './backends.js'
import { concurrency } from './concurrency.js'
import { coreOverhead } from './core-overhead.js'
import { dht } from './dht.js'
import { failover } from './failover.js'
import { http } from './http.js'
import { ipfs } from './ipfs.js'
import { nix } from './nix.js'
import { overhead } from './overhead.js'
import { race } from './race.js'
import { proxyLoad } from './proxy-load.js'
import { store } from './store.js'
import { stripe } from './stripe.js'
import { torrent } from './torrent.js'

/** Every scenario, in the order `pnpm bench` runs them. */
export const SCENARIOS: Scenario[] = [coreOverhead, http, overhead, backends, race, failover, stripe, concurrency, ipfs, dht, torrent, nix, store, proxyLoad]
