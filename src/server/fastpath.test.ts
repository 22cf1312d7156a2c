// The fast path (transport.ts, the shim's slot): C clients through the shim,
// and its failure modes: a client killed while it spins on its slot, a server
// killed while a client spins, fork while another thread is in a call, and
// the server going back to sleep once its clients are quiet.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { buildTestClient, ensureShim, findCompiler, loadServerAddon, PACKAGE_ROOT, procMemAccessible } from './native.js';
import { shimEnv } from './run.js';
import { IommufdServer, loadHandlers } from './server.js';
import { RECORD, SLOT } from './wire.js';

const cc = findCompiler();
const mapper = cc ? loadServerAddon() : 'no C compiler';
const skip = !cc ? 'no C compiler (cc) on this machine: the shim and the test client cannot be built'
  : !procMemAccessible() ? 'cannot open a child\'s /proc/<pid>/mem here (ptrace restricted): the server cannot reach clients'
    : typeof mapper === 'string' ? `the fast path's addon cannot be built here: ${mapper}` : false;

let server: IommufdServer;
let dir: string;
let shim: string;
let client: string;
const logs: string[] = [];

function env(extra: NodeJS.ProcessEnv = {}, socket = server.socketPath): NodeJS.ProcessEnv {
  return shimEnv(shim, socket, path.join(dir, 'debugfs'), { ...process.env, ...extra });
}

/** Run the test client in `mode` (its arguments after a space) to its exit. */
function runClient(mode: string, extra: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(client, mode.split(' '), { env: env(extra) });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('exit', (code) => resolve({ code, out }));
  });
}

