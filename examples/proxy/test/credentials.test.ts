import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  CredentialsError,
  netrcAuthorization,
  parseNetrc,
  parseUpstreamHeader,
  readNetrc,
  upstreamHeaders,
} from '../src/credentials.js'

const basic = (user: string, pass: string): string => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`

describe('parseNetrc', () => {
  it('reads machine, login, password and default, on one line or many, with quotes, comments and macdef', () => {
    const entries = parseNetrc(
      [
        '# a comment',
        'machine cache.example.org login alice password "s3cret with space"',
        'machine Other.example',
        '  login bob',
        '  password p\\"w',
        '  account ignored',
        'macdef init',
        'cd /somewhere',
        'machine not-a-machine login evil password evil',
        '',
        'default login anon password anon',
      ].join('\n'),
    )
    expect(entries).toEqual([
      { machine: 'cache.example.org', login: 'alice', password: 's3cret with space' },
      { machine: 'other.example', login: 'bob', password: 'p\\"w' },
      { login: 'anon', password: 'anon' },
    ])
  })

  it('refuses a keyword without its value, or before any machine', () => {
    expect(() => parseNetrc('machine a login')).toThrow(CredentialsError)
    expect(() => parseNetrc('login a password b')).toThrow(/before any 'machine'/)
    expect(() => parseNetrc('machine a frobnicate b')).toThrow(/unexpected/)
  })

  it('is read from a file; a missing one is an error naming it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'narrace-netrc-'))
    try {
      await writeFile(join(dir, 'netrc'), 'machine h login u password p\n')
      expect(readNetrc(join(dir, 'netrc'))).toEqual([{ machine: 'h', login: 'u', password: 'p' }])
      expect(() => readNetrc(join(dir, 'missing'))).toThrow(/--netrc-file .*missing/)
    } finally {
      await rm(dir, { recursive: true })
    }
  })
})

describe('credentials per upstream', () => {
  const entries = parseNetrc('machine 127.0.0.1 login u password p\nmachine [::1] login six password v6\n')

  it('gives Basic auth for the upstream host only, port aside, as curl does', () => {
    expect(netrcAuthorization(entries, 'http://127.0.0.1:8080/cache/')).toBe(basic('u', 'p'))
    expect(netrcAuthorization(entries, 'http://[::1]:1/')).toBe(basic('six', 'v6'))
    expect(netrcAuthorization(entries, 'http://localhost:8080/')).toBeUndefined()
    expect(netrcAuthorization([...entries, { login: 'd', password: 'x' }], 'http://localhost/')).toBe(basic('d', 'x'))
  })

  it('puts netrc and --upstream-header together, the header winning', () => {
    const upstreams = ['http://127.0.0.1:1', 'http://127.0.0.1:2', 'http://localhost:3']
    const headers = [
      parseUpstreamHeader('http://127.0.0.1:2=Authorization: Bearer t', upstreams),
      parseUpstreamHeader('http://localhost:3/=X-Token: abc', upstreams),
    ]
    expect(upstreamHeaders(upstreams, { netrc: entries, headers })).toEqual({
      'http://127.0.0.1:1': { authorization: basic('u', 'p') },
      'http://127.0.0.1:2': { authorization: 'Bearer t' },
      'http://localhost:3': { 'x-token': 'abc' },
    })
    expect(upstreamHeaders(upstreams, {})).toEqual({})
  })
})
