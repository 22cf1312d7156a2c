// The trace bus: what the core reports, to whom, and that nobody pays while nobody listens.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openIommufd } from '../api.js';
import { Emulator } from './emulator.js';
import { SimMemory } from './simmem.js';
import { TracePrinter } from '../server/trace.js';
import { HWPT_ALLOC, MOCK } from '../uapi/enums.js';
import { isErrno, IommufdError } from '../uapi/errno.js';
import { encode } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { TraceEvent } from './trace_bus.js';
import { recorded, viommuDemo } from './trace_test_helpers.js';

type Of<K extends TraceEvent['t']> = Extract<TraceEvent, { t: K }>;
const only = <K extends TraceEvent['t']>(events: TraceEvent[], t: K): Of<K>[] => events.filter((e): e is Of<K> => e.t === t);

test('the bus is off until someone subscribes and off again when the last one leaves', () => {
  const emu = new Emulator();
  assert.equal(emu.bus.on, false);
  const a = emu.bus.subscribe(() => {});
  const b = emu.bus.subscribe(() => {});
  assert.equal(emu.bus.on, true);
  a();
  assert.equal(emu.bus.on, true);
  b();
  assert.equal(emu.bus.on, false);
});

test('unsubscribed, the emulator builds no events (a throwing listener is never reached)', () => {
  const fd = openIommufd();
  const stop = fd.ctx.emu.bus.subscribe(() => { throw new Error('called'); });
  stop();
  viommuDemo(fd); // would throw if any emit site ignored `on`
});

test('the emulator knows its contexts: open adds, the last reference removes, with ctx events', () => {
  const emu = new Emulator();
  const events: TraceEvent[] = [];
  emu.bus.subscribe((e) => events.push(e));
  const a = openIommufd({ emu });
  const b = openIommufd({ emu });
  assert.deepEqual([...emu.contexts], [a.ctx, b.ctx]);
  assert.notEqual(a.ctx.seq, b.ctx.seq);
  a.close();
  assert.deepEqual([...emu.contexts], [b.ctx]);
  assert.deepEqual(only(events, 'ctx').map((e) => [e.op, e.ctx]), [['open', a.ctx.seq], ['open', b.ctx.seq], ['release', a.ctx.seq]]);
});

test('object lifecycle: alloc then finalize on create, destroy on IOMMU_DESTROY, abort on a failed create', () => {
  const { fd, events } = recorded();
  const ioas = fd.ioasAlloc();
  fd.destroy(ioas);
  // A failed create: the nested HWPT's driver data is rejected after its ID was reserved.
  const i2 = fd.ioasAlloc();
  const { idevId } = fd.mockDomain(i2);
  const parent = fd.hwptAlloc({ devId: idevId, ptId: i2, flags: HWPT_ALLOC.NEST_PARENT });
  assert.throws(() => fd.hwptAlloc({ devId: idevId, ptId: parent, dataType: 0x1234, data: new Uint8Array(8) }), isErrno);
  const obj = only(events, 'obj');
  assert.deepEqual(obj.slice(0, 3).map((e) => [e.op, e.id, e.kind]), [['alloc', ioas, 'IOAS'], ['finalize', ioas, 'IOAS'], ['destroy', ioas, 'IOAS']]);
  const aborted = obj.filter((e) => e.op === 'abort');
  assert.equal(aborted.length, 1);
  assert.equal(aborted[0]!.kind, 'HWPT_NESTED');
});

