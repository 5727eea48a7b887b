import { describe, expect, it } from 'vitest'
import { EXIT_OK, EXIT_USAGE, run, USAGE } from '../src/main.js'

function capture() {
  const out: string[] = []
  const err: string[] = []
  return {
    out,
    err,
    io: { stdout: { write: (t: string) => out.push(t) }, stderr: { write: (t: string) => err.push(t) } },
  }
}

describe('run', () => {
  it('prints the usage for --help and exits 0', async () => {
    const { io, out } = capture()
    expect(await run(['--help'], io)).toBe(EXIT_OK)
    expect(out.join('')).toBe(USAGE)
  })

  it.each([[['fetch', '--help']], [['prefetch', '-h', '--cache', 'x']], [['index', 'export', '--help']]])(
    'prints the usage for %j and exits 0',
    async (argv) => {
      const { io, out } = capture()
      expect(await run(argv, io)).toBe(EXIT_OK)
      expect(out.join('')).toBe(USAGE)
    },
  )

  it('takes --help after -- as an argument', async () => {
    const { io, err } = capture()
    expect(await run(['fetch', '-o', 'x', '--', '--help'], io)).toBe(EXIT_USAGE)
    expect(err.join('')).toMatch(/--help/)
  })

  it('exits 2 with the usage when no command is given', async () => {
    const { io, err } = capture()
    expect(await run([], io)).toBe(EXIT_USAGE)
    expect(err.join('')).toBe(USAGE)
  })

  it.each([[['frobnicate']], [['fetch', '--http']], [['prefetch', '-o', 'd', '--cache', 'http://a']], [['publish']]])(
    'exits 2 with one line for %j',
    async (argv) => {
      const { io, err } = capture()
      expect(await run(argv, io)).toBe(EXIT_USAGE)
      expect(err).toHaveLength(1)
      expect(err[0]).toMatch(/^narrace: [^\n]+\n$/)
    },
  )
})
