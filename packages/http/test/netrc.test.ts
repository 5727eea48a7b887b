import { NarBackendError, parseNarHash } from '@narrace/core'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { credentialsFor, httpBackend, InvalidNetrcError, parseNetrc, parseUpstreamHeader, readNetrc, upstreamsWith } from '../src/index.js'

describe('netrc', () => {
  it('reads machine, login and password on one line or many, as curl does for Nix', () => {
    const netrc = parseNetrc(
      [
        '# private caches',
        'machine cache.example.org login nix password s3cret',
        'machine Other.Example',
        '  login   alice',
        '\tpassword "two words \\"quoted\\""',
        'default login anonymous password guest',
      ].join('\n'),
    )
    expect(credentialsFor('https://cache.example.org/prefix/', netrc)).toEqual({ login: 'nix', password: 's3cret' })
    expect(credentialsFor('https://other.example:8443/', netrc)).toEqual({ login: 'alice', password: 'two words "quoted"' })
    expect(credentialsFor('https://elsewhere.example/', netrc)).toEqual({ login: 'anonymous', password: 'guest' })
    expect(credentialsFor('https://elsewhere.example/', parseNetrc('machine a login b password c'))).toBeUndefined()
    expect(credentialsFor('https://elsewhere.example/', undefined)).toBeUndefined()
  })

  it('takes the first entry for a machine, skips macdef bodies and unknown words, and matches IPv6 hosts', () => {
    const netrc = parseNetrc(
      [
        'macdef init',
        'machine evil.example login macro password body',
        '',
        'machine [::1] login six password v6',
        'machine ::1 login six password v6',
        'machine first.example login one password 1 account acct',
        'machine first.example login two password 2',
        'port 443',
      ].join('\n'),
    )
    expect(credentialsFor('https://first.example/', netrc)).toEqual({ login: 'one', password: '1' })
    expect(credentialsFor('https://evil.example/', netrc)).toBeUndefined()
    expect(credentialsFor('http://[::1]:8080/', netrc)).toEqual({ login: 'six', password: 'v6' })
  })

  it('refuses a keyword without its value or an unterminated quote with InvalidNetrcError', () => {
    for (const text of ['machine', 'machine a login', 'machine a password "open']) {
      const error = (() => {
        try {
          parseNetrc(text)
        } catch (e) {
          return e
        }
      })()
      expect(error).toBeInstanceOf(InvalidNetrcError)
      expect(error).toMatchObject({ name: 'InvalidNetrcError', code: 'NARRACE_INVALID_NETRC' })
    }
  })

  it('reads a netrc file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'narrace-netrc-'))
    try {
      await writeFile(join(dir, 'netrc'), 'machine 127.0.0.1 login nix password pw\n')
      expect(credentialsFor('http://127.0.0.1:1234/', await readNetrc(join(dir, 'netrc')))).toEqual({ login: 'nix', password: 'pw' })
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('credentials in the cache URL', () => {
  it('sends the user info of the cache URL as Basic authorization, and never names it', async () => {
    const seen: (string | undefined)[] = []
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization)
      res.writeHead(404, { 'content-length': 0 })
      res.end()
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const { port } = server.address() as AddressInfo
    const http = httpBackend({ url: `http://nix:p%40ss@127.0.0.1:${port}/` })
    try {
      expect(http.name).toBe(`http://127.0.0.1:${port}/`)
      expect(http.url).toBe(`http://127.0.0.1:${port}/`)
      const error = await http.fetch(parseNarHash(`sha256:${'0'.repeat(64)}`), { signal: new AbortController().signal }).catch((e: unknown) => e)
      expect((error as Error).message).not.toContain('p@ss')
      expect(seen).toEqual([`Basic ${Buffer.from('nix:p@ss').toString('base64')}`])
      expect(() => httpBackend({ url: `http://nix:%zz@127.0.0.1:${port}/` })).toThrow(NarBackendError)
    } finally {
      await http.close()
      server.close()
    }
  })
})

describe('per-upstream headers', () => {
  it('parses URL=Name: value, with = in the value', () => {
    expect(parseUpstreamHeader('https://cache.example.org/p=Authorization: Bearer a=b')).toEqual({
      url: 'https://cache.example.org/p',
      name: 'Authorization',
      value: 'Bearer a=b',
    })
    for (const bad of ['https://x', 'https://x=: v', 'https://x=Bad Name: v', 'not a url=X: y']) {
      expect(() => parseUpstreamHeader(bad)).toThrow()
    }
  })

  it('gives each upstream its own headers and the netrc, and refuses a header for no upstream', () => {
    const netrc = parseNetrc('machine a.example login l password p')
    const headers = [parseUpstreamHeader('https://a.example=X-Token: 1'), parseUpstreamHeader('https://b.example/cache=Authorization: Bearer 2')]
    expect(upstreamsWith(['https://a.example/', 'https://b.example/cache/', 'https://c.example'], { netrc, headers })).toEqual([
      { url: 'https://a.example/', headers: { 'X-Token': '1' }, netrc },
      { url: 'https://b.example/cache/', headers: { Authorization: 'Bearer 2' }, netrc },
      { url: 'https://c.example', netrc },
    ])
    expect(() => upstreamsWith(['https://a.example/'], { headers: [parseUpstreamHeader('https://z.example=X: 1')] })).toThrow(/not an upstream/)
  })
})