test('every reference names its holder and kind: the vIOMMU flow takes the kernel\'s edges', () => {
  const { fd, events } = recorded();
  const ids = viommuDemo(fd);
  const gets = only(events, 'ref').filter((e) => e.op === 'get')
    .map((e) => `${'obj' in e.holder ? `${e.holder.kind} ${e.holder.obj}` : e.holder.label} -${e.ref}-> ${e.kind} ${e.id}`);
  for (const edge of [
    `SELFTEST ${ids.stdev} -bind-> DEVICE ${ids.idev}`,
    `DEVICE ${ids.idev} -attach-> HWPT_PAGING ${ids.autoHwpt}`,
    `HWPT_PAGING ${ids.autoHwpt} -ioas-> IOAS ${ids.ioas}`,
    `HWPT_PAGING ${ids.parent} -ioas-> IOAS ${ids.ioas}`,
    `VIOMMU ${ids.viommu} -parent-> HWPT_PAGING ${ids.parent}`,
    `VDEVICE ${ids.vdev} -viommu-> VIOMMU ${ids.viommu}`,
    `VDEVICE ${ids.vdev} -device-> DEVICE ${ids.idev}`,
    `HWPT_NESTED ${ids.nested} -viommu-> VIOMMU ${ids.viommu}`,
    `DEVICE ${ids.idev} -attach-> HWPT_NESTED ${ids.nested}`,
    `VEVENTQ ${ids.veventq} -viommu-> VIOMMU ${ids.viommu}`,
    `[iommufd-viommu-event] -file-> VEVENTQ ${ids.veventq}`,
  ]) assert.ok(gets.includes(edge), `${edge} in\n${gets.join('\n')}`);
  // Replacing the auto-domain drops its reference from the device (and the auto-domain goes).
  const puts = only(events, 'ref').filter((e) => e.op === 'put' && e.id === ids.autoHwpt && e.ref === 'attach');
  assert.equal(puts.length, 1);
  assert.ok(only(events, 'obj').some((e) => e.op === 'destroy' && e.id === ids.autoHwpt));
});

test('attach, replace and detach are reported with device, PASID and HWPTs', () => {
  const { fd, events } = recorded();
  const ids = viommuDemo(fd);
  fd.destroy(ids.stdev);
  const att = only(events, 'attach').map((e) => [e.op, e.dev, e.pasid, e.hwpt, e.old]);
  assert.deepEqual(att, [
    ['attach', ids.idev, 0, ids.autoHwpt, undefined],
    ['replace', ids.idev, 0, ids.nested, ids.autoHwpt],
    ['detach', ids.idev, 0, ids.nested, undefined],
  ]);
});

test('IOAS map and unmap report the operation, each area and the domain pins', () => {
  const { fd, events } = recorded();
  const ioas = fd.ioasAlloc();
  fd.mockDomain(ioas);
  const va = fd.mem.mmap(8192);
  const iova = fd.ioasMap({ ioasId: ioas, userVa: va, length: 8192n, iova: MOCK.APERTURE_START });
  fd.ioasUnmap(ioas, iova, 8192n);
  const seq = events.filter((e) => e.t === 'ioas' || e.t === 'area' || e.t === 'pin')
    .map((e) => `${e.t}:${(e as { op: string }).op}`);
  assert.deepEqual(seq, ['pin:pin', 'area:add', 'ioas:map', 'pin:unpin', 'area:remove', 'ioas:unmap']);
  const area = only(events, 'area')[0]!;
  assert.deepEqual([area.ioas, area.iova, area.last], [ioas, MOCK.APERTURE_START, MOCK.APERTURE_START + 8191n]);
});

test('vIOMMU invalidations, vEVENTs and event-queue fds are reported', () => {
  const { fd, events } = recorded();
  const ids = viommuDemo(fd);
  const inv = encode(S.iommu_viommu_invalidate_selftest, { flags: 0, vdev_id: 0x42, cache_id: 1 });
  fd.hwptInvalidate(ids.viommu, MOCK.VIOMMU_INVALIDATE_DATA_SELFTEST, inv.length, [inv]);
  fd.closeFd(ids.veventqFd);
  assert.deepEqual(only(events, 'invalidate').map((e) => [e.target, e.id, e.entries, e.handled, e.errno]),
    [['viommu', ids.viommu, 1, 1, undefined]]);
  assert.deepEqual(only(events, 'vevent').map((e) => [e.viommu, e.veventq, e.sequence, e.lost]), [[ids.viommu, ids.veventq, 0, false]]);
  assert.deepEqual(only(events, 'fd').map((e) => [e.op, e.file, e.obj]),
    [['open', '[iommufd-viommu-event]', ids.veventq], ['close', '[iommufd-viommu-event]', ids.veventq]]);
});

