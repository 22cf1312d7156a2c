import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import test from 'node:test';
import { compareVerdicts } from './verdicts.js';
import {
  expectedOnHost, formatVfioVerdicts, hugetlbNeed, modeOf, parseProgramRun, parseVfioExpected, PROGRAM_CASE, summarize, VFIO_MODES,
} from './vfio_selftests.js';

test('a case runs in the longest mode its variant starts with; fixtures without modes run the default (iommufd)', () => {
  assert.equal(modeOf('fx.vfio_type1_iommu.t'), 'vfio_type1_iommu');
  assert.equal(modeOf('fx.vfio_type1v2_iommu_anonymous_hugetlb_2mb.t'), 'vfio_type1v2_iommu');
  assert.equal(modeOf('fx.iommufd_compat_type1_anonymous.t'), 'iommufd_compat_type1');
  assert.equal(modeOf('fx.iommufd_compat_type1v2.t'), 'iommufd_compat_type1v2');
  assert.equal(modeOf('fx.iommufd_anonymous.t'), 'iommufd');
  assert.equal(modeOf('fx.msix.t'), 'iommufd');
  assert.equal(modeOf('fx.t'), 'iommufd');
  assert.equal(VFIO_MODES.length, 5);
});

// A made-up run: library asserts print the source path they were compiled with.
const LOG = [
  'TAP version 13',
  '1..3',
  '#  RUN           fx.vfio_type1_iommu.a ...',
  '/tmp/x/lib/iommu.c:433: Assertion Failure',
  '',
  '  Expression: fd >= 0',
  '  Observed: -1 >= 0',
  '  [errno: 2 - No such file or directory]',
  '# a: Test exited with error code 1',
  '#          FAIL  fx.vfio_type1_iommu.a',
  'not ok 1 fx.vfio_type1_iommu.a',
  '#  RUN           fx.iommufd_anonymous_hugetlb_1gb.b ...',
  '#      SKIP      no huge page',
  'ok 2 fx.iommufd_anonymous_hugetlb_1gb.b # SKIP no huge page',
  '#  RUN           fx.iommufd.c ...',
  '#            OK  fx.iommufd.c',
  'ok 3 fx.iommufd.c',
].join('\n');

test('a run gives one verdict per case, library assertions as the failing check, and a reason for every non-pass', () => {
  const r = parseProgramRun(LOG, 1);
  assert.deepEqual([...r.cases], [
    ['fx.vfio_type1_iommu.a', { verdict: 'fail', where: 'iommu.c:433' }],
    ['fx.iommufd_anonymous_hugetlb_1gb.b', { verdict: 'skip' }],
    ['fx.iommufd.c', { verdict: 'pass' }],
  ]);
  assert.match(r.reasons.get('fx.vfio_type1_iommu.a')!, /^iommu\.c:433: assertion failed: Expression: fd >= 0: Observed: -1 >= 0/);
  assert.equal(r.reasons.get('fx.iommufd_anonymous_hugetlb_1gb.b'), 'no huge page');
  assert.equal(r.reasons.has('fx.iommufd.c'), false);
  const s = summarize('prog', r);
  assert.deepEqual(s.filter((l) => l.startsWith('  prog')), ['  prog [vfio_type1_iommu]: pass 0, fail 1, skip 0', '  prog [iommufd]: pass 1, fail 0, skip 1']);
});

test('a program whose main() skips or dies before any case gets one program-level verdict', () => {
  const skipped = parseProgramRun('1..0 # SKIP no such function on the device\n', 4);
  assert.deepEqual([...skipped.cases], [[PROGRAM_CASE, { verdict: 'skip' }]]);
  assert.equal(skipped.reasons.get(PROGRAM_CASE), 'no such function on the device');
  const died = parseProgramRun('/a/b/vfio_pci_device.c:395: Assertion Failure\n\n  Expression: x\n', 1);
  assert.deepEqual([...died.cases], [[PROGRAM_CASE, { verdict: 'fail', where: 'vfio_pci_device.c:395' }]]);
});

test('expectations: a hugetlb case expects a skip on a host without that page size; recorded lines read back', () => {
  const text = formatVfioVerdicts('prog', parseProgramRun(LOG, 1));
  assert.equal(text.split('\n')[1], 'prog\tfx.iommufd_anonymous_hugetlb_1gb.b\tskip\t\thugetlb-1gb');
  const e = parseVfioExpected(`# ours\n${text.replace('\tskip\t\thugetlb-1gb', '\tpass\t\thugetlb-1gb')}`).get('prog')!;
  assert.equal(e.get('fx.iommufd_anonymous_hugetlb_1gb.b')!.needs, 'hugetlb-1gb');
  const run = parseProgramRun(LOG, 1).cases;
  assert.equal(compareVerdicts(expectedOnHost(e, new Set()), run).length, 0);
  assert.deepEqual(compareVerdicts(expectedOnHost(e, new Set(['hugetlb-1gb'])), run).map((d) => d.name), ['fx.iommufd_anonymous_hugetlb_1gb.b']);
  assert.equal(hugetlbNeed('f.iommufd_anonymous_hugetlb_2mb.t'), 'hugetlb-2mb');
  assert.throws(() => parseVfioExpected('p\tc\tfail\n'), /needs its failing check/);
  assert.throws(() => parseVfioExpected('p\tc\tpass\t\thugetlb-4k\n'), /unknown host need/);
});

test('the committed expectation covers every case of the seven 7.3.4 programs', () => {
  const e = parseVfioExpected(readFileSync(new URL('../../.ci/vfio-selftests-expected.tsv', import.meta.url), 'utf8'));
  const sizes = Object.fromEntries([...e].map(([p, m]) => [p, m.size]));
  assert.deepEqual(sizes, {
    vfio_dma_mapping_test: 30, vfio_dma_mapping_mmio_test: 15, vfio_iommufd_setup_test: 6, vfio_pci_device_test: 5,
    vfio_pci_device_init_perf_test: 5, 'vfio_pci_device_init_perf_test@ioat-x2': 5, vfio_pci_driver_test: 35, vfio_pci_sriov_uapi_test: 1,
  });
});
