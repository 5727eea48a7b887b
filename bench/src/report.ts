import { View, parse } from 'vega'
import { compile, type TopLevelSpec } from 'vega-lite'
import { describeFloor, type Floor } from './check.js'
import type { Row, ScenarioResult } from './results.js'

/** What `bench:report` writes. */
export interface Report {
  markdown: string
  /** File name (under bench/charts/) → SVG text. */
  charts: Record<string, string>
}

/** Renders a Vega-Lite spec to SVG in Node, with no canvas or browser. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new View(parse(compile(spec).spec), { renderer: 'none' })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}

function cell(value: unknown): string {
  if (value === null || value === undefined) return '–'
  return String(value).replaceAll('|', '\\|')
}

/** A Markdown table from rows whose keys are the columns, in first-seen order. */
export function table(rows: Row[]): string {
  if (rows.length === 0) return '_no rows_\n'
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))]
  const head = `| ${columns.join(' | ')} |`
  const rule = `| ${columns.map(() => '---').join(' | ')} |`
  const body = rows.map((row) => `| ${columns.map((c) => cell(row[c])).join(' | ')} |`)
  return [head, rule, ...body].join('\n') + '\n'
}

/** Rows of any scenario that report a first-byte time by backend, profile and size. */
function ttfbRows(results: ScenarioResult[]): { backend: string; profile: string; size: string; ttfb: number }[] {
  return results.flatMap((r) =>
    r.tables.flatMap((t) =>
      t.rows
        .filter((row) => typeof row['TTFB ms p50'] === 'number' && row.backend && row.profile && row.size)
        .map((row) => ({
          // 'ipfs (raw CID)' and 'ipfs (index)' are one backend in the chart; the table keeps them apart.
          backend: String(row.backend).replace(/ \(.*\)$/, ''),
          profile: String(row.profile),
          size: String(row.size),
          ttfb: row['TTFB ms p50'] as number,
        })),
    ),
  )
}

async function ttfbChart(results: ScenarioResult[]): Promise<string | undefined> {
  const rows = ttfbRows(results.filter((r) => r.scenario === 'backends'))
  if (rows.length === 0) return undefined
  return renderSvg({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'Time to first byte, p50 (log scale)',
    data: { values: rows },
    facet: { column: { field: 'size', type: 'nominal', title: null, sort: null } },
    spec: {
      width: 230,
      height: 220,
      mark: { type: 'bar', tooltip: true },
      encoding: {
        x: { field: 'backend', type: 'nominal', title: null, axis: { labelAngle: 0 } },
        xOffset: { field: 'profile', type: 'nominal', sort: ['lan', 'fast-cdn', 'far-cache', 'loopback'] },
        y: { field: 'ttfb', type: 'quantitative', scale: { type: 'log', domainMin: 1 }, title: 'ms' },
        // A log scale has no zero: bars start at 1 ms.
        y2: { datum: 1 },
        color: { field: 'profile', type: 'nominal', sort: ['lan', 'fast-cdn', 'far-cache', 'loopback'] },
      },
    },
    config: { background: 'white' },
  })
}

async function raceChart(results: ScenarioResult[]): Promise<string | undefined> {
  const race = results.find((r) => r.scenario === 'race')
  const rows = race?.tables[0]?.rows.filter((row) => typeof row['ms p50'] === 'number') ?? []
  if (rows.length === 0) return undefined
  return renderSvg({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'Whole download, p50 (log scale): race against sequential',
    data: { values: rows.map((row) => ({ first: row['first listed'], strategy: row.strategy, ms: row['ms p50'] })) },
    facet: { row: { field: 'first', type: 'nominal', title: 'first listed cache' } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 420,
      height: 110,
      mark: { type: 'bar', tooltip: true },
      encoding: {
        y: { field: 'strategy', type: 'nominal', title: null, sort: null },
        x: { field: 'ms', type: 'quantitative', scale: { type: 'log', domainMin: 10 }, title: 'ms' },
        x2: { datum: 10 },
        color: { field: 'strategy', type: 'nominal', legend: null },
      },
    },
    config: { background: 'white' },
  })
}

async function throughputChart(results: ScenarioResult[]): Promise<string | undefined> {
  const http = results.find((r) => r.scenario === 'http')
  const rows = http?.tables[0]?.rows.filter((row) => typeof row['MiB/s median'] === 'number') ?? []
  if (rows.length === 0) return undefined
  return renderSvg({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: `${http!.tables[0]!.caption}: MiB/s, median`,
    data: { values: rows.map((row) => ({ variant: row.variant, rate: row['MiB/s median'] })) },
    width: 420,
    height: 150,
    mark: { type: 'bar', tooltip: true },
    encoding: {
      y: { field: 'variant', type: 'nominal', title: null, sort: '-x' },
      x: { field: 'rate', type: 'quantitative', title: 'MiB/s' },
    },
    config: { background: 'white' },
  })
}

/** The order sections appear in; unknown scenarios follow. */
const ORDER = ['race', 'backends', 'failover', 'stripe', 'overhead', 'core-overhead', 'http', 'concurrency', 'ipfs', 'dht', 'torrent', 'nix', 'store', 'proxy-load']

