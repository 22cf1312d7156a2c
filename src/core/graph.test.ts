// The object graph read from a live emulator: nodes, edges by reference kind,
// holders, DESTROY predictions, IOAS address spaces; bookkeeping checked at every step.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openIommufd } from '../api.js';
import { Access } from './access.js';
import { Emulator } from './emulator.js';
import { contextGraph, emulatorGraph, referenceProblems, type ContextGraph } from './graph.js';
import { MOCK, TEST_OP } from '../uapi/enums.js';
import { isErrno } from '../uapi/errno.js';
import { viommuDemo } from './trace_test_helpers.js';

const U64_MAX = (1n << 64n) - 1n;

function edgeSet(g: ContextGraph): string[] {
  const name = (k: number | string): string => {
    if (typeof k === 'string') return g.externals.find((x) => x.key === k)!.label;
    const o = g.objects.find((x) => x.id === k)!;
    return `${o.kind} ${o.id}`;
  };
  return g.edges.map((e) => `${name(e.from)} -${e.kind}${e.ref ? '' : '?'}${e.label ? `(${e.label})` : ''}-> ${name(e.to)}`);
}

test('at the demo\'s fullest point the graph has every object and the kernel\'s edges', () => {
  const fd = openIommufd();
  const ids = viommuDemo(fd);
  const g = contextGraph(fd.ctx);
  assert.deepEqual(g.objects.map((o) => `${o.kind} ${o.id}`), [
    `IOAS ${ids.ioas}`, `SELFTEST ${ids.stdev}`, `DEVICE ${ids.idev}`, `VEVENTQ ${ids.veventq}`, `HWPT_PAGING ${ids.parent}`,
    `VIOMMU ${ids.viommu}`, `VDEVICE ${ids.vdev}`, `HWPT_NESTED ${ids.nested}`,
  ]);
  const edges = edgeSet(g);
  for (const e of [
    `SELFTEST ${ids.stdev} -bind-> DEVICE ${ids.idev}`,
    `DEVICE ${ids.idev} -attach-> HWPT_NESTED ${ids.nested}`,
    `HWPT_PAGING ${ids.parent} -ioas-> IOAS ${ids.ioas}`,
    `VIOMMU ${ids.viommu} -parent-> HWPT_PAGING ${ids.parent}`,
    `VDEVICE ${ids.vdev} -viommu-> VIOMMU ${ids.viommu}`,
    `VDEVICE ${ids.vdev} -device-> DEVICE ${ids.idev}`,
    `HWPT_NESTED ${ids.nested} -viommu-> VIOMMU ${ids.viommu}`,
    `VEVENTQ ${ids.veventq} -viommu-> VIOMMU ${ids.viommu}`,
    `[iommufd-viommu-event] -file-> VEVENTQ ${ids.veventq}`,
  ]) assert.ok(edges.includes(e), `${e} in\n${edges.join('\n')}`);
  assert.equal(edges.length, 9, edges.join('\n'));

  const viommu = g.objects.find((o) => o.id === ids.viommu)!;
  assert.equal(viommu.users, 4); // table + vDEVICE + nested HWPT + vEVENTQ
  assert.equal(viommu.fields.vdevices, `0x42 -> ${ids.vdev}`);
  assert.equal(viommu.fields.parent, ids.parent);
  assert.equal(viommu.destroy?.errno, 'EBUSY');
  assert.match(viommu.destroy!.reason, new RegExp(`VDEVICE ${ids.vdev} \\(viommu\\).*HWPT_NESTED ${ids.nested} \\(viommu\\).*VEVENTQ ${ids.veventq} \\(viommu\\)`));
  const vdev = g.objects.find((o) => o.id === ids.vdev)!;
  assert.deepEqual([vdev.fields.virt_id, vdev.destroy], ['0x42', null]);
  assert.equal(g.objects.find((o) => o.id === ids.veventq)!.fields.pending, 1);
  assert.equal(g.objects.find((o) => o.id === ids.idev)!.fields.attached, `rid -> ${ids.nested}`);
});

