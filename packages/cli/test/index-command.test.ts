import { join } from 'node:path'
import { homedir } from 'node:os'
import { describe, expect, it } from 'vitest'
import { defaultIndexPath } from '../src/index-command.js'

describe('defaultIndexPath', () => {
  it('prefers $NARRACE_INDEX, then $XDG_DATA_HOME, then ~/.local/share', () => {
    expect(defaultIndexPath({ NARRACE_INDEX: '/x/i.sqlite', XDG_DATA_HOME: '/d' })).toBe('/x/i.sqlite')
    expect(defaultIndexPath({ XDG_DATA_HOME: '/d' })).toBe('/d/narrace/index.sqlite')
    expect(defaultIndexPath({})).toBe(join(homedir(), '.local', 'share', 'narrace', 'index.sqlite'))
  })
})
