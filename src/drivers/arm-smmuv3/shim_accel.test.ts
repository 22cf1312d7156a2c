// The accel=on flow as a real program through the shim: native/smmu_accel.c
// (GET_HW_INFO, nest parent, VIOMMU_ALLOC, VDEVICE_ALLOC, vEVENTQ, nested
// HWPTs from a vSTE, attach through the VFIO cdev found in sysfs, the IOAT
// driven through its trapped BAR, guest stage-1 tables in the program's own
// memory mapped through the IOAS) under `iommufd-emu run --machine
// ioat-x2-smmu --trace=smmu,FILE`: a copy that hits, one that faults into the
// vEVENTQ with the vSID, one that only succeeds after the right TLBI.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { buildProgram, cacheDir, findCompiler, PACKAGE_ROOT, procMemAccessible } from '../../server/native.js';
import { writeHeaders } from '../../uapi/cheader.js';

const skip = process.arch !== 'x64' ? 'BAR MMIO traps decode x86-64 instructions'
  : !findCompiler() ? 'no C compiler (cc): native/smmu_accel.c cannot be built'
  : !procMemAccessible() ? 'cannot open a child\'s /proc/<pid>/mem here (ptrace restricted): the server cannot reach clients'
  : false;

test('smmu_accel.c through the shim on ioat-x2-smmu: the three DMAs, every check ok, SMMU decisions in the trace', { skip }, () => {
  const inc = path.join(cacheDir(), 'include', 'mainline');
  writeHeaders(inc, 'mainline');
  const prog = buildProgram([path.join(PACKAGE_ROOT, 'native', 'smmu_accel.c')], { includeDirs: [inc], name: 'smmu_accel' });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-accel-'));
  try {
    const trace = path.join(dir, 'trace.txt');
    const r = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js'), 'run', '--machine', 'ioat-x2-smmu',
      `--trace=smmu,${trace}`, '--', prog], { encoding: 'utf8', timeout: 120_000 });
    const out = `${r.stdout}\n${r.stderr}`;
    assert.equal(r.status, 0, out);
    assert.doesNotMatch(r.stdout, /^not ok/m, out);
    const oks = r.stdout.split('\n').filter((l) => /^ok \d+ - /.test(l));
    assert.equal(oks.length, 19, out);
    for (const what of ['DMA 1: the bytes landed in guest RAM', 'DMA 2: the vEVENTQ delivers F_TRANSLATION with the vSID',
      'DMA 3: before any TLBI the cached read-only entry still faults', 'DMA 3: after the right TLBI the write succeeds']) {
      assert.ok(oks.some((l) => l.includes(what)), `missing: ${what}\n${out}`);
    }
    const t = fs.readFileSync(trace, 'utf8');
    assert.match(t, /IOMMU_VIOMMU_ALLOC/);
    assert.match(t, /^ {4}arm-smmu-v3 walk smmu=smmu0 stage=1 /m);
    assert.match(t, /^ {4}arm-smmu-v3 walk smmu=smmu0 stage=2 /m);
    assert.match(t, /^ {4}arm-smmu-v3 event smmu=smmu0 id=0x10 .*disposition=forwarded/m);
    assert.match(t, /^ {4}arm-smmu-v3 cmd smmu=smmu0 op=TLBI_NH_VA /m);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
