// Whatever bytes a peer sends, the server closes (at most) that connection and
// keeps serving everybody else.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fc from 'fast-check';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import * as W from './wire.js';
import { IommufdServer } from './server.js';

let server: IommufdServer;
let dir: string;
const logs: string[] = [];

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-fuzz-'));
  server = new IommufdServer({ socketPath: path.join(dir, 'sock'), emulator: new Emulator(), log: (m) => logs.push(m) });
  await server.listen();
});

after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function connect(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(server.socketPath, () => resolve(s));
    s.on('error', reject);
  });
}

/** Send `chunks`, then half-close; resolve when the server closed or after a short wait. */
async function blast(chunks: Uint8Array[]): Promise<void> {
  const s = await connect();
  s.on('error', () => {});
  s.on('data', () => {});
  const closed = new Promise<void>((r) => s.on('close', () => r()));
  for (const c of chunks) s.write(c);
  s.end();
  await Promise.race([closed, new Promise((r) => setTimeout(r, 50))]);
  s.destroy();
}

/** A well-formed exchange still works: HELLO gets a nonce back. */
async function serverAlive(): Promise<boolean> {
  const s = await connect();
  const reply = new Promise<Buffer>((resolve) => s.once('data', (d: Buffer) => resolve(d)));
  s.write(W.encode(W.REQ.HELLO, { pid: process.pid, version: W.WIRE_VERSION }));
  const r = await reply;
  s.destroy();
  if (r.length !== W.REP.hello.size) return false;
  const h = W.decode(W.REP.hello, r);
  return h.len === W.REP.hello.size && h.type === W.REQ.HELLO.type && h.status === 0;
}

/** Frames with a plausible header (known type, right or wrong length) and random bodies. */
const frame = fc.tuple(
  fc.constantFrom(...W.REQ_BY_TYPE.keys(), 0, 99),
  fc.boolean(),
  fc.uint8Array({ maxLength: 64 }),
).map(([type, rightLen, body]) => {
  const len = rightLen ? (W.REQ_BY_TYPE.get(type)?.size ?? 8 + body.length) : 8 + body.length;
  const b = Buffer.alloc(Math.max(8, len));
  b.writeUInt32LE(len, 0);
  b.writeUInt32LE(type, 4);
  Buffer.from(body).copy(b, 8, 0, Math.max(0, b.length - 8));
  return new Uint8Array(b);
});

test('random bytes and random frames never take the server down', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 80 }), frame), { minLength: 1, maxLength: 6 }),
      async (chunks) => {
        await blast(chunks);
        assert.ok(await serverAlive());
      },
    ),
    { numRuns: 150 },
  );
  // nothing was created by garbage
  assert.equal(server.liveContexts, 0);
});
