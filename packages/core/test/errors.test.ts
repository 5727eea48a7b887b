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
})
