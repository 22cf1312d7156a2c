// Emulated VFIO devices through the shim, end to end: native/vfio_client.c (a
// user-space driver in C, built with the system cc) walks the machine's sysfs
// view, binds the IOAT through the cdev or a group, maps a buffer, drives the
// engine through trapped BAR MMIO, and checks the copy, the MSI-X eventfd and
// the unmapped-IOVA error -- against an in-process server with the default
// machine. The client prints one line per step; these tests require them all.
// The server has the fast path on (when its addon builds here): every frame
// kind the client causes (MACHINE, MMIO from the SIGSEGV handler, FILEOP of
// the eventfds, MMAP/MREF, a forked child's own connection) goes through the
// slot, and once more through the socket with IOMMUFD_EMU_FASTPATH=0. A
// client that hangs is killed and the test fails naming it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { vfioOf } from '../core/vfio.js';
import { buildMachine, DEFAULT_BDF, loadMachine } from '../machine/machine.js';
import { writeHeaders } from '../uapi/cheader.js';
import { buildProgram, buildTestClient, cacheDir, ensureShim, findCompiler, loadServerAddon, PACKAGE_ROOT, procMemAccessible } from './native.js';
import { shimEnv } from './run.js';
import { IommufdServer, loadHandlers } from './server.js';

const cc = findCompiler();
const skip = process.arch !== 'x64' ? 'BAR MMIO traps decode x86-64 instructions'
  : !cc ? 'no C compiler (cc) on this machine: the shim and the client cannot be built'
  : !procMemAccessible() ? 'cannot open a child\'s /proc/<pid>/mem here (ptrace restricted): the server cannot reach clients' : false;
const mapper = skip ? 'skipped' : loadServerAddon();
/** Why the runs cannot use the fast path here (false: they do). */
const noFast = typeof mapper === 'string' ? `the fast path's addon cannot be built here: ${mapper}` : false;
/** Longest one client run may take before it counts as hung. */
const HUNG_MS = 60_000;

