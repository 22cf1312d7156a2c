// The iommufd-emu command line, run as a user would (node dist/cli/main.js ...).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { findCompiler, procMemAccessible } from '../server/native.js';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');
const skip = !findCompiler() ? 'no C compiler (cc): the shim cannot be built'
  : !procMemAccessible() ? 'cannot open a child\'s /proc/<pid>/mem here (ptrace restricted)' : false;

// A hung run fails its test: SIGKILL, since the CLI forwards SIGTERM to its program, which
// may be waiting with signals blocked (the shim blocks them inside a call); the server's
// end then closes and the program fails its call (EIO) and exits.
function cli(args: string[], input?: string) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', input, timeout: 60_000, killSignal: 'SIGKILL' });
}

test('run exits with the program\'s status', { skip }, () => {
  assert.equal(cli(['run', '--', 'sh', '-c', 'exit 7']).status, 7);
  assert.equal(cli(['run', '--', 'sh', '-c', 'kill -TERM $$']).status, 128 + 15);
  assert.equal(cli(['run', '--', '/nonexistent/program']).status, 127);
});

test('run sets IOMMUFD_EMU_SOCKET and preloads the shim', { skip }, () => {
  const r = cli(['run', '--', 'sh', '-c', 'echo "$IOMMUFD_EMU_SOCKET|$LD_PRELOAD"']);
  assert.equal(r.status, 0, r.stderr);
  const [sock, pre] = r.stdout.trim().split('|');
  assert.match(sock!, /sock$/);
  assert.match(pre!, /libiommufd-emu-[0-9a-f]+\.so/);
});

test('demo: the bundled C example passes every step and the trace is decoded from the uAPI table', { skip }, () => {
  const r = cli(['demo']);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /demo: all steps passed/);
  assert.match(r.stderr, /IOMMU_IOAS_ALLOC \{flags=0\} = 0 -> \{out_ioas_id=1\}/);
  assert.match(r.stderr, /IOMMU_IOAS_MAP \{flags=WRITEABLE\|READABLE/);
  assert.match(r.stderr, /IOMMU_TEST_CMD \{op=MOCK_DOMAIN/);
});

test('demo builds and passes under the 6.12 profile too (no vIOMMU ioctls there)', { skip }, () => {
  const r = cli(['demo', '--abi', '6.12']);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.doesNotMatch(r.stdout, /VIOMMU/);
});

test('demo --example vfio-ioat: the IOAT bound through its cdev copies through the IOAS, an unmapped IOVA halts it; device events in the trace', {
  skip: skip || (process.arch !== 'x64' ? 'BAR MMIO traps decode x86-64 instructions' : false),
}, () => {
  const r = cli(['demo', '--example', 'vfio-ioat']);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.doesNotMatch(r.stdout, /FAILED/);
  assert.match(r.stdout, /vfio-ioat: copy 64 KiB \(4 descriptors\) -> DONE +ok/);
  assert.match(r.stdout, /vfio-ioat: unmapped-IOVA copy -> HALTED, READ_DATA_ERR +ok: CHANERR 0x100/);
  assert.match(r.stdout, /vfio-ioat: all steps ok/);
  assert.match(r.stderr, /open\("\/dev\/vfio\/devices\/vfio0"\) = \d+/);
  assert.match(r.stderr, /IOMMU_IOAS_MAP \{flags=FIXED_IOVA\|WRITEABLE\|READABLE .*iova=0x10000000\}/);
  assert.match(r.stderr, /^ {4}0000:00:03\.0 ioat: done: 4 descriptor\(s\)/m);
  assert.match(r.stderr, /^ {4}0000:00:03\.0 ioat: error 0x100 \(source read at 0x40000000: translation fault/m);
});

test('--trace=FILE appends the trace to FILE', { skip }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-cli-'));
  try {
    const file = path.join(dir, 'trace.txt');
    // any program: the trace is empty without ioctls, but the file is created
    const r = cli(['run', `--trace=${file}`, '--', 'true']);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(fs.existsSync(file));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('env prints export lines for the shim, the socket and the debugfs directory', { skip }, () => {
  const r = cli(['env', '--socket', '/tmp/x/iommufd.sock']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^export LD_PRELOAD='.*libiommufd-emu-[0-9a-f]+\.so'$/m);
  assert.match(r.stdout, /^export IOMMUFD_EMU_SOCKET='\/tmp\/x\/iommufd\.sock'$/m);
  assert.match(r.stdout, /^export IOMMUFD_EMU_DEBUGFS='\/tmp\/x\/iommufd-emu-debugfs'$/m);
});

test('headers writes linux/iommufd.h and iommufd_test.h for a profile', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-hdr-'));
  try {
    const r = cli(['headers', '--abi', '6.12', dir]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(fs.readFileSync(path.join(dir, 'linux', 'iommufd.h'), 'utf8').includes('IOMMU_IOAS_ALLOC'));
    assert.ok(fs.existsSync(path.join(dir, 'iommufd_test.h')));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an unknown profile is rejected', () => {
  const r = cli(['run', '--abi', '5.0', '--', 'true']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /5\.0/);
});

test('devices: the default machine, a preset as JSON, the model list, a bad machine names the problem', () => {
  const r = cli(['devices']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /0000:00:03\.0 {2}ioat {2}group 3 {2}\/dev\/vfio\/devices\/vfio0/);
  assert.match(r.stdout, /VFIO_SELFTESTS_BDF=0000:00:03\.0/);
  const j = cli(['devices', '--machine', 'ioat-x2', '--json']);
  assert.equal(j.status, 0, j.stderr);
  assert.deepEqual(JSON.parse(j.stdout).devices.map((d: { bdf: string }) => d.bdf), ['0000:00:03.0', '0000:00:04.0']);
  assert.match(cli(['devices', '--models']).stdout, /model ioat: .*\n {4}xfercap=1\.\.31/);
  const bad = cli(['devices', '--machine', 'no-such-preset']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /'no-such-preset' is neither a preset/);
});
