// The calls whose behaviour changed between 6.17 and 7.3 (native/oracle/probe73.c: dma-buf,
// NOIOMMU_GET_PA, vEVENTQ limits, the AMDv1 mock table, dirty granularity over ordinary and
// huge pages), through the shim under 7.3, line for line against what the real 7.3.4 kernel
// printed for the same program (.ci/golden/probe73-7.3.4.txt, recorded with oracle-vm:
// static build, `ORACLE_KVER=7.3 run.sh ./probe73`).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { writeHeaders } from '../uapi/cheader.js';
import { buildProgram, cacheDir, ensureShim, findCompiler, PACKAGE_ROOT, procMemAccessible } from './native.js';
import { shimEnv } from './run.js';
import { IommufdServer, loadHandlers } from './server.js';

const cc = findCompiler();
const hugeFree = Number(/HugePages_Free:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
const skip = !cc ? 'no C compiler (cc)' : !procMemAccessible() ? 'cannot reach a child\'s /proc/<pid>/mem here'
  : hugeFree < 1 ? 'no free huge page (the probe maps one; /proc/sys/vm/nr_hugepages)' : false;

describe('7.3 behaviour probe through the shim equals the real 7.3.4 kernel\'s output', { skip }, () => {
  let server: IommufdServer;
  let dir: string;
  let prog: string;
  let shim: string;
  before(async () => {
    assert.ok(await loadHandlers());
    shim = ensureShim();
    const inc = path.join(cacheDir(), 'include', '7.3');
    writeHeaders(inc, '7.3');
    prog = buildProgram([path.join(PACKAGE_ROOT, 'native', 'oracle', 'probe73.c')], { includeDirs: [inc], cflags: ['-isystem', inc] });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-probe-'));
    server = new IommufdServer({ socketPath: path.join(dir, 'sock'), emulator: new Emulator({ profile: '7.3' }), log: () => {} });
    await server.listen();
  });
  after(async () => {
    await server?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('every line', async () => {
    // stdin on /dev/null, as in the oracle VM (the probe revokes "fd 0").
    const r = await new Promise<{ out: string; code: number | null }>((resolve) => {
      const p = spawn(prog, [], { env: shimEnv(shim, server.socketPath, path.join(dir, 'debugfs')), stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout!.on('data', (d: Buffer) => (out += d));
      p.stderr!.on('data', (d: Buffer) => (out += d));
      p.on('exit', (code: number | null) => resolve({ out, code }));
    });
    assert.equal(r.code, 0, r.out);
    const want = fs.readFileSync(path.join(PACKAGE_ROOT, '.ci', 'golden', 'probe73-7.3.4.txt'), 'utf8');
    assert.deepEqual(r.out.trimEnd().split('\n'), want.trimEnd().split('\n'));
  });
});