/** A client that prints one line when it is under way; `done` resolves with its exit and output. */
function startClient(mode: string, extra: NodeJS.ProcessEnv = {}, socket?: string):
  Promise<{ p: ChildProcess; done: Promise<{ code: number | null; out: string }> }> {
  return new Promise((resolve, reject) => {
    const p = spawn(client, [mode], { env: env(extra, socket) });
    let out = '';
    let ready = false;
    const done = new Promise<{ code: number | null; out: string }>((r) => p.on('exit', (code) => r({ code, out })));
    p.stdout!.on('data', (d) => {
      out += d;
      if (!ready && out.includes('\n')) {
        ready = true;
        resolve({ p, done });
      }
    });
    p.on('exit', (code) => !ready && reject(new Error(`client exited ${code}: ${out}`)));
  });
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('fast path (shared-memory slot)', { skip }, () => {
  before(async () => {
    assert.ok(await loadHandlers());
    shim = ensureShim();
    client = buildTestClient();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-fast-'));
    server = new IommufdServer({
      socketPath: path.join(dir, 'sock'),
      emulator: new Emulator({ profile: 'mainline' }),
      log: (m) => logs.push(m),
      fastPath: true,
    });
    await server.listen();
  });

  after(async () => {
    await server?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('calls of a client go through its slot; with IOMMUFD_EMU_FASTPATH=0 they keep to the socket', async () => {
    const a = await startClient('spin');
    await until(() => server.fastPath.links === 1);
    a.p.kill('SIGKILL');
    await a.done;
    await until(() => server.fastPath.links === 0 && server.procs.size === 0);
    const b = await startClient('spin', { IOMMUFD_EMU_FASTPATH: '0' });
    await until(() => server.procs.size === 1);
    const before = server.calls;
    await until(() => server.calls > before + 100);
    assert.equal(server.fastPath.links, 0);
    b.p.kill('SIGKILL');
    await b.done;
    await until(() => server.procs.size === 0);
  });

  test('a client killed while its threads spin on the slot is torn down (slot unmapped); the server keeps serving', async () => {
    // a long client window: a thread is spinning on the slot at any moment
    const { p, done } = await startClient('spin', { IOMMUFD_EMU_SPIN_US: '100000', IOMMUFD_EMU_SPIN_ADAPT: '0' });
    await until(() => server.fastPath.links === 1);
    const before = server.calls;
    await until(() => server.calls > before + 200);
    p.kill('SIGKILL');
    await done;
    await until(() => server.liveContexts === 0 && server.procs.size === 0 && server.fastPath.links === 0);
    const r = await runClient('basic');
    assert.equal(r.code, 0, r.out);
    assert.deepEqual(logs.filter((l) => /emulator bug/.test(l)), []);
  });

  test('fork while another thread is in calls: children (fork and a raw fork) get their own connection and slot', async () => {
    const r = await runClient('forkcall');
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /OK forkcall thread-calls=\d+/);
    await until(() => server.liveContexts === 0 && server.procs.size === 0 && server.fastPath.links === 0);
  });

  test('the server stops polling once its clients are quiet, and a doorbell wakes it', async () => {
    const { p, done } = await startClient('hold'); // one call, then pause()
    await until(() => server.fastPath.links === 1);
    await until(() => !server.fastPath.spinning);
    p.kill('SIGKILL');
    await done;
    const r = await runClient('basic');
    assert.equal(r.code, 0, r.out);
    await until(() => !server.fastPath.spinning && server.fastPath.links === 0);
  });

  test('publishing a reply takes the sleep flag of that call only, not the one of the next call the client already sleeps in', () => {
    // The addon's words on a plain buffer. The interleaving: the client saw reply 7 (seq_rep is stored
    // first) and went to sleep in call 8 before the server took call 7's flag. Taking any flag then
    // left call 8 without a ring: its client waited in recv for ever.
    const word = (name: string): number => RECORD.slot.fields.find((f) => f.name === name)!.offset;
    const m = mapper as Exclude<typeof mapper, string>;
    const ab = new ArrayBuffer(SLOT.SIZE);
    const dv = new DataView(ab);
    dv.setUint32(word('cli_sleep'), 8, true);
    assert.equal(m.publish(ab, 7), false, 'no ring for reply 7: nobody sleeps waiting for it');
    assert.equal(dv.getUint32(word('seq_rep'), true), 7);
    assert.equal(dv.getUint32(word('cli_sleep'), true), 8, 'call 8 still asks to be rung');
    assert.equal(m.publish(ab, 8), true, 'reply 8 rings its sleeping client');
    assert.equal(dv.getUint32(word('cli_sleep'), true), 0);
    assert.equal(m.publish(ab, 9), false);
  });

  test('a client stops spinning while replies are slower than its spin window (and spins the whole window with IOMMUFD_EMU_SPIN_ADAPT=0)', async (t) => {
    // Every call made 3 ms slow (a trace subscriber runs inside the handler), the spin cap 2 ms:
    // an adaptive client sleeps after a few calls, a fixed one spins 2 ms on every call.
    const slow = server.emu.bus.subscribe((e) => {
      if (e.t !== 'ioctl') return;
      const end = performance.now() + 3;
      while (performance.now() < end) { /* busy: the reply is late */ }
    });
    try {
      const cpu = async (extra: NodeJS.ProcessEnv): Promise<number> => {
        const r = await runClient('calls 40', { IOMMUFD_EMU_SPIN_US: '2000', ...extra });
        assert.equal(r.code, 0, r.out);
        return Number(/CPU_US (\d+)/.exec(r.out)![1]) / 1000;
      };
      const fixed = await cpu({ IOMMUFD_EMU_SPIN_ADAPT: '0' });
      const adaptive = await cpu({});
      t.diagnostic(`client CPU over 40 calls of 3 ms: ${adaptive.toFixed(1)} ms adaptive, ${fixed.toFixed(1)} ms fixed`);
      assert.ok(fixed > 2 * adaptive, `client CPU over 40 slow calls: ${adaptive.toFixed(1)} ms adaptive, ${fixed.toFixed(1)} ms fixed`);
    } finally {
      slow();
    }
  });

  test('a server killed while a client spins on its reply: the call fails with EIO, the client does not hang', async () => {
    // The server in a process of its own, stopped while a call is under way (the client spins, with a
    // window longer than the test), then killed: the client sees the socket's end while spinning.
    const sock = path.join(dir, 'killed.sock');
    const srv = spawn(process.execPath, [path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js'), 'serve', '--socket', sock],
      { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      await until(() => fs.existsSync(sock), 10000);
      const { done } = await startClient('serverdeath', { IOMMUFD_EMU_SPIN_US: '60000000', IOMMUFD_EMU_SPIN_ADAPT: '0' }, sock);
      await new Promise((r) => setTimeout(r, 100));
      srv.kill('SIGSTOP');
      await new Promise((r) => setTimeout(r, 100));
      srv.kill('SIGKILL');
      const t = setTimeout(() => assert.fail('client still waiting 10 s after the server died'), 10000);
      const r = await done;
      clearTimeout(t);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /FAILED Input\/output error/);
    } finally {
      srv.kill('SIGKILL');
    }
  });
});
