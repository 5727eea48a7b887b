// A binary cache folder served over HTTP, as a process of its own: for tests that run the upstream
// inside a network namespace, where the test's own servers can't be reached. Plain JavaScript, so that
// `node` runs it as it is. Prints `{"url":…}` once listening, then one `{"path","status"}` line per request.
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer } from 'node:http'
import { join, normalize } from 'node:path'

const root = process.argv[2]
if (!root) {
  process.stderr.write('usage: static-cache-server.mjs DIR\n')
  process.exit(2)
}

const server = createServer(async (req, res) => {
  const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)
  const file = normalize(join(root, path))
  let status = 404
  try {
    if (file.startsWith(root) && (await stat(file)).isFile()) status = 200
  } catch {
    // Not there: 404.
  }
  process.stdout.write(`${JSON.stringify({ path, status })}\n`)
  if (status !== 200) {
    res.writeHead(status).end()
    return
  }
  res.writeHead(200, { 'content-type': path.endsWith('.narinfo') ? 'text/x-nix-narinfo' : 'application/octet-stream' })
  createReadStream(file).pipe(res)
})
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address()
  process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${port}` })}\n`)
})
process.once('SIGTERM', () => server.close(() => process.exit(0)))
