export { UsageError } from './args.js'
export { fetchCommand, parseFetchArgs, parseFetchTarget, type FetchOptions, type FetchResult } from './fetch.js'
export { defaultIndexPath, exportMappings, importMappings } from './index-command.js'
export type { CommandIO } from './io.js'
export { EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run, USAGE } from './main.js'
export {
  DEFAULT_JOBS,
  formatSummary,
  parsePrefetchArgs,
  prefetchCommand,
  type PathResult,
  type PrefetchOptions,
  type PrefetchSummary,
} from './prefetch.js'
export { parsePinArgs, pinCommand, type PinOptions, type PinSummary } from './pin.js'
export { Progress, type ProgressOutput } from './progress.js'
export {
  parsePublishArgs,
  publishCommand,
  Publisher,
  type NarFile,
  type PublishOptions,
  type PublishResult,
  type PublishSummary,
  type PublishTargets,
} from './publish.js'
export type { SourceOptions } from './sources.js'
