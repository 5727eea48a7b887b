import { describe, expect, it } from 'vitest'
import {
  InvalidNarHashError,
  InvalidNarInfoError,
  NarBackendError,
  NarHashMismatchError,
  NarNotFoundError,
  NarraceError,
  NarSizeMismatchError,
  NarStallError,
  NarUnavailableError,
  isNarMismatch,
} from '../src/index.js'

describe('errors', () => {
  const cause = new Error('root cause')
  const cases: [NarraceError, string, string][] = [
    [new InvalidNarHashError('x', { cause }), 'InvalidNarHashError', 'NARRACE_INVALID_HASH'],
    [new InvalidNarInfoError('x', { cause }), 'InvalidNarInfoError', 'NARRACE_INVALID_NARINFO'],
    [new NarNotFoundError('x', { cause, errors: [cause] }), 'NarNotFoundError', 'NARRACE_NOT_FOUND'],
    [
      new NarHashMismatchError('x', { cause, expected: 'sha256:a', actual: 'sha256:b', sources: ['s'] }),
      'NarHashMismatchError',
      'NARRACE_HASH_MISMATCH',
    ],
    [new NarSizeMismatchError('x', { cause, expected: 2, actual: 1 }), 'NarSizeMismatchError', 'NARRACE_SIZE_MISMATCH'],
    [new NarBackendError('x', { cause, status: 500 }), 'NarBackendError', 'NARRACE_BACKEND'],
    [new NarStallError('x', { cause, backend: 'b', timeoutMs: 1 }), 'NarStallError', 'NARRACE_STALL'],
    [new NarUnavailableError('x', { cause, errors: [cause] }), 'NarUnavailableError', 'NARRACE_UNAVAILABLE'],
  ]

  it.each(cases)('%s has a literal name, code and cause', (error, name, code) => {
    expect(error).toBeInstanceOf(NarraceError)
    expect(error).toBeInstanceOf(Error)
    expect(error.name).toBe(name)
    expect(error.code).toBe(code)
    expect(error.cause).toBe(cause)
    expect(String(error)).toBe(`${name}: x`)
  })

  it('carries the details of each failure', () => {
    expect(new NarNotFoundError('x', { errors: [cause] }).errors).toEqual([cause])
    expect(new NarNotFoundError('x').errors).toEqual([])
    expect(new NarBackendError('x', { status: 503, backend: 'http' })).toMatchObject({ status: 503, backend: 'http' })
    const size = new NarSizeMismatchError('x', { expected: 2, actual: 1, hash: 'sha256:a', sources: ['s'] })
    expect(size).toMatchObject({ expected: 2, actual: 1, hash: 'sha256:a', sources: ['s'] })
    expect(size).toBeInstanceOf(NarHashMismatchError)
  })

  it('lists every source error in a NarUnavailableError', () => {
    expect(new NarUnavailableError('x', { errors: [cause] }).errors).toEqual([cause])
    expect(new NarUnavailableError('x').errors).toEqual([])
    expect(new NarUnavailableError('x')).not.toBeInstanceOf(NarNotFoundError)
    expect(new NarNotFoundError('x')).not.toBeInstanceOf(NarUnavailableError)
  })

  it('classifies size and hash mismatches, and nothing else, with isNarMismatch', () => {
    expect(isNarMismatch(new NarHashMismatchError('x', { expected: 'a', actual: 'b', sources: [] }))).toBe(true)
    expect(isNarMismatch(new NarSizeMismatchError('x', { expected: 2, actual: 1 }))).toBe(true)
    for (const other of [
      new NarNotFoundError('x'),
      new NarUnavailableError('x'),
      new NarBackendError('x'),
      new NarStallError('x', { backend: 'b', timeoutMs: 1 }),
      new Error('x'),
      { code: 'NARRACE_HASH_MISMATCH' },
      undefined,
    ]) {
      expect(isNarMismatch(other)).toBe(false)
    }
  })

  it('recognises the errors of another copy of the package with instanceof', async () => {
    // A query string makes a second, independent instance of the module, as a duplicated package would be.
    const specifier = '../src/errors.js?copy'
    const copy = (await import(/* @vite-ignore */ specifier)) as typeof import('../src/errors.js')
    expect(copy.NarHashMismatchError).not.toBe(NarHashMismatchError)
    const size = new copy.NarSizeMismatchError('x', { expected: 2, actual: 1 })
    expect(size).toBeInstanceOf(NarSizeMismatchError)
    expect(size).toBeInstanceOf(NarHashMismatchError)
    expect(size).toBeInstanceOf(NarraceError)
    expect(size).not.toBeInstanceOf(NarBackendError)
    expect(isNarMismatch(size)).toBe(true)
    expect(new NarUnavailableError('x')).toBeInstanceOf(copy.NarUnavailableError)
    expect(new NarStallError('x', { backend: 'b', timeoutMs: 1 })).not.toBeInstanceOf(copy.NarUnavailableError)
    // A subclass defined elsewhere is matched by its ancestors' brands, but brands nothing itself.
    class Elsewhere extends copy.NarraceError {}
    expect(new Elsewhere('x')).toBeInstanceOf(NarraceError)
    expect(new NarraceError('x')).not.toBeInstanceOf(Elsewhere)
    expect(Object.create(null)).not.toBeInstanceOf(NarraceError)
  })
})
