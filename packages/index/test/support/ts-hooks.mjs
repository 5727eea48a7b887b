// Lets a child `node --experimental-transform-types` run the package sources as the tests do:
// `.js` imports find their `.ts` file, and `@narrace/core` its source.
import { existsSync } from 'node:fs'
import { registerHooks } from 'node:module'
import { fileURLToPath } from 'node:url'

const core = new URL('../../../core/src/index.ts', import.meta.url).href

registerHooks({
  resolve(specifier, context, next) {
    if (specifier === '@narrace/core') return { url: core, shortCircuit: true }
    if (specifier.startsWith('.') && specifier.endsWith('.js') && context.parentURL?.endsWith('.ts')) {
      const ts = new URL(specifier.replace(/\.js$/, '.ts'), context.parentURL)
      if (existsSync(fileURLToPath(ts))) return { url: ts.href, shortCircuit: true }
    }
    return next(specifier, context)
  },
})
