import { NarHashMismatchError, NarNotFoundError, NarraceError, NarSizeMismatchError } from '@narrace/core'
import { UsageError } from './args.js'
import { describe, fetchCommand, parseFetchArgs } from './fetch.js'
import { indexCommand } from './index-command.js'
import type { CommandIO } from './io.js'
import { parsePinArgs, pinCommand } from './pin.js'
import { parsePrefetchArgs, prefetchCommand } from './prefetch.js'
import { parsePublishArgs, publishCommand } from './publish.js'

/** Exit codes: 0 done, 1 not found / failed verification / any other failure, 2 usage, 130 interrupted. */
export const EXIT_OK = 0
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2
export const EXIT_INTERRUPTED = 130

export const USAGE = `usage: narrace <command> [options]

  fetch <hash|nar-url> -o FILE [--http URL ...] [--ipfs-api URL] [--index PATH] [--torrent [--announce URL ...]]
      Race every source for one .nar.xz, verify its SHA-256, write it to FILE.
      A NAR URL (http://cache/nar/<nix32>.nar.xz) also names its cache as an --http source.

  prefetch <store-path|hash ...|--list FILE> --cache URL ... -o DIR [--trusted-public-key K ...]
           [--ipfs-api URL] [--torrent [--announce URL ...]] [--index PATH] [--publish [--no-seed]] [--jobs N]
      Walk the closure through the caches' narinfo and race every NAR into DIR, a file:// binary cache.
      Re-running skips what DIR already holds, verified.

  publish --cache DIR|URL [store-path ...|--list FILE] --index PATH [--ipfs-api URL]
          [--torrent --announce URL ... [--no-seed]] [--export FILE.ndjson] [--trusted-public-key K ...]
      Add every NAR of a binary cache to IPFS and/or seed it as a torrent, recording the mappings.
      An HTTP cache has no listing: name store paths or --list FILE, and their closures are published.
      With --torrent it keeps seeding until Ctrl-C; --no-seed exits once the mappings are written.

  pin <store-path|hash ...|--list FILE> --store DIR [--unpin] [--cache URL ... [--trusted-public-key K ...]]
      Pin whole closures in a store folder (the proxy's --store): their NARs are never evicted.
      The closure is read from the store's narinfo, or from --cache URLs to pin before the NARs arrive.
      One process owns a store: stop the proxy that uses DIR first.

  index import FILE [--index PATH]      Import NDJSON mappings (- for stdin); prints added/updated/rejected.
  index export [FILE] [--index PATH]    Write every mapping as NDJSON to FILE, or to stdout.
      The default index is $NARRACE_INDEX, else $XDG_DATA_HOME/narrace/index.sqlite.

Exit codes: 0 done, 1 not found or failed verification, 2 usage, 130 interrupted.
`

/** Runs one command line; returns the exit code. Errors are reported on `io.stderr` in one line. */
export async function run(argv: string[], io: CommandIO): Promise<number> {
  const [command, ...args] = argv
  // `narrace fetch --help` shows the usage; a literal '--help' argument would follow `--`.
  const end = args.indexOf('--')
  if (args.slice(0, end === -1 ? undefined : end).some((a) => a === '--help' || a === '-h')) {
    io.stdout.write(USAGE)
    return EXIT_OK
  }
  try {
    switch (command) {
      case 'fetch':
        await fetchCommand(parseFetchArgs(args), io)
        return EXIT_OK
      case 'prefetch': {
        const summary = await prefetchCommand(parsePrefetchArgs(args), io)
        return summary.missing.length > 0 || summary.failed.length > 0 ? EXIT_FAILED : EXIT_OK
      }
      case 'publish': {
        const summary = await publishCommand(parsePublishArgs(args), io)
        return summary.failed.length > 0 ? EXIT_FAILED : EXIT_OK
      }
      case 'pin': {
        const summary = await pinCommand(parsePinArgs(args), io)
        return summary.missing.length > 0 ? EXIT_FAILED : EXIT_OK
      }
      case 'index':
        return await indexCommand(args, io)
      case 'help':
      case '--help':
      case '-h':
        io.stdout.write(USAGE)
        return EXIT_OK
      case undefined:
        io.stderr.write(USAGE)
        return EXIT_USAGE
      default:
        throw new UsageError(`unknown command '${command}'; try narrace --help`)
    }
  } catch (error) {
    if (io.signal?.aborted) {
      io.stderr.write('narrace: interrupted\n')
      return EXIT_INTERRUPTED
    }
    if (error instanceof UsageError) {
      io.stderr.write(`narrace: ${error.message}\n`)
      return EXIT_USAGE
    }
    io.stderr.write(`narrace: ${explain(error)}\n`)
    return EXIT_FAILED
  }
}

function explain(error: unknown): string {
  if (error instanceof NarNotFoundError) return `not found: ${error.message}`
  if (error instanceof NarHashMismatchError || error instanceof NarSizeMismatchError) {
    return `verification failed: ${error.message}`
  }
  if (error instanceof NarraceError) return `${error.code}: ${error.message}`
  return describe(error)
}