test('a failing check is reported with its reason; the errno stays the kernel\'s and the message carries the ioctl', () => {
  const { fd, events } = recorded();
  const ids = viommuDemo(fd);
  let err: unknown;
  try {
    fd.destroy(ids.viommu);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof IommufdError);
  assert.equal(err.code, 'EBUSY');
  assert.equal(err.errno, 16);
  assert.match(err.message, new RegExp(`^EBUSY: DESTROY: VIOMMU ${ids.viommu} is in use: held by VDEVICE ${ids.vdev} \\(viommu\\)`));
  const fails = only(events, 'fail');
  assert.equal(fails.at(-1)!.errno, 'EBUSY');
  assert.equal(fails.at(-1)!.op, 'DESTROY');
  const io = only(events, 'ioctl').at(-1)!;
  assert.deepEqual([io.name, io.errno, io.typed], ['DESTROY', 'EBUSY', true]);
  assert.match(io.reason!, /^DESTROY: VIOMMU \d+ is in use/);
});

test('the raw entry reports the caller\'s struct before and after; the --trace printer is a subscriber', () => {
  const emu = new Emulator();
  const lines: string[] = [];
  new TracePrinter((l) => lines.push(l)).attach(emu);
  const mem = new SimMemory();
  const ctx = emu.open(mem);
  const arg = mem.alloc(64);
  mem.write(arg, encode(S.iommu_ioas_alloc, { size: 12, flags: 0, out_ioas_id: 0 }));
  const caller = { mem, fds: { install: () => 0, lookup: () => undefined, close: () => {} }, tid: 77 };
  const IOAS_ALLOC = emu.byName.get('IOAS_ALLOC')!.request;
  ctx.ioctl(IOAS_ALLOC, arg, caller);
  mem.write(arg, encode(S.iommu_ioas_alloc, { size: 12, flags: 1, out_ioas_id: 0 }));
  assert.throws(() => ctx.ioctl(IOAS_ALLOC, arg, caller), isErrno);
  assert.equal(lines.length, 2);
  assert.equal(lines[0], `[${mem.process.pid}:77] IOMMU_IOAS_ALLOC {flags=0} = 0 -> {out_ioas_id=1}`);
  // After a failure the failing check's reason follows, naming the ioctl.
  assert.match(lines[1]!, new RegExp(`^\\[${mem.process.pid}:77\\] IOMMU_IOAS_ALLOC \\{flags=0x1\\} = EOPNOTSUPP( {2}\\(IOAS_ALLOC: .+\\))?$`));
});

test('lookups count as short-term users while the call runs, and only then', () => {
  const { fd, emu } = recorded();
  const ids = viommuDemo(fd);
  const viommu = fd.ctx.objects.get(ids.viommu, 0);
  let seen = -1;
  const stop = emu.bus.subscribe((e) => {
    if (e.t === 'obj' && e.op === 'alloc' && e.kind === 'VDEVICE') seen = viommu.shortUsers;
  });
  const { idevId } = fd.mockDomain(fd.ioasAlloc());
  fd.vdeviceAlloc(ids.viommu, idevId, 0x43n);
  stop();
  assert.equal(seen, 1); // VDEVICE_ALLOC had looked the vIOMMU up when it reserved the vDEVICE's ID
  assert.equal(viommu.shortUsers, 0);
});

test('the typed API\'s error names the ioctl and the failing check (HWPT_ALLOC on a parent that is not a nest parent)', () => {
  const { fd, events } = recorded();
  const ioas = fd.ioasAlloc();
  const { idevId } = fd.mockDomain(ioas);
  const plain = fd.hwptAlloc({ devId: idevId, ptId: ioas });
  const data = encode(S.iommu_hwpt_selftest, { iotlb: MOCK.IOTLB_DEFAULT, pagetable_type: 0 });
  assert.throws(() => fd.hwptAlloc({ devId: idevId, ptId: plain, dataType: MOCK.HWPT_DATA_SELFTEST, data }),
    (e) => isErrno(e, 'EINVAL') && e.message === 'EINVAL: HWPT_ALLOC: pt_id is not a nest parent');
  assert.deepEqual(only(events, 'fail').map((e) => [e.op, e.errno, e.reason]), [['HWPT_ALLOC', 'EINVAL', 'pt_id is not a nest parent']]);
  // A lookup miss says what was looked for.
  assert.throws(() => fd.destroy(99), (e) => isErrno(e, 'ENOENT') && e.message === 'ENOENT: DESTROY: no object 99');
});
