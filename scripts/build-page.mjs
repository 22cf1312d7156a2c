// Bundle the inspector page (src/inspect/page) into dist/inspect/page with
// esbuild: one ES module with Preact and ELK inside, the HTML and the CSS.
// Everything the page needs is served from the package; nothing from a CDN.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src', 'inspect', 'page');
const out = join(root, 'dist', 'inspect', 'page');
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(src, 'app.tsx')],
  outfile: join(out, 'app.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  minify: true,
  sourcemap: true,
  legalComments: 'linked',
  logLevel: 'warning',
});
for (const f of ['index.html', 'app.css']) copyFileSync(join(src, f), join(out, f));
