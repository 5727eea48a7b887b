import { httpBackend, type HttpBackend, type HttpBackendOptions } from '../src/index.js'

/** Makes httpBackends for a test file and closes them all at the end. */
export function backendsToClose(): { make(options: HttpBackendOptions): HttpBackend; closeAll(): Promise<void> } {
  const made: HttpBackend[] = []
  return {
    make(options) {
      const backend = httpBackend(options)
      made.push(backend)
      return backend
    },
    async closeAll() {
      await Promise.all(made.splice(0).map((b) => b.close()))
    },
  }
}
