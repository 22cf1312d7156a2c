// Bundle the command line (dist/cli/main.js, as tsc wrote it, and every
// module of ours it imports) into that one file with esbuild: Node's ES
// module loader then resolves, reads and links one file instead of ~130,
// most of `iommufd-emu run -- /bin/true`'s start-up (bench/RESULTS.md).
// The packages it uses (commander, sorted-btree) go in too: loading a CommonJS
// package from an ES module costs a lexer pass over it; inside the bundle it is
// a plain function (its require() of Node's own modules through createRequire).
// Every other module under dist/ stays as tsc wrote it, for the tests and the library.
import { build } from 'esbuild';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const cli = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cli');
const r = await build({
  entryPoints: [join(cli, 'main.js')],
  outfile: join(cli, 'main.js'),
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // whitespace and syntax only: emulator-bug stacks keep our function names
  minifyWhitespace: true,
  minifySyntax: true,
  banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  sourcemap: 'linked',
  write: false,
  logLevel: 'warning',
});
for (const f of r.outputFiles) writeFileSync(f.path, f.contents);
