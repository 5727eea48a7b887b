import { serveFromChild } from './server.js'

await serveFromChild()