describe('VFIO devices through the shim (native/vfio_client.c)', { skip }, () => {
  let server: IommufdServer;
  let emu: Emulator;
  let dir: string;
  let shim: string;
  let client: string;
  let clientO2: string;
  const logs: string[] = [];

  before(async () => {
    assert.ok(await loadHandlers());
    shim = ensureShim();
    const inc = path.join(cacheDir(), 'include', 'mainline');
    writeHeaders(inc, 'mainline');
    client = buildProgram([path.join(PACKAGE_ROOT, 'native', 'vfio_client.c')], {
      includeDirs: [inc], cflags: ['-isystem', inc, '-O0'], name: 'iommufd-vfio-client',
    });
    // optimised and fortified: the accessors inlined with any register and displacement, the checked read/pread entries
    clientO2 = buildProgram([path.join(PACKAGE_ROOT, 'native', 'vfio_client.c')], {
      includeDirs: [inc], cflags: ['-isystem', inc, '-O2', '-D_FORTIFY_SOURCE=2'], name: 'iommufd-vfio-client-O2',
    });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-vfio-'));
    emu = new Emulator({ profile: 'mainline' });
    buildMachine(emu, loadMachine());
    server = new IommufdServer({ socketPath: path.join(dir, 'sock'), emulator: emu, log: (m) => logs.push(m), fastPath: !noFast });
    await server.listen();
  });

  after(async () => {
    await server?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  function run(mode: string, extra: NodeJS.ProcessEnv = {}, exe = client): Promise<{ code: number | null; out: string; err: string }> {
    return new Promise((resolve, reject) => {
      const env = { ...shimEnv(shim, server.socketPath, path.join(dir, 'debugfs')), VFIO_SELFTESTS_BDF: DEFAULT_BDF, ...extra };
      const p = spawn(exe, [mode], { env });
      let out = '';
      let err = '';
      const t = setTimeout(() => {
        p.kill('SIGKILL');
        reject(new Error(`${mode}: the client hung (killed after ${HUNG_MS} ms); its output:\n${out}${err}`));
      }, HUNG_MS);
      p.stdout.on('data', (d) => (out += d));
      p.stderr.on('data', (d) => (err += d));
      p.on('exit', (code) => {
        clearTimeout(t);
        resolve({ code, out, err });
      });
    });
  }

  /** Run `mode`; its frames through the slot unless `socket` (IOMMUFD_EMU_FASTPATH=0). */
  async function passes(mode: string, mustSay: RegExp[], socket = false, exe = client): Promise<string> {
    const frames = server.fastPath.frames;
    const r = await run(mode, socket ? { IOMMUFD_EMU_FASTPATH: '0' } : {}, exe);
    if (socket || noFast) assert.equal(server.fastPath.frames, frames, `${mode}: no frame through a slot`);
    else assert.ok(server.fastPath.frames > frames, `${mode}: its calls went through the slot`);
    const failed = r.out.split('\n').filter((l) => l.startsWith('FAIL'));
    assert.deepEqual(failed, [], `${mode}: ${r.out}${r.err}`);
    assert.equal(r.code, 0, `${mode}: ${r.out}${r.err}`);
    assert.match(r.out, /PASSED\n$/);
    for (const m of mustSay) assert.match(r.out, m);
    return r.out;
  }

  test('sysfs: vendor/device, iommu_group and driver links, vfio-dev, nodes as char devices, /dev/vfio and /sys/bus/pci/devices listings', async () => {
    await passes('sysfs', [/^ok iommu_group -> \.\.\/\.\.\/\.\.\/kernel\/iommu_groups\/3$/m, /^ok vfio-dev: \/dev\/vfio\/devices\/vfio0$/m,
      /^ok \/sys\/bus\/pci\/devices lists 0000:00:03\.0 once/m, /^ok realpath\(subsystem\) = \/sys\/bus\/pci$/m]);
  });

  test('cdev: bind, attach, BAR MMIO, IOAT copy with the MSI-X eventfd, unmapped IOVA halts the channel; fork, dup, exec, close while mapped, release', async () => {
    await passes('cdev', [/^ok CBVER = 0x33/m, /^ok MSI-X: eventfd fired once \(1\)$/m, /^ok CHANERR read-data error \(0x100\)$/m,
      /^ok forked child reads CBVER/m, /^ok reopen and BIND after close$/m, /^ok fstat\(cdev fd\): char 511:0/m,
      /^ok GET_INFO through a dup/m, /^ok an exec'ed child uses the inherited device fd/m, /^ok the BAR works after close\(\) while it is mapped$/m,
      /^ok IOAS_MAP of the BAR mapping: EFAULT/m, /^ok read\(2\) advances the file position/m, /^ok lseek: ESPIPE/m]);
    // the client's exit released the device: nothing is left open
    await until(() => vfioOf(emu).devices[0]!.openCount === 0);
  });

  test('cdev, built -O2 -D_FORTIFY_SOURCE=2: the inlined MMIO accessors (other registers, displacements) trap the same', async () => {
    await passes('cdev', [/^ok CBVER = 0x33/m, /^ok copy: data arrived$/m, /^ok MSI-X: eventfd fired once \(1\)$/m], false, clientO2);
  });

  test('group + /dev/vfio/vfio container (iommufd compat): SET_CONTAINER, GET_DEVICE_FD, MAP_DMA, the copy', async () => {
    await passes('group', [/^ok GET_DEVICE_FD\(0000:00:03\.0\) = \d+, close-on-exec$/m, /^ok UNMAP_DMA all: 1048576 bytes$/m]);
  });

  test('group + /dev/iommu as the container (iommufd_compat modes)', async () => {
    await passes('compat', [/^ok copy: data arrived$/m]);
  });

  test('faults that are not BAR accesses reach the program\'s own SIGSEGV handler (installed after the shim\'s)', async () => {
    await passes('fault', [/^ok a NULL-page store reaches/m, /^ok a store to the read-only BAR mapping reaches/m,
      /^ok with memory decode off a BAR load is SIGBUS$/m]);
  });

  test('another process cannot reach a BAR mapping: an MMIO frame with the mapper\'s token and handle is refused and closed', async () => {
    const forger = buildTestClient();
    const env = { ...shimEnv(shim, server.socketPath, path.join(dir, 'debugfs')), VFIO_SELFTESTS_BDF: DEFAULT_BDF };
    const victim = spawn(client, ['hold'], { env });
    try {
      let out = '';
      const ready = new Promise<number>((resolve) => victim.stdout.on('data', (d) => {
        out += d;
        const m = /READY pid=(\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      }));
      const vpid = await ready;
      const bars = (server as unknown as { bars: Map<bigint, { pid: number; binding: { token: bigint } }> }).bars;
      const [handle, bar] = [...bars.entries()].find(([, b]) => b.pid === vpid)!;
      // no shim: a raw socket client speaking the protocol itself (async: the server runs in this process)
      const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const f = spawn(forger, ['forge-mmio', String(bar.binding.token), String(handle)],
          { env: { PATH: process.env.PATH, IOMMUFD_EMU_SOCKET: server.socketPath } });
        let so = '';
        let se = '';
        f.stdout.on('data', (d) => (so += d));
        f.stderr.on('data', (d) => (se += d));
        f.on('exit', (status) => resolve({ status, stdout: so, stderr: se }));
      });
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /^REFUSED mmio-stolen-mapping$/m);
      assert.ok(logs.some((l) => /refused: MMIO on a BAR mapping of pid \d+ that pid \d+ neither holds nor inherited/.test(l)));
      logs.length = 0;
      const done = new Promise<void>((resolve) => victim.on('exit', () => resolve()));
      victim.stdin.write('go\n');
      await done;
      assert.match(out, /^ok hold: the channel is as we left it$/m);
    } finally {
      victim.kill('SIGKILL');
    }
  });

  test('these runs went through the fast path', { skip: noFast }, () => {
    assert.ok(server.fastPath.frames > 0);
  });

  test('through the socket (IOMMUFD_EMU_FASTPATH=0) as well: sysfs, cdev with its fork', async () => {
    await passes('sysfs', [/^ok vfio-dev: \/dev\/vfio\/devices\/vfio0$/m], true);
    await passes('cdev', [/^ok MSI-X: eventfd fired once \(1\)$/m, /^ok forked child reads CBVER/m], true);
  });

  test('no emulator bug was logged, no frame refused', () => {
    assert.deepEqual(logs.filter((l) => /emulator bug|refused|helper|malformed/.test(l)), []);
  });
});

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}
