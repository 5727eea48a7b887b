import { pollFromChild } from './poll.js'

await pollFromChild()
