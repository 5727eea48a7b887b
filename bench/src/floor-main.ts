import { floorFromChild } from './floor.js'

await floorFromChild()
