// The inspector's HTTP server: loopback only, one page (built into
// dist/inspect/page by scripts/build-page.mjs, served from the package, no
// CDN) and the message stream as server-sent events (history first, then
// live messages).
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MessageSource } from './session.js';

/** Where the built page lives (next to this module in dist/). */
// From dist/inspect/ or from the CLI bundle in dist/cli/: both one level under dist/.
export const PAGE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'inspect', 'page');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json',
  '.png': 'image/png',
};

export interface InspectorServer {
  readonly url: string;
  readonly port: number;
  /** Resolves when the first page has connected to the stream. */
  readonly connected: Promise<void>;
  close(): Promise<void>;
}

/**
 * Serve the page and `source`'s stream on 127.0.0.1:`port` (0 = any free
 * port). Requests naming another host are refused (a page elsewhere cannot
 * reach the stream through DNS rebinding).
 */
export async function serveInspector(source: MessageSource, port = 0): Promise<InspectorServer> {
  if (!fs.existsSync(path.join(PAGE_DIR, 'index.html'))) {
    throw new Error(`inspector page not built (${PAGE_DIR} is missing): run \`npm run build\``);
  }
  let onConnect!: () => void;
  const connected = new Promise<void>((r) => (onConnect = r));
  const streams = new Set<http.ServerResponse>();
  let actualPort = port;
  const server = http.createServer((req, res) => {
    const host = (req.headers.host ?? '').toLowerCase();
    if (host !== `127.0.0.1:${actualPort}` && host !== `localhost:${actualPort}`) {
      res.writeHead(421, { 'content-type': 'text/plain' }).end(`wrong host ${host}\n`);
      return;
    }
    const url = new URL(req.url ?? '/', `http://${host}`);
    if (req.method !== 'GET') {
      res.writeHead(405).end();
      return;
    }
    if (url.pathname === '/events') return stream(req, res);
    if (url.pathname === '/messages.jsonl') {
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
      res.end(source.messages().join('\n') + '\n');
      return;
    }
    const name = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
    if (!/^[\w.-]+$/.test(name)) {
      res.writeHead(404).end();
      return;
    }
    const file = path.join(PAGE_DIR, name);
    fs.readFile(file, (err, data) => {
      if (err) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        return;
      }
      res.writeHead(200, { 'content-type': TYPES[path.extname(name)] ?? 'application/octet-stream', 'cache-control': 'no-cache' });
      res.end(data);
    });
  });

  function stream(req: http.IncomingMessage, res: http.ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive',
    });
    // Every connection gets the whole history (a page that reconnects starts over).
    const send = (line: string): void => {
      res.write(`data: ${line}\n\n`);
    };
    for (const line of source.messages()) send(line);
    const unsub = source.subscribe(send);
    streams.add(res);
    req.on('close', () => {
      unsub();
      streams.delete(res);
    });
    onConnect();
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  actualPort = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${actualPort}/`,
    port: actualPort,
    connected,
    close: () => new Promise<void>((resolve) => {
      for (const s of streams) s.end();
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
