import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { Worker } from 'node:worker_threads'
import { request, type Dispatcher } from 'undici'

/** Reads a whole body with undici and returns its length, hashing it as asked. */
export async function undiciRead(
  url: string,
  options: { dispatcher: Dispatcher; hash: 'none' | 'inline' | HashWorker; signal?: AbortSignal },
): Promise<number> {
  const response = await request(url, { dispatcher: options.dispatcher, signal: options.signal })
  if (response.statusCode !== 200) throw new Error(`${url}: HTTP ${response.statusCode}`)
  let bytes = 0
  const { hash } = options
  if (hash === 'none') {
    for await (const chunk of response.body) bytes += (chunk as Buffer).length
  } else if (hash === 'inline') {
    const h = createHash('sha256')
    for await (const chunk of response.body) {
      h.update(chunk as Buffer)
      bytes += (chunk as Buffer).length
    }
    h.digest()
  } else {
    for await (const chunk of response.body) {
      hash.update(chunk as Buffer)
      bytes += (chunk as Buffer).length
    }
    await hash.digest()
  }
  return bytes
}

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { createHash } = require('node:crypto')
let hash = createHash('sha256')
parentPort.on('message', (message) => {
  if (message === 'digest') {
    parentPort.postMessage(hash.digest('hex'))
    hash = createHash('sha256')
  } else hash.update(new Uint8Array(message))
})
`

/**
 * SHA-256 on a worker thread. Chunks are copied into 1 MiB batches whose buffers are transferred, not
 * cloned: socket chunks are views into pooled memory that cannot be handed over as they are.
 */
export class HashWorker {
  private readonly worker = new Worker(WORKER_SOURCE, { eval: true })
  private batch = new Uint8Array(BATCH)
  private filled = 0

  update(chunk: Uint8Array): void {
    let at = 0
    while (at < chunk.length) {
      const n = Math.min(chunk.length - at, BATCH - this.filled)
      this.batch.set(chunk.subarray(at, at + n), this.filled)
      this.filled += n
      at += n
      if (this.filled === BATCH) this.send()
    }
  }

  private send(): void {
    const whole = this.batch.buffer as ArrayBuffer
    const buffer = this.filled === BATCH ? whole : whole.slice(0, this.filled)
    this.worker.postMessage(buffer, [buffer])
    this.batch = new Uint8Array(BATCH)
    this.filled = 0
  }

  async digest(): Promise<string> {
    if (this.filled > 0) this.send()
    const reply = once(this.worker, 'message')
    this.worker.postMessage('digest')
    const [hex] = (await reply) as [string]
    return hex
  }

  async close(): Promise<void> {
    await this.worker.terminate()
  }
}

const BATCH = 1024 * 1024

/** `curl -o /dev/null`; returns curl's own transfer time in ms, without its process start-up. */
export function curlRead(url: string, signal?: AbortSignal): Promise<{ ms: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    execFile(
      'curl',
      ['-sS', '--fail', '-o', '/dev/null', '-w', '%{time_total} %{size_download}', url],
      { signal },
      (error, stdout) => {
        if (error) {
          reject(error)
          return
        }
        const [seconds, bytes] = stdout.trim().split(' ').map(Number)
        resolve({ ms: seconds! * 1000, bytes: bytes! })
      },
    )
  })
}
