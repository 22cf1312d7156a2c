// The Unix-socket transport and its fast-path slot (transport.ts), without
// the shim: a Node client on the socket, and a slot in process memory behind
// a stand-in for the addon (same words, same order of stores and loads; one
// process, so plain DataView access is atomic enough). What travels which way
// after FAST: frames through the slot, zero bytes on the socket as doorbells,
// and a frame written to the socket behind the slot's back refused with the
// link closed, so that a client never waits for a reply that cannot come.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { UnixTransport, type Link, type SlotMapper } from './transport.js';
import { MAX_FRAME, RECORD, SLOT } from './wire.js';

const word = (name: string): number => RECORD.slot.fields.find((f) => f.name === name)!.offset;
const SEQ_REQ = word('seq_req');
const SEQ_REP = word('seq_rep');
const SRV_SPIN = word('srv_spin');
const CLI_SLEEP = word('cli_sleep');

/** The addon's six calls over ordinary memory; `slot` is the one map() handed out. */
function fakeMapper(): SlotMapper & { slot: ArrayBuffer | null } {
  const dv = (ab: ArrayBuffer): DataView => new DataView(ab);
  const m = {
    slot: null as ArrayBuffer | null,
    map: (_fd: number, size: number) => (m.slot = new ArrayBuffer(size)),
    unmap: () => {},
    yield: () => {},
    seq: (ab: ArrayBuffer) => dv(ab).getUint32(SEQ_REQ, true),
    spin: (ab: ArrayBuffer, on: boolean) => {
      dv(ab).setUint32(SRV_SPIN, on ? 1 : 0, true);
      return dv(ab).getUint32(SEQ_REQ, true);
    },
    publish: (ab: ArrayBuffer, seq: number) => {
      dv(ab).setUint32(SEQ_REP, seq, true);
      if (seq === 0 || dv(ab).getUint32(CLI_SLEEP, true) !== seq) return false;
      dv(ab).setUint32(CLI_SLEEP, 0, true);
      return true;
    },
  };
  return m;
}

/** A frame: length, type, then `body` (u32 words). */
function frame(type: number, ...body: number[]): Buffer {
  const b = Buffer.alloc(8 + 4 * body.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(type, 4);
  body.forEach((v, i) => b.writeUInt32LE(v, 8 + 4 * i));
  return b;
}

const UPGRADE = 1; // the test's request types: 1 moves the link to the slot, 2 is echoed
const ECHO = 2;

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('Unix transport with the fast-path slot', () => {
  let dir: string;
  let transport: UnixTransport;
  const mapper = fakeMapper();
  const got: number[] = [];
  const malformed: string[] = [];
  let ended = 0;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-transport-'));
    transport = new UnixTransport(path.join(dir, 'sock'), { mapper, spinUs: 0 });
    await transport.listen((link: Link) => ({
      header: (len, type) => (type === UPGRADE || type === ECHO ? null : `type ${type} (len ${len})`),
      frame: (f) => {
        const type = f.readUInt32LE(4);
        got.push(type);
        if (type === UPGRADE) assert.equal(link.upgrade!(-1, frame(UPGRADE, 0)), null);
        else link.send(frame(ECHO, f.readUInt32LE(8) + 1));
      },
      malformed: (why) => malformed.push(why),
      end: () => ended++,
    }));
  });

  after(async () => {
    await transport?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('after FAST: calls go through the slot (the doorbell wakes the server, which rings back a sleeping client); '
    + 'a frame on the socket is refused and the link closed', async () => {
    const s = net.connect(path.join(dir, 'sock'));
    const rx: Buffer[] = [];
    let closed = false;
    s.on('data', (d) => rx.push(d));
    s.on('close', () => (closed = true));
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write(frame(UPGRADE));
    await until(() => Buffer.concat(rx).length >= 12);
    assert.deepEqual(Buffer.concat(rx).subarray(0, 12), frame(UPGRADE, 0), 'FAST\'s own reply comes on the socket');
    rx.length = 0;
    assert.equal(transport.fastLinks, 1);

    // One call through the slot, the client "asleep" (cli_sleep = its number): the server is
    // asleep too (spinUs 0), so the client rings; the reply comes in the slot, and a ring back.
    const ab = mapper.slot!;
    const dv = new DataView(ab);
    const req = frame(ECHO, 41);
    new Uint8Array(ab, SLOT.REQ_OFF, MAX_FRAME).set(req);
    dv.setUint32(CLI_SLEEP, 1, true);
    dv.setUint32(SEQ_REQ, 1, true);
    assert.equal(dv.getUint32(SRV_SPIN, true), 0, 'an idle server asks to be rung');
    s.write(Buffer.from([0]));
    await until(() => dv.getUint32(SEQ_REP, true) === 1);
    assert.deepEqual(Buffer.from(ab, SLOT.REP_OFF, 12), frame(ECHO, 42));
    await until(() => rx.length > 0);
    assert.deepEqual(Buffer.concat(rx), Buffer.from([0]), 'the sleeping client was rung with one zero byte');
    assert.equal(transport.slotFrames, 1);

    // Doorbells alone (several, in one chunk) are no frame; nothing is refused.
    s.write(Buffer.alloc(3));
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(malformed, []);
    assert.equal(closed, false);

    // A frame written to the socket behind the slot's back: refused, the link closed (the
    // client sees EOF instead of waiting for a reply that would never come).
    s.write(frame(ECHO, 7));
    await until(() => closed);
    assert.equal(malformed.length, 1);
    assert.match(malformed[0]!, /on the socket after FAST/);
    assert.deepEqual(got, [UPGRADE, ECHO], 'the stray frame was never handled');
    await until(() => ended === 1 && transport.fastLinks === 0);
  });

  for (const len of [3, MAX_FRAME + 1, 0xffffffff]) {
    test(`a frame in the slot whose length is ${len} is refused and the link closed, nothing handled`, async () => {
      malformed.length = 0;
      got.length = 0;
      const before = ended;
      const s = net.connect(path.join(dir, 'sock'));
      let closed = false;
      s.on('data', () => {});
      s.on('close', () => (closed = true));
      await new Promise<void>((r) => s.once('connect', () => r()));
      s.write(frame(UPGRADE));
      await until(() => transport.fastLinks === 1);
      const ab = mapper.slot!;
      const dv = new DataView(ab);
      const forged = frame(ECHO, 1);
      forged.writeUInt32LE(len, 0);
      new Uint8Array(ab, SLOT.REQ_OFF, MAX_FRAME).set(forged);
      dv.setUint32(SEQ_REQ, 1, true);
      s.write(Buffer.from([0]));
      await until(() => closed);
      assert.deepEqual(malformed, [`malformed frame: length ${len}`]);
      assert.deepEqual(got, [UPGRADE], 'the forged frame was never handled');
      await until(() => ended === before + 1 && transport.fastLinks === 0);
    });
  }

  test('a frame right behind FAST in the same write is refused too (only doorbells may follow it)', async () => {
    malformed.length = 0;
    const s = net.connect(path.join(dir, 'sock'));
    let closed = false;
    s.on('data', () => {});
    s.on('close', () => (closed = true));
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write(Buffer.concat([frame(UPGRADE), frame(ECHO, 256)]));
    await until(() => closed);
    assert.match(malformed.join('\n'), /on the socket after FAST/);
    await until(() => transport.fastLinks === 0);
  });
});
