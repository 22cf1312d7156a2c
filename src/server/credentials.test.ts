// Live credentials and /proc/<pid>/status through the shim: capable() at the call, the
// source task's RLIMIT_MEMLOCK at every pin, VmPin/VmLck showing the emulator's pins for
// every way a program reads the file (native/credstatus.c). Both modes' expectations are
// what the real 7.3.4 kernel printed for the same program (oracle-vm, static build, as root).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { writeHeaders } from '../uapi/cheader.js';
import { ClientProcess, readMemlockLimit } from './credentials.js';
import { buildProgram, cacheDir, ensureShim, findCompiler, PACKAGE_ROOT, procMemAccessible } from './native.js';
import { shimEnv } from './run.js';
import { IommufdServer, loadHandlers } from './server.js';
import * as W from './wire.js';

test('readMemlockLimit parses /proc/<pid>/limits (soft limit, "unlimited" = Infinity)', () => {
  const text = fs.readFileSync('/proc/self/limits', 'latin1');
  const soft = /^Max locked memory\s+(\S+)/m.exec(text)![1]!;
  assert.equal(readMemlockLimit(process.pid), soft === 'unlimited' ? Infinity : Number(soft));
  assert.equal(readMemlockLimit(0x7ffffff0), undefined);
});

test('ClientProcess: caps and limit of the current call; another time, the limit is read live', () => {
  let live = 4096;
  const p = new ClientProcess(1234, 0, W.CAP.IPC_LOCK, 1n << 20n, () => live);
  assert.equal(p.capIpcLock, true);
  p.beginCall({ memlock: 8192n, caps: 0 }, 0);
  assert.equal(p.capIpcLock, false);
  live = 1;
  assert.equal(p.memlockLimit, 8192, 'during its own call: what the frame reported');
  p.endCall();
  assert.equal(p.memlockLimit, 1, 'outside its call: read now');
  p.beginCall({ memlock: (1n << 64n) - 1n, caps: 0 }, W.CAP.SYS_RESOURCE);
  assert.equal(p.memlockLimit, Infinity);
  assert.equal(p.capSysResource, true, 'granted capabilities are added');
  p.endCall();
  p.alive = false;
  live = 7;
  assert.equal(p.memlockLimit, Infinity, 'a gone process keeps its last limit');
});

const cc = findCompiler();
const skip = !cc ? 'no C compiler (cc) on this machine' : !procMemAccessible() ? 'cannot reach a child\'s /proc/<pid>/mem here' : false;

describe('credentials and /proc status through the shim (C client)', { skip }, () => {
  let server: IommufdServer;
  let dir: string;
  let shim: string;
  let prog: string;

  before(async () => {
    assert.ok(await loadHandlers());
    shim = ensureShim();
    const inc = path.join(cacheDir(), 'include', '7.3');
    writeHeaders(inc, '7.3');
    prog = buildProgram([path.join(PACKAGE_ROOT, 'native', 'credstatus.c')], { includeDirs: [inc], cflags: ['-isystem', inc] });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-cred-'));
    server = new IommufdServer({ socketPath: path.join(dir, 'sock'), emulator: new Emulator({ profile: '7.3' }), log: () => {} });
    await server.listen();
  });
  after(async () => {
    await server?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const run = (mode: string): Promise<{ code: number | null; out: string }> => new Promise((resolve) => {
    const p = spawn(prog, [mode], { env: shimEnv(shim, server.socketPath, path.join(dir, 'debugfs')) });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('exit', (code) => resolve({ code, out }));
  });

  test('VmPin counts pinned pages for open/read, pread, stdio and openat readers, in the process only', async () => {
    const { code, out } = await run('status');
    assert.equal(code, 0, out);
    const lines = out.trim().split('\n');
    const of = (tag: string) => lines.filter((l) => l.startsWith(tag + ' '));
    // The real kernel pins nothing for this process: every emulated count stands alone.
    for (const l of of('before')) assert.match(l, /VmPin=0 VmLck=0$/, l);
    for (const l of of('nodomain')) assert.match(l, /VmPin=0 VmLck=0$/, l); // nothing pinned yet
    assert.ok(lines.includes('map 0'));
    assert.equal(of('pinned').length, 4);
    for (const l of of('pinned')) assert.match(l, /VmPin=16 VmLck=0$/, l); // 4 pages, 4 kB each
    assert.match(of('child-parent')[0]!, /VmPin=16 /);
    assert.match(of('child-self')[0]!, /VmPin=0 /);
    for (const l of of('closed')) assert.match(l, /VmPin=0 VmLck=0$/, l);
  });

  test('CAP_IPC_LOCK is asked at the map, RLIMIT_MEMLOCK at the pin: dropping the cap after open gives ENOMEM', async () => {
    const { code, out } = await run('dropcap');
    assert.equal(code, 0, out);
    const had = /hadcap=1/.test(out);
    assert.ok(out.includes(`map-with-cap ${had ? 0 : 12}`), out); // ENOMEM = 12 without the cap
    assert.ok(out.includes('map-without-cap 12'), out);
  });

  test('the limit of a process is read when a pin is charged to it, not only at its own calls', { skip: !spawnSync('prlimit', ['--version']).stdout ? 'no prlimit(1)' : false }, () => {
    const sleeper = spawn('sleep', ['5']);
    try {
      const p = new ClientProcess(sleeper.pid!, 0, 0, 1n << 30n);
      assert.equal(spawnSync('prlimit', [`--pid=${sleeper.pid}`, '--memlock=12288:12288']).status, 0);
      assert.equal(p.memlockLimit, 12288);
    } finally {
      sleeper.kill();
    }
  });
});
