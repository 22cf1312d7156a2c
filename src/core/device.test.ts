import assert from 'node:assert/strict';
import test from 'node:test';
import {
  destroy, errno, hwptAlloc, ioasAlloc, iovaRanges, mapFixed, mockDomain, rawTry, selftestData, setup, testCmd,
  testCmdTry, type T,
} from '../drivers/mock/test_helpers.js';
import { HWPT_ALLOC, MOCK, TEST_OP } from '../uapi/enums.js';
import * as S from '../uapi/structs.js';
import { ObjType } from './object.js';

const APERTURE: [bigint, bigint] = [MOCK.APERTURE_START, MOCK.APERTURE_LAST];
const FULL: [bigint, bigint] = [0n, (1n << 64n) - 1n];

function ids(t: T): [number, string, number][] {
  return t.ctx.objects.all().map((o) => [o.id, ObjType[o.type], o.users]);
}

test('MOCK_DOMAIN consumes stdev, DEVICE, auto HWPT IDs in that order; DESTROY(stdev) undoes everything', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  assert.deepEqual(md, { stdevId: 2, idevId: 3, hwptId: 4 });
  // DEVICE: held by its binder and its attachment; auto HWPT: its attachment.
  assert.deepEqual(ids(t), [[1, 'IOAS', 2], [2, 'SELFTEST', 1], [3, 'DEVICE', 3], [4, 'HWPT_PAGING', 2]]);
  assert.deepEqual(iovaRanges(t, ioas), { ranges: [APERTURE], alignment: 2048n });
  assert.throws(() => destroy(t, md.idevId), errno('EBUSY'));
  assert.throws(() => destroy(t, md.hwptId), errno('EBUSY'));
  assert.throws(() => destroy(t, ioas), errno('EBUSY'));
  destroy(t, md.stdevId);
  assert.deepEqual(ids(t), [[1, 'IOAS', 1]]);
  assert.deepEqual(iovaRanges(t, ioas), { ranges: [FULL], alignment: 1n });
  destroy(t, ioas);
});

test('a second device on the same IOAS shares the auto-domain, which goes with its last attachment', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const a = mockDomain(t, ioas);
  const b = mockDomain(t, ioas);
  assert.deepEqual(b, { stdevId: 5, idevId: 6, hwptId: 4 });
  destroy(t, a.stdevId);
  assert.ok(t.ctx.objects.find(4, ObjType.HWPT_PAGING));
  destroy(t, b.stdevId);
  assert.equal(t.ctx.objects.find(4, ObjType.ANY), undefined);
  // IDs are reused lowest-first.
  assert.deepEqual(mockDomain(t, ioas), { stdevId: 2, idevId: 3, hwptId: 4 });
});

test('an auto-domain is picked only if compatible; manual HWPTs are never picked', () => {
  const t = setup('6.12');
  const ioas = ioasAlloc(t);
  const a = mockDomain(t, ioas);
  const manual = hwptAlloc(t, { devId: a.idevId, ptId: ioas, flags: HWPT_ALLOC.DIRTY_TRACKING });
  const b = mockDomain(t, ioas, MOCK.FLAGS_DEVICE_NO_DIRTY);
  assert.equal(b.hwptId, a.hwptId);
  const c = mockDomain(t, ioas, MOCK.FLAGS_DEVICE_HUGE_IOVA);
  assert.equal(c.hwptId, a.hwptId);
  assert.notEqual(c.hwptId, manual);
});

test('MOCK_DOMAIN errors leave no IDs behind', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  assert.throws(() => mockDomain(t, 99), errno('ENOENT'));
  assert.throws(() => mockDomain(t, ioas, 1 << 10), errno('EINVAL'));
  assert.throws(() => mockDomain(t, ioas, MOCK.FLAGS_DEVICE_HUGE_IOVA), errno('EINVAL')); // gen B
  const first = mockDomain(t, ioas);
  assert.throws(() => mockDomain(t, first.idevId), errno('EINVAL')); // a DEVICE is not attachable
  const dirty = hwptAlloc(t, { devId: first.idevId, ptId: ioas, flags: HWPT_ALLOC.DIRTY_TRACKING });
  assert.throws(() => mockDomain(t, dirty, MOCK.FLAGS_DEVICE_NO_DIRTY), errno('EINVAL'));
  assert.deepEqual(ids(t).map((x) => x[0]), [1, 2, 3, 4, 5]);
  assert.equal(mockDomain(t, dirty).stdevId, 6);
});