/** Builds bench/README.md and its charts from the results files. */
export async function buildReport(results: ScenarioResult[], floors: Record<string, Floor>): Promise<Report> {
  const sorted = [...results].sort((a, b) => rank(a.scenario) - rank(b.scenario))
  const charts: Record<string, string> = {}
  const ttfb = await ttfbChart(sorted)
  if (ttfb) charts['ttfb.svg'] = ttfb
  const race = await raceChart(sorted)
  if (race) charts['race.svg'] = race
  const throughput = await throughputChart(sorted)
  if (throughput) charts['http-throughput.svg'] = throughput
  const chartFor: Record<string, string[]> = {
    race: race ? ['race.svg'] : [],
    backends: ttfb ? ['ttfb.svg'] : [],
    http: throughput ? ['http-throughput.svg'] : [],
  }

  const out: string[] = []
  out.push('# narrace benchmarks\n')
  out.push(
    'Generated by `pnpm bench:report` from `bench/results/*.json`; do not edit by hand. Every number below was',
    'measured side by side with its baseline in one run on one machine, on 127.0.0.1, through the network',
    'shaper in `src/shaper.ts` where a scenario names a profile. Ratios matter; absolute times depend on the',
    'machine. The files streamed',
    '(100 KiB to 1 GiB) are generated at run time from AES-CTR keystreams and never written to the repository.\n',
  )
  out.push(
    '```sh',
    'pnpm bench                 # builds the packages it loads, then runs every scenario (under 10 minutes on 2 cores)',
    'pnpm bench race            # one scenario: ' + ORDER.join(', '),
    'pnpm bench:report          # rewrite this file and charts/*.svg',
    'pnpm bench:check [dir]     # exit 1 when a ratio in results/ (or dir) is past its floor in floors.json',
    '```\n',
    'The `nix` scenario needs `nix` on PATH (Debian: `apt-get install nix-bin`) and uses the Nix-made fixture',
    'cache in `test/fixtures/`. CI does not run the bench; `bench/test/` holds quick, untimed tests of the',
    'shaper and of this report.\n',
  )
  out.push(
    '## Network profiles\n',
    table([
      { profile: 'lan', RTT: '1 ms', bandwidth: '125 MB/s' },
      { profile: 'fast-cdn', RTT: '20 ms', bandwidth: '50 MiB/s' },
      { profile: 'far-cache', RTT: '250 ms', bandwidth: '2 MiB/s' },
      { profile: 'dead', RTT: '∞', bandwidth: 'a TCP connect that never completes' },
    ]),
    'The shaper is a TCP relay: each accepted connection waits one RTT (the handshake) before it is joined to',
    'the server, each direction is delayed by half the RTT, and the server-to-client direction is paced at the',
    'profile rate, shared by all connections through one relay. Faults: a stall after N bytes (the connection',
    'stays open and silent), a cut after N bytes, a reset on accept.\n',
    'A dead host is not modelled by a refused port, nor by a relay that accepts and stays silent: on loopback',
    'both answer the TCP handshake at once, so a client would time out on headers, not on connect. The',
    '`dead` profile is a listener in a child process that is stopped with SIGSTOP after its accept queue',
    '(backlog 1) has been filled; Linux then drops every new SYN, and a client stays in SYN_SENT until its own',
    'connect timeout, just as with a host that is down. The sequential baseline gives it 15 s, the value the',
    "issue names; Nix 2.x's own `connect-timeout = 0` means curl's default of 300 s, so the baseline is favoured.\n",
  )

  out.push('## Headline ratios\n')
  const headline: Row[] = sorted.flatMap((r) =>
    r.ratios.map((ratio) => ({
      ratio: ratio.label,
      value: ratio.value,
      floor: floors[ratio.id] ? describeFloor(floors[ratio.id]!) : '',
      id: `\`${ratio.id}\``,
    })),
  )
  out.push(table(headline))

  for (const r of sorted) {
    out.push(`## ${r.title}\n`)
    out.push(
      `\`pnpm bench ${r.scenario}\` · ${r.date.slice(0, 16).replace('T', ' ')} UTC · ${r.machine.cpu}, ${r.machine.cores} cores, ${r.machine.memoryGiB} GiB · Node ${r.machine.node}${r.commit ? ` · ${r.commit}` : ''} · ${Math.round(r.durationMs / 1000)} s\n`,
    )
    if (r.assumptions.length) out.push(r.assumptions.map((a) => `- ${a}`).join('\n') + '\n')
    if (r.ratios.length) out.push(table(r.ratios.map((ratio) => ({ ratio: ratio.label, value: ratio.value }))))
    for (const t of r.tables) out.push(`**${t.caption}**\n`, table(t.rows))
    for (const chart of chartFor[r.scenario] ?? []) out.push(`![${chart}](charts/${chart})\n`)
    if (r.notMeasured.length) out.push(r.notMeasured.map((n) => `- Not measured: ${n}`).join('\n') + '\n')
  }
  return { markdown: out.join('\n'), charts }
}

function rank(scenario: string): number {
  const i = ORDER.indexOf(scenario)
  return i === -1 ? ORDER.length : i
}
