import { describe, expect, it } from 'vitest'
import { MAX_URL_LENGTH, routeRequest } from '../src/routes.js'

const hashPart = 'p85hqxs52v6ycw89jwy7fm2cypjicw1v'
const fileHash = '0y1cxziavkrvh2b75k1c70avdg6pxgk71zppgwkvald4gamrc9bl'

describe('routeRequest', () => {
  it('routes the binary-cache protocol', () => {
    expect(routeRequest('GET', '/nix-cache-info')).toEqual({ kind: 'cache-info' })
    expect(routeRequest('HEAD', `/${hashPart}.narinfo`)).toEqual({ kind: 'narinfo', hashPart })
    expect(routeRequest('GET', `/nar/${fileHash}.nar.xz`)).toEqual({ kind: 'nar', path: `nar/${fileHash}.nar.xz`, name: fileHash, ext: '.xz' })
    expect(routeRequest('GET', `/nar/${fileHash}.nar`)).toMatchObject({ kind: 'nar', name: fileHash, ext: '' })
    for (const extension of ['zst', 'bz2', 'lzip', 'lz4', 'br']) {
      expect(routeRequest('GET', `/nar/${fileHash}.nar.${extension}`)).toMatchObject({ kind: 'nar', path: `nar/${fileHash}.nar.${extension}` })
    }
    expect(routeRequest('GET', `/nar/${hashPart}.nar?hash=${hashPart}`)).toMatchObject({
      kind: 'nar',
      path: `nar/${hashPart}.nar?hash=${hashPart}`,
    })
    expect(routeRequest('GET', '/metrics')).toEqual({ kind: 'metrics' })
    expect(routeRequest('GET', '/healthz')).toEqual({ kind: 'healthz' })
  })

  it.each(['POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'CONNECT', undefined])('refuses %s with 405', (method) => {
    expect(routeRequest(method, '/nix-cache-info')).toMatchObject({ kind: 'reject', status: 405 })
  })

  it.each([
    ['/', 404],
    ['/index.html', 404],
    ['/nix-cache-info?x=1', 404],
    ['/nar', 404],
    [`/${hashPart}.narinfo/x`, 404],
  ])('answers %s with %i', (target, status) => {
    expect(routeRequest('GET', target)).toMatchObject({ kind: 'reject', status })
  })

  it.each([
    '/nar/../x',
    '/nar/../../etc/passwd',
    '/nar/./x.nar.xz',
    '/nar/%2e%2e/x',
    '/%2e%2e/%2e%2e/etc/passwd',
    '/nar/..%2fx',
    '/nar/%252e%252e/x',
    `/nar/${fileHash}.nar%2exz`,
    '/nar\\..\\x',
    '//nix-cache-info',
    'http://example.org/nix-cache-info',
    '*',
    '',
    `/nar/${fileHash}.nar.xz?x=../y`,
    `/nar/${fileHash}.nar.gz`,
    `/nar/${fileHash.toUpperCase()}.nar.xz`,
    `/nar/${fileHash}/.nar.xz`,
    `/${hashPart.slice(1)}.narinfo`,
    `/${hashPart}a.narinfo`,
    `/${'e'.repeat(32)}.narinfo`,
    `/${hashPart.toUpperCase()}.narinfo`,
    `/${hashPart.slice(1)}\u00e9.narinfo`,
    '/a b',
    `/${'x'.repeat(MAX_URL_LENGTH)}`,
    '/log/abc',
    `/log/${hashPart}`,
    `/log/${hashPart}-x/y.drv`,
    `/log/${hashPart}-${'x'.repeat(212)}`,
    `/log/../${hashPart}-x.drv`,
    `/${hashPart.slice(1)}.ls`,
    `/nar/${hashPart}.ls`,
    `/realisations/sha256:${'a'.repeat(64)}.doi`,
    `/realisations/sha256:${'A'.repeat(64)}!out.doi`,
    `/realisations/sha256:${'a'.repeat(64)}!out/x.doi`,
    '/build-trace-v2/',
    '/build-trace-v2/.hidden',
    '/build-trace-v2/a/b/c/d/e',
    '/build-trace-v2/a//b',
    `/build-trace-v2/${'a'.repeat(256)}`,
    '/debuginfo/XYZ',
    '/debuginfo/abc/def',
  ])('refuses %j with 400', (target) => {
    expect(routeRequest('GET', target)).toMatchObject({ kind: 'reject', status: 400 })
  })

  it('routes the files Nix reads besides narinfo and NARs, each in the form Nix gives it', () => {
    const drv = `${hashPart}-hello-2.12.1.drv`
    const doi = `sha256:${'0123456789abcdef'.repeat(4)}!out.doi`
    expect(routeRequest('GET', `/log/${drv}`)).toEqual({ kind: 'passthrough', what: 'log', target: `log/${drv}` })
    expect(routeRequest('GET', `/log/${hashPart}-hello-2.12.1`)).toMatchObject({ kind: 'passthrough', what: 'log' })
    expect(routeRequest('HEAD', `/${hashPart}.ls`)).toEqual({ kind: 'passthrough', what: 'ls', target: `${hashPart}.ls` })
    expect(routeRequest('GET', `/realisations/${doi}`)).toEqual({ kind: 'passthrough', what: 'realisation', target: `realisations/${doi}` })
    expect(routeRequest('GET', '/build-trace-v2/abc/out.json')).toMatchObject({ kind: 'passthrough', what: 'build-trace' })
    expect(routeRequest('GET', '/debuginfo/0123abcd')).toEqual({ kind: 'passthrough', what: 'debuginfo', target: 'debuginfo/0123abcd' })
    expect(routeRequest('POST', `/log/${drv}`)).toMatchObject({ kind: 'reject', status: 405 })
    expect(routeRequest('GET', `/log/${drv}?x=1`)).toMatchObject({ kind: 'reject', status: 404 })
  })
})
