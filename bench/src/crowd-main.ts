import { crowdFromChild } from './crowd.js'

crowdFromChild()