test('6.12 accepts HUGE_IOVA but not the (header-only) PASID device flag, as 6.12.117; 6.15 accepts PASID', () => {
  const t = setup('6.12');
  const ioas = ioasAlloc(t);
  mockDomain(t, ioas, MOCK.FLAGS_DEVICE_HUGE_IOVA);
  assert.throws(() => mockDomain(t, ioas, MOCK.FLAGS_DEVICE_PASID), errno('EINVAL'));
  assert.deepEqual(ids(t).map((x) => x[0]), [1, 2, 3, 4], 'the failed MOCK_DOMAIN left no ID behind');
  const t13 = setup('6.13');
  assert.throws(() => mockDomain(t13, ioasAlloc(t13), MOCK.FLAGS_DEVICE_PASID), errno('EINVAL'));
  const t15 = setup('6.15');
  mockDomain(t15, ioasAlloc(t15), MOCK.FLAGS_DEVICE_PASID);
});

test('attaching reserves the device regions; a reservation conflict fails with EADDRINUSE', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  mapFixed(t, ioas, 0x2000n, 4096);
  assert.throws(() => mockDomain(t, ioas), errno('EADDRINUSE'));
  assert.deepEqual(ids(t), [[1, 'IOAS', 1]]);
});

test('MOCK_DOMAIN_REPLACE: to a HWPT, to another IOAS (reservations move), back; errors change nothing', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const ioas2 = ioasAlloc(t);
  const md = mockDomain(t, ioas); // 3, 4, 5
  const replace = (pt: number) => testCmdTry(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: pt });
  assert.equal(replace(99).err?.code, 'ENOENT');
  assert.equal(replace(md.idevId).err?.code, 'EINVAL');
  assert.equal(testCmdTry(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.idevId, { pt_id: ioas }).err?.code, 'ENOENT');
  const h = hwptAlloc(t, { devId: md.idevId, ptId: ioas }); // 6
  assert.equal(replace(h).u.pt_id, h);
  assert.equal(t.ctx.objects.find(md.hwptId, ObjType.ANY), undefined, 'the old auto-domain went');
  assert.equal(replace(h).u.pt_id, h); // same HWPT: no-op
  const r = replace(ioas2);
  assert.equal(r.u.pt_id, md.hwptId); // a new auto-domain on ioas2 takes the lowest free ID
  assert.deepEqual(iovaRanges(t, ioas2).ranges, [APERTURE]);
  assert.deepEqual(iovaRanges(t, ioas).ranges, [APERTURE]); // h still holds its aperture reservation
  destroy(t, h);
  assert.deepEqual(iovaRanges(t, ioas).ranges, [FULL]);
  // A NO_DIRTY device cannot move onto a dirty-tracking domain; the old attachment stays.
  const nd = mockDomain(t, ioas2, MOCK.FLAGS_DEVICE_NO_DIRTY);
  const dirty = hwptAlloc(t, { devId: md.idevId, ptId: ioas2, flags: HWPT_ALLOC.DIRTY_TRACKING });
  assert.equal(testCmdTry(t, TEST_OP.MOCK_DOMAIN_REPLACE, nd.stdevId, { pt_id: dirty }).err?.code, 'EINVAL');
  assert.equal(nd.hwptId, md.hwptId);
  assert.equal(t.ctx.objects.find(md.hwptId, ObjType.HWPT_PAGING)!.users, 3);
});

test('a replace onto an IOAS whose mappings sit outside the aperture fails and keeps the old domain', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const bad = ioasAlloc(t);
  mapFixed(t, bad, 0x1000n, 4096);
  const md = mockDomain(t, ioas);
  const r = testCmdTry(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: bad });
  assert.equal(r.err?.code, 'EADDRINUSE');
  assert.deepEqual(ids(t), [[1, 'IOAS', 2], [2, 'IOAS', 1], [3, 'SELFTEST', 1], [4, 'DEVICE', 3], [5, 'HWPT_PAGING', 2]]);
});

// ---- GET_HW_INFO ---------------------------------------------------------------------------

