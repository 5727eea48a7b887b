import type { ServerResponse } from 'node:http'

export const NARINFO_TYPE = 'text/x-nix-narinfo'
export const NAR_TYPE = 'application/x-nix-nar'

/** A string `code` an error carries (NarraceError's, or Node's), else undefined. */
export function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | undefined)?.code
  return typeof code === 'string' ? code : undefined
}

export function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

/** A small whole answer, with its length; HEAD gets the headers alone. */
export function sendText(res: ServerResponse, head: boolean, status: number, body: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) })
  res.end(head ? undefined : body)
}

/** A signal that fires when the client goes away before the response is done, or the proxy closes. */
export type RequestSignal = (res: ServerResponse) => { signal: AbortSignal; done: () => void }
