import { describe, expect, it } from 'vitest'
import { Progress } from '../src/progress.js'

function sink(isTTY: boolean) {
  const writes: string[] = []
  return { writes, output: { isTTY, columns: 200, write: (text: string) => writes.push(text) } }
}

describe('Progress', () => {
  it('shows paths, bytes out of the total and each backend’s share', () => {
    const { output } = sink(false)
    const progress = new Progress(output)
    progress.pathsTotal = 4
    progress.paths = 1
    progress.total = 4096
    progress.add('http://a', 3072)
    progress.add('ipfs', 1024)
    const status = progress.status()
    expect(status).toContain('1/4 paths')
    expect(status).toContain('4.00 KiB / 4.00 KiB')
    expect(status).toContain('http://a 75% ipfs 25%')
  })

  it('writes plain lines when the output is not a TTY', () => {
    const { output, writes } = sink(false)
    const progress = new Progress(output)
    progress.start()
    progress.log('fetched x')
    progress.stop()
    expect(writes).toEqual(['fetched x\n'])
  })

  it('redraws a bar in place on a TTY and keeps logged lines above it', () => {
    const { output, writes } = sink(true)
    const progress = new Progress(output)
    progress.total = 100
    progress.start()
    progress.add('http://a', 50)
    progress.log('won')
    progress.stop()
    const text = writes.join('')
    expect(text).toContain('won\n')
    expect(text).toContain('[##########..........]')
    expect(text.endsWith('\n')).toBe(true)
  })
})