function hwInfo(t: T, devId: number, o: { flags?: number; dataLen?: number; inType?: number; reserved?: number[]; size?: number } = {}) {
  const len = o.dataLen ?? 8;
  const uptr = t.mem.alloc(64);
  t.mem.write(uptr, new Uint8Array(64).fill(0xaa));
  const r = rawTry(t, 'GET_HW_INFO', S.iommu_hw_info, {
    flags: o.flags ?? 0, dev_id: devId, data_len: len, data_uptr: uptr, out_data_type: o.inType ?? 0,
    __reserved: o.reserved ?? [0, 0, 0], out_capabilities: 0xffn,
  }, o.size);
  return { err: r.err?.code ?? null, out: r.out, data: t.mem.read(uptr, 16) };
}

test('GET_HW_INFO check order and payload', () => {
  const t = setup();
  const md = mockDomain(t, ioasAlloc(t));
  assert.equal(hwInfo(t, 99, { flags: 2 }).err, 'EOPNOTSUPP');
  assert.equal(hwInfo(t, 99, { reserved: [0, 1, 0] }).err, 'EOPNOTSUPP');
  assert.equal(hwInfo(t, 99).err, 'ENOENT');
  assert.equal(hwInfo(t, md.stdevId).err, 'ENOENT');
  assert.equal(hwInfo(t, md.idevId, { flags: 1, inType: 0xfeedbef0 }).err, 'EOPNOTSUPP');
  // Without INPUT_TYPE the input type is ignored.
  const r = hwInfo(t, md.idevId, { inType: 0xfeedbef0, dataLen: 12 });
  assert.equal(r.err, null);
  assert.equal(r.out.out_data_type, MOCK.HW_INFO_TYPE_SELFTEST);
  assert.equal(r.out.data_len, 8);
  const dv = new DataView(r.data.buffer);
  assert.equal(dv.getUint32(0, true), 0);
  assert.equal(dv.getUint32(4, true), MOCK.HW_INFO_SELFTEST_REGVAL);
  assert.equal(dv.getUint32(8, true), 0, 'the rest of a larger buffer is zeroed');
  assert.equal(r.data[12], 0xaa, 'nothing past data_len is written');
  assert.equal(r.out.out_capabilities, 0x9n); // DIRTY_TRACKING | PCI_ATS_NOT_SUPPORTED
  assert.equal(r.out.out_max_pasid_log2, 0);
  // Short buffer: truncated, data_len still the full length; 0 = pure query.
  const s = hwInfo(t, md.idevId, { dataLen: 4 });
  assert.equal(s.out.data_len, 8);
  assert.equal(s.data[4], 0xaa);
  const q = hwInfo(t, md.idevId, { dataLen: 0 });
  assert.equal(q.out.data_len, 8);
  assert.equal(q.data[0], 0xaa);
  assert.equal(hwInfo(t, md.idevId, { flags: 1, inType: MOCK.HW_INFO_TYPE_SELFTEST }).err, null);
  // A 32-byte caller does not get out_capabilities.
  const short = rawTry(t, 'GET_HW_INFO', S.iommu_hw_info, { dev_id: md.idevId }, 32);
  assert.equal(short.err, null);
  assert.deepEqual([...t.mem.read(short.addr + 32n, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
  const nd = mockDomain(t, 1, MOCK.FLAGS_DEVICE_NO_DIRTY);
  assert.equal(hwInfo(t, nd.idevId).out.out_capabilities, 0x8n);
  const pd = mockDomain(t, 1, MOCK.FLAGS_DEVICE_PASID);
  assert.equal(hwInfo(t, pd.idevId).out.out_max_pasid_log2, 20);
  // Unreadable data buffer.
  assert.equal(rawTry(t, 'GET_HW_INFO', S.iommu_hw_info, { dev_id: md.idevId, data_len: 8, data_uptr: 0x10n }).err?.code, 'EFAULT');
});

test('GET_HW_INFO on 6.12: no ATS bit, and any flag (the header-only INPUT_TYPE too) is EOPNOTSUPP', () => {
  const t = setup('6.12');
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  assert.equal(hwInfo(t, md.idevId).out.out_capabilities, 0x1n);
  assert.equal(hwInfo(t, md.idevId).out.out_max_pasid_log2, 0);
  assert.equal(hwInfo(t, mockDomain(t, ioas, MOCK.FLAGS_DEVICE_NO_DIRTY).idevId).out.out_capabilities, 0n);
  assert.equal(hwInfo(t, md.idevId, { flags: 1, inType: MOCK.HW_INFO_TYPE_SELFTEST }).err, 'EOPNOTSUPP');
  assert.equal(hwInfo(t, md.idevId, { flags: 1, inType: 0 }).err, 'EOPNOTSUPP');
  // The flag check comes before the device lookup.
  assert.equal(hwInfo(t, 99, { flags: 1 }).err, 'EOPNOTSUPP');
  const t13 = setup('6.13');
  const d13 = mockDomain(t13, ioasAlloc(t13));
  assert.equal(hwInfo(t13, d13.idevId, { flags: 1 }).err, 'EOPNOTSUPP');
});

// ---- PASID ------------------------------------------------------------------------------------

function pasidFixture() {
  const t = setup();
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas, MOCK.FLAGS_DEVICE_PASID);
  const pasidHwpt = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.PASID });
  const plainHwpt = hwptAlloc(t, { devId: md.idevId, ptId: ioas });
  return Object.assign(t, { ioas, md, pasidHwpt, plainHwpt });
}

