import { request } from 'node:http'
import { connect } from 'node:net'

/** What a plain HTTP/1.1 client saw: the body it got and whether the transfer broke. */
export interface Answer {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
  /** Set when the connection broke before the response was complete. */
  error: Error | undefined
}

/**
 * One request over a fresh connection (no agent, so no keep-alive socket outlives the test). A
 * response cut short resolves with `error` set rather than rejecting, so tests can look at both.
 */
export function get(
  url: string,
  options: { method?: string; headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? 'GET', headers: options.headers, agent: false, signal: options.signal })
    req.once('error', reject)
    req.once('response', (res) => {
      const chunks: Buffer[] = []
      let error: Error | undefined
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.once('error', (e) => (error = e))
      res.once('aborted', () => (error ??= new Error('aborted')))
      res.once('close', () => {
        if (!res.complete) error ??= new Error('incomplete response')
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), error })
      })
    })
    req.end()
  })
}

/** Sends raw bytes and returns the status line of the answer, for requests no HTTP client would send. */
export function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let answer = ''
    socket.setEncoding('latin1')
    socket.on('data', (data: string) => (answer += data))
    // A server that refuses a request mid-upload may reset the connection; what arrived before still counts.
    socket.once('error', (error) => (answer === '' ? reject(error) : undefined))
    socket.once('close', () => resolve(answer.split('\r\n', 1)[0] ?? ''))
    socket.end(text)
  })
}
