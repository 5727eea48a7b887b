import { shapeFromChild } from './shaper-child.js'

shapeFromChild()