const pasidOp = (t: T, op: number, stdev: number, pasid: number, ptId = 0) =>
  testCmdTry(t, op, stdev, { pasid, pt_id: ptId });
const check = (t: T, stdev: number, pasid: number, hwptId: number) =>
  testCmdTry(t, TEST_OP.PASID_CHECK_HWPT, stdev, { pasid, hwpt_id: hwptId }).err?.code ?? null;

test('PASID attach rules: PASID-capable HWPTs, range, no IOAS', () => {
  const t = pasidFixture();
  const s = t.md.stdevId;
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, 99, 100, t.pasidHwpt).err?.code, 'ENOENT');
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, s, 100, t.ioas).err?.code, 'EINVAL'); // auto-domains are not PASID-capable
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, s, 100, t.plainHwpt).err?.code, 'EINVAL');
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, s, 1 << 20, t.pasidHwpt).err?.code, 'EINVAL');
  // The RID is on a non-PASID auto-domain: PASID attach is refused.
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, s, 100, t.pasidHwpt).err?.code, 'EINVAL');
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, s, { pt_id: t.pasidHwpt });
  assert.equal(check(t, s, 100, 0), null);
  const r = pasidOp(t, TEST_OP.PASID_ATTACH, s, 100, t.pasidHwpt);
  assert.equal(r.err, null);
  assert.equal(r.u.pt_id, t.pasidHwpt);
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, s, 100, t.pasidHwpt).err?.code, 'EBUSY');
  assert.equal(check(t, s, 100, t.pasidHwpt), null);
  assert.equal(check(t, s, 100, 0), 'EINVAL');
  assert.equal(check(t, s, 100, t.plainHwpt), 'EINVAL');
  assert.equal(check(t, s, 100, t.ioas), 'EINVAL');
  assert.equal(check(t, s, 100, 99), 'ENOENT');
  // With a PASID attached the RID must stay on a PASID-capable HWPT.
  assert.equal(testCmdTry(t, TEST_OP.MOCK_DOMAIN_REPLACE, s, { pt_id: t.plainHwpt }).err?.code, 'EINVAL');
  assert.throws(() => destroy(t, t.pasidHwpt), errno('EBUSY'));
  assert.equal(pasidOp(t, TEST_OP.PASID_DETACH, s, 100).err, null);
  assert.equal(pasidOp(t, TEST_OP.PASID_DETACH, s, 100).err, null); // nothing attached: still 0
  assert.equal(check(t, s, 100, 0), null);
  // A device without PASID support: 7.3.4 refuses the attach (EINVAL, seen on the real kernel with its RID on a
  // PASID-capable HWPT, or detached); 6.17's core skipped such devices in its PASID validation and succeeded.
  const plain = mockDomain(t, t.pasidHwpt);
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, plain.stdevId, 1, t.pasidHwpt).err?.code, 'EINVAL');
  assert.equal(pasidOp(t, TEST_OP.PASID_DETACH, plain.stdevId, 0).err, null);
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, plain.stdevId, 1, t.pasidHwpt).err?.code, 'EINVAL');
  const t17 = setup('6.17');
  const ioas17 = ioasAlloc(t17);
  const dev17 = mockDomain(t17, ioas17, MOCK.FLAGS_DEVICE_PASID);
  const hwpt17 = hwptAlloc(t17, { devId: dev17.idevId, ptId: ioas17, flags: HWPT_ALLOC.PASID });
  const plain17 = mockDomain(t17, hwpt17);
  assert.equal(pasidOp(t17, TEST_OP.PASID_ATTACH, plain17.stdevId, 1 << 20, hwpt17).err, null);
  assert.equal(check(t17, plain17.stdevId, 1 << 20, hwpt17), null);
});

