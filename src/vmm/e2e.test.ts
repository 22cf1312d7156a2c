// The --dmatest verdict, on guest reports shaped like the real run's (the run itself needs QEMU and
// a kernel build: `npm run vmm-e2e -- --dmatest`, not part of npm test).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dmatestSummaries, judgeDmatest, type GuestReport } from './e2e.js';

function report(marks: string[], qemuStderr = ''): GuestReport {
  return { lines: marks.map((m) => `vmm-e2e: ${m}`), marks, status: 0, qemuStderr, seconds: 1 };
}

const passing = (tests: number, failures = 0, result = 0) => [
  'guest 6.12.117 up 1.20', 'mode dmatest', 'insmod dca builtin', 'insmod ioatdma builtin',
  'driver 0000:00:01.0 ioatdma', 'dma dma0chan0', `dmatest start ${tests} 1.31`, 'dmatest end 9.80',
  'dmatest [    1.40] dmatest: Added 1 threads using dma0chan0',
  'dmatest [    1.41] dmatest: Started 1 threads using dma0chan0',
  `dmatest [    9.70] dmatest: dma0chan0-copy0: summary ${tests} tests, ${failures} failures 118.25 iops 947 KB/s (${result})`,
  'uptime 9.90', 'done',
];

test('dmatest summary lines are parsed: thread, tests, failures, iops, KB/s, result', () => {
  assert.deepEqual(dmatestSummaries(passing(500)), [
    { thread: 'dma0chan0-copy0', tests: 500, failures: 0, iops: 118.25, kbPerSecond: 947, result: 0 },
  ]);
  // Only the guest's dmatest lines count, not any mark that happens to contain the text.
  assert.deepEqual(dmatestSummaries(['dmesg dmatest: x: summary 1 tests, 0 failures 1.00 iops 1 KB/s (0)']), []);
});

test('dmatest passes: all iterations, 0 failures, one engine copy per test, no fault', () => {
  const v = judgeDmatest(report(passing(500)), 500, { descriptors: 500, copies: 500, bytes: 4_000_000, seconds: 8 }, 0);
  assert.deepEqual(v, { ok: true, problems: [] });
});

test('dmatest fails on failures, a short run, a bad result, faults or copies the engine did not make', () => {
  const engine = { descriptors: 500, copies: 500, bytes: 4_000_000, seconds: 8 };
  const cases: [GuestReport, number, typeof engine | undefined, number, RegExp][] = [
    [report(passing(500, 3)), 500, engine, 0, /3 failure/],
    [report(passing(400)), 500, { ...engine, copies: 400 }, 0, /ran 400 tests, not 500/],
    [report(passing(500, 0, -5)), 500, engine, 0, /ended with -5/],
    [report(passing(500)), 500, engine, 2, /2 IOMMU fault/],
    [report(passing(500)), 500, { ...engine, copies: 250 }, 0, /250 copies for 500 tests/],
    [report(passing(500)), 500, undefined, 0, /never said "dmatest start"/],
    [report(passing(500).filter((l) => !l.includes('summary'))), 500, engine, 0, /no dmatest summary/],
    [report(passing(500).filter((l) => l !== 'dma dma0chan0')), 500, engine, 0, /no dma0chan0/],
    [report([...passing(500), "dmatest [ 5.0] dmatest: dma0chan0-copy0: result #7: 'data error' with src_off=0x1 dst_off=0x2 len=0x3 (0)"]),
      500, engine, 0, /failed tests: .*data error/],
    [report([...passing(500), 'dmatest [ 5.0] dmatest: dma0chan0-copy0: dstbuf[0x10] mismatch! Expected 41, got 00']),
      500, engine, 0, /failed tests: .*mismatch/],
    [report(passing(500), 'qemu-system-x86_64: vfio: something broke'), 500, engine, 0, /QEMU: .*something broke/],
  ];
  for (const [r, it, e, f, want] of cases) {
    const v = judgeDmatest(r, it, e, f);
    assert.equal(v.ok, false, `expected a failure matching ${want}`);
    assert.match(v.problems.join('\n'), want);
  }
});
