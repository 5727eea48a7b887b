import { performance } from 'node:perf_hooks'
import { formatBytes, formatPercent, formatRate } from './format.js'

/** Where progress goes: a TTY gets a bar redrawn in place, anything else plain lines. */
export interface ProgressOutput {
  write(text: string): unknown
  isTTY?: boolean
  columns?: number
}

/** How often the bar is redrawn on a TTY. */
const TTY_INTERVAL_MS = 100
/** How often a plain status line is printed when output is not a TTY. */
const PLAIN_INTERVAL_MS = 5_000
/** The current rate is measured over this window. */
const RATE_WINDOW_MS = 3_000
const BAR_WIDTH = 20

/**
 * One progress display for a fetch or a whole closure: paths, bytes out of the total, the current rate,
 * and the share of bytes each backend delivered.
 */
export class Progress {
  bytes = 0
  total: number | undefined
  paths: number | undefined
  pathsTotal: number | undefined
  readonly byBackend = new Map<string, number>()
  private readonly output: ProgressOutput
  private readonly tty: boolean
  private readonly samples: Array<[number, number]> = []
  private timer: NodeJS.Timeout | undefined
  private drawn = false
  private lastPlain = ''

  constructor(output: ProgressOutput, options: { tty?: boolean } = {}) {
    this.output = output
    this.tty = options.tty ?? output.isTTY === true
  }

  start(): void {
    if (this.timer) return
    this.samples.push([performance.now(), this.bytes])
    this.timer = setInterval(() => this.tick(), this.tty ? TTY_INTERVAL_MS : PLAIN_INTERVAL_MS)
    this.timer.unref()
    if (this.tty) this.draw()
  }

  /** Counts bytes a backend delivered. */
  add(backend: string, bytes: number): void {
    this.bytes += bytes
    this.byBackend.set(backend, (this.byBackend.get(backend) ?? 0) + bytes)
  }

  /** Prints a line above the bar. */
  log(line: string): void {
    if (this.tty && this.drawn) this.output.write('\r\x1b[2K')
    this.output.write(line + '\n')
    if (this.tty && this.drawn) this.draw()
  }

  /** Stops redrawing and leaves the last state on screen. */
  stop(): void {
    clearInterval(this.timer)
    this.timer = undefined
    if (this.tty && this.drawn) {
      this.draw()
      this.output.write('\n')
      this.drawn = false
    }
  }

  /** The rate over the last few seconds, in bytes per second. */
  rate(): number {
    const now = performance.now()
    while (this.samples.length > 1 && now - this.samples[0]![0] > RATE_WINDOW_MS) this.samples.shift()
    const [t, b] = this.samples[0] ?? [now, this.bytes]
    return now > t ? ((this.bytes - b) * 1000) / (now - t) : 0
  }

  /** The status line: `3/20 paths  1.2 MiB / 4.5 MiB  3.4 MiB/s  http://a 80% ipfs 20%`. */
  status(): string {
    const parts: string[] = []
    if (this.pathsTotal !== undefined) parts.push(`${this.paths ?? 0}/${this.pathsTotal} paths`)
    parts.push(this.total !== undefined ? `${formatBytes(this.bytes)} / ${formatBytes(this.total)}` : formatBytes(this.bytes))
    parts.push(formatRate(this.rate(), 1000))
    const shares = [...this.byBackend].filter(([, n]) => n > 0)
    if (shares.length > 0) parts.push(shares.map(([name, n]) => `${name} ${formatPercent(n, this.bytes)}`).join(' '))
    return parts.join('  ')
  }

  private tick(): void {
    this.samples.push([performance.now(), this.bytes])
    if (this.tty) {
      this.draw()
      return
    }
    const line = this.status()
    if (line !== this.lastPlain) this.output.write(line + '\n')
    this.lastPlain = line
  }

  private draw(): void {
    let line = this.status()
    if (this.total !== undefined && this.total > 0) {
      const filled = Math.min(BAR_WIDTH, Math.floor((this.bytes * BAR_WIDTH) / this.total))
      line = `[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${line}`
    }
    const columns = this.output.columns || 100
    this.output.write(`\r\x1b[2K${line.slice(0, Math.max(10, columns - 1))}`)
    this.drawn = true
  }
}