test('PASID 1024: the second attach fails once and the core keeps the old attachment', () => {
  const t = pasidFixture();
  const s = t.md.stdevId;
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, s, { pt_id: t.pasidHwpt });
  const other = hwptAlloc(t, { devId: t.md.idevId, ptId: t.ioas, flags: HWPT_ALLOC.PASID });
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, s, 1024, t.pasidHwpt).err, null);
  assert.equal(pasidOp(t, TEST_OP.PASID_REPLACE, s, 1024, other).err?.code, 'ENOMEM');
  assert.equal(check(t, s, 1024, t.pasidHwpt), null);
  const r = pasidOp(t, TEST_OP.PASID_REPLACE, s, 1024, other);
  assert.equal(r.err, null);
  assert.equal(r.u.pt_id, other);
  assert.equal(check(t, s, 1024, other), null);
  assert.equal(pasidOp(t, TEST_OP.PASID_REPLACE, s, 200, other).err?.code, 'EINVAL'); // not attached
  // Destroying the stdev with a PASID still attached cleans up everything.
  destroy(t, s);
  destroy(t, other);
  destroy(t, t.pasidHwpt);
  destroy(t, t.plainHwpt);
  destroy(t, t.ioas);
  assert.equal(t.ctx.objects.empty, true);
});

test('PASID ops do not exist on 6.12; DEV_CHECK_CACHE (6.13+) neither', () => {
  const t = setup('6.12');
  const md = mockDomain(t, ioasAlloc(t));
  assert.equal(pasidOp(t, TEST_OP.PASID_ATTACH, md.stdevId, 1, 1).err?.code, 'EOPNOTSUPP');
  assert.equal(testCmdTry(t, TEST_OP.DEV_CHECK_CACHE, md.idevId, { id: 0, cache: MOCK.DEV_CACHE_DEFAULT }).err?.code, 'EOPNOTSUPP');
});

test('nested HWPT attach reserves regions in the parent IOAS; context close tears everything down', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
  const nested = hwptAlloc(t, { devId: md.idevId, ptId: parent, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t) });
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: nested });
  assert.throws(() => destroy(t, nested), errno('EBUSY'));
  mapFixed(t, ioas, 1n << 24n, 4096);
  t.ctx.put();
  assert.equal(t.ctx.closed, true);
  assert.equal(t.ctx.objects.empty, true);
});