test('the IOAS view: areas with their pins, reserved ranges with owners, usable ranges', () => {
  const fd = openIommufd();
  const ids = viommuDemo(fd);
  const [v] = contextGraph(fd.ctx).ioas;
  assert.equal(v!.id, ids.ioas);
  assert.equal(v!.areaCount, 1);
  const a = v!.areas[0]!;
  assert.deepEqual([a.iova, a.last, a.prot, a.filled, a.busy, a.pages, a.pinned], [ids.iova, ids.iova + 0xffffn, 'rw', true, false, 16, 16]);
  assert.deepEqual(a.pinnedRuns, [[0, 16]]);
  // The parent's aperture is reserved outside [APERTURE_START, APERTURE_LAST].
  assert.deepEqual(v!.reserved.map((r) => [r.start, r.last, r.owner]), [
    [0n, MOCK.APERTURE_START - 1n, `aperture of HWPT_PAGING ${ids.parent}`],
    [MOCK.APERTURE_LAST + 1n, U64_MAX, `aperture of HWPT_PAGING ${ids.parent}`],
  ]);
  assert.deepEqual(v!.usable, [[MOCK.APERTURE_START, MOCK.APERTURE_LAST]]);
  assert.deepEqual(v!.hwpts, [ids.parent]);
});

test('an in-kernel access\'s pins are counted per area and shown as holder of the IOAS', () => {
  const fd = openIommufd();
  const ioas = fd.ioasAlloc();
  const va = fd.mem.mmap(4 * 4096);
  const iova = fd.ioasMap({ ioasId: ioas, userVa: va, length: 4n * 4096n });
  const owner = { label: 'test driver' };
  const acc = Access.create(fd.ctx, { needsPinPages: true }, owner);
  acc.attach(ioas);
  acc.pinPages(iova + 4096n, 8192n, false);
  const g = contextGraph(fd.ctx);
  const a = g.ioas[0]!.areas[0]!;
  assert.deepEqual([a.filled, a.accessPins, a.locks, a.pinned, a.pinnedRuns], [false, 1, 0, 2, [[1, 2]]]);
  assert.ok(edgeSet(g).includes(`ACCESS ${acc.id} -access-> IOAS ${ioas}`));
  assert.ok(edgeSet(g).includes(`test driver -owner-> ACCESS ${acc.id}`));
  assert.equal(g.objects.find((o) => o.id === ioas)!.destroy?.errno, 'EBUSY');
});

test('before 6.17 a vDEVICE does not hold its device: the relation is drawn without a reference', () => {
  const fd = openIommufd({ profile: '6.15' });
  const ids = viommuDemo(fd);
  const edges = edgeSet(contextGraph(fd.ctx));
  assert.ok(edges.includes(`VDEVICE ${ids.vdev} -device?-> DEVICE ${ids.idev}`), edges.join('\n'));
});

test('every user has a holder record and no lookup outlives its call, at every step of the demo and its teardown', () => {
  const emu = new Emulator();
  const fd = openIommufd({ emu });
  let steps = 0;
  emu.bus.subscribe((e) => {
    if (e.t === 'ioctl') steps++;
  });
  const check = (): void => assert.deepEqual(referenceProblems(fd.ctx), []);
  const ids = viommuDemo(fd);
  check();
  assert.throws(() => fd.destroy(ids.viommu), (e) => isErrno(e, 'EBUSY'));
  check();
  fd.closeFd(ids.veventqFd);
  fd.destroy(ids.veventq);
  fd.testCmd(TEST_OP.MOCK_DOMAIN_REPLACE, ids.stdev, { pt_id: ids.parent });
  check();
  for (const id of [ids.nested, ids.vdev, ids.viommu, ids.stdev, ids.parent]) {
    fd.destroy(id);
    check();
  }
  fd.ioasUnmap(ids.ioas, ids.iova, 64n * 1024n);
  fd.destroy(ids.ioas);
  check();
  assert.ok(steps > 10);
  assert.equal(emulatorGraph(emu).contexts[0]!.objects.length, 0);
  fd.close();
  assert.deepEqual(emulatorGraph(emu).contexts, []);
});

test('the emulator graph lists every open context with its owner\'s pid', () => {
  const emu = new Emulator();
  const a = openIommufd({ emu });
  const b = openIommufd({ emu });
  b.ioasAlloc();
  const g = emulatorGraph(emu);
  assert.equal(g.profile, 'mainline');
  assert.deepEqual(g.contexts.map((c) => [c.ctx, c.objects.length, c.pid]), [[a.ctx.seq, 0, a.mem.process.pid], [b.ctx.seq, 1, b.mem.process.pid]]);
});