test('GET_HW_INFO with a huge data_len zeroes up to the first unwritable byte and fails with EFAULT', () => {
  const t = setup();
  const md = mockDomain(t, ioasAlloc(t));
  const buf = t.mem.mmap(8192);
  t.mem.write(buf, new Uint8Array(8192).fill(0xaa));
  const r = rawTry(t, 'GET_HW_INFO', S.iommu_hw_info, { dev_id: md.idevId, data_len: 0xffffffff, data_uptr: buf });
  assert.equal(r.err?.code, 'EFAULT');
  assert.equal(new DataView(t.mem.read(buf, 8).buffer).getUint32(4, true), MOCK.HW_INFO_SELFTEST_REGVAL);
  assert.deepEqual([...t.mem.read(buf + 8n, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
});

test('profile matrix: PASID devices, INPUT_TYPE and capabilities per ABI', () => {
  const cases = [
    { p: '6.13', pasid: false, input: false, caps: 0x1n },
    { p: '6.15', pasid: true, input: false, caps: 0x1n },
    { p: '6.17', pasid: true, input: true, caps: 0x1n },
    { p: 'viommu-v1', pasid: false, input: false, caps: 0x1n },
    { p: '6.12', pasid: false, input: false, caps: 0x1n },
    { p: 'mainline', pasid: true, input: true, caps: 0x9n },
  ] as const;
  for (const c of cases) {
    const t = setup(c.p);
    const ioas = ioasAlloc(t);
    const md = mockDomain(t, ioas);
    const r = testCmdTry(t, TEST_OP.MOCK_DOMAIN_FLAGS, ioas, { dev_flags: MOCK.FLAGS_DEVICE_PASID });
    assert.equal(r.err?.code ?? null, c.pasid ? null : 'EINVAL', c.p);
    assert.equal(hwInfo(t, md.idevId, { flags: 1, inType: MOCK.HW_INFO_TYPE_SELFTEST }).err, c.input ? null : 'EOPNOTSUPP', c.p);
    assert.equal(hwInfo(t, md.idevId).out.out_capabilities, c.caps, c.p);
    const pasidFlag = rawTry(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, { dev_id: md.idevId, pt_id: ioas, flags: HWPT_ALLOC.PASID });
    const hasPasidFlag = c.p === '6.15' || c.p === '6.17' || c.p === 'mainline';
    assert.equal(pasidFlag.err?.code ?? null, hasPasidFlag ? null : 'EOPNOTSUPP', c.p);
  }
});

// ---- devices with reserved regions / non-coherent devices (no uAPI to create them: bound directly) ----

test('bind: a non-coherent device -> EINVAL and no ID used; a real device holds the context until unbind', async () => {
  const { mockDriverOf, MockDevice } = await import('../drivers/mock/mock.js');
  const { deviceBind, deviceUnbind } = await import('./device.js');
  const t = setup();
  const drv = mockDriverOf(t.emu);
  const nc = Object.assign(new MockDevice(drv, 0), { coherent: false });
  assert.throws(() => deviceBind(t.ctx, nc), errno('EINVAL'));
  const idev = deviceBind(t.ctx, new MockDevice(drv, 0));
  assert.equal(idev.id, 1);
  t.ctx.put(); // the binding keeps the context open
  assert.equal(t.ctx.closed, false);
  deviceUnbind(idev);
  assert.equal(t.ctx.closed, true);
});

test('reserved regions: inserted on RID attach (EADDRINUSE on conflict), moved by replace, dropped on detach', async () => {
  const { mockDriverOf, MockDevice } = await import('../drivers/mock/mock.js');
  const { deviceAttach, deviceBind, deviceDetach, deviceReplace, deviceUnbind } = await import('./device.js');
  const t = setup();
  const drv = mockDriverOf(t.emu);
  class ResvDevice extends MockDevice {
    override reservedRegions(): readonly [bigint, bigint][] {
      return [[0x1000_0000n, 0x100f_ffffn]];
    }
  }
  const ioas = ioasAlloc(t);
  const ioas2 = ioasAlloc(t);
  const busy = ioasAlloc(t);
  mapFixed(t, busy, 0x1000_0000n, 4096);
  const idev = deviceBind(t.ctx, new ResvDevice(drv, 0), { mock: true });
  assert.throws(() => deviceAttach(idev, undefined, busy), errno('EADDRINUSE'));
  assert.equal(deviceAttach(idev, undefined, ioas), 5);
  const holes: [bigint, bigint][] = [[MOCK.APERTURE_START, 0x0fff_ffffn], [0x1010_0000n, MOCK.APERTURE_LAST]];
  assert.deepEqual(iovaRanges(t, ioas).ranges, holes);
  assert.throws(() => deviceReplace(idev, undefined, busy), errno('EADDRINUSE'));
  assert.deepEqual(iovaRanges(t, ioas).ranges, holes, 'a failed replace keeps the old reservations');
  assert.equal(deviceReplace(idev, undefined, ioas2), 6); // allocated before the old auto-domain goes
  assert.deepEqual(iovaRanges(t, ioas).ranges, [FULL]);
  assert.deepEqual(iovaRanges(t, ioas2).ranges, holes);
  deviceDetach(idev, undefined);
  assert.deepEqual(iovaRanges(t, ioas2).ranges, [FULL]);
  deviceUnbind(idev);
  assert.deepEqual(t.ctx.objects.all().map((o) => o.id), [1, 2, 3]);
});

test('drivers without hw_info report type NONE; a coherency-enforcing device needs a coherent domain', async () => {
  const { mockDriverOf, MockDevice } = await import('../drivers/mock/mock.js');
  const { deviceBind } = await import('./device.js');
  const t = setup();
  const drv = mockDriverOf(t.emu);
  const noInfo = Object.assign(Object.create(drv), { hwInfo: undefined, capEnforceCacheCoherency: () => true });
  const ioas = ioasAlloc(t);
  const idev = deviceBind(t.ctx, new MockDevice(noInfo, 0), { mock: true });
  const r = hwInfo(t, idev.id, { flags: 1, inType: 0x1234, dataLen: 8 });
  assert.equal(r.err, null);
  assert.equal(r.out.out_data_type, 0);
  assert.equal(r.out.data_len, 0);
  assert.deepEqual([...r.data.subarray(0, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.throws(() => hwptAlloc(t, { devId: idev.id, ptId: ioas }), errno('EINVAL'));
  assert.deepEqual(ids(t).map((x) => x[0]), [1, 2]);
});
