import assert from 'node:assert/strict';
import test from 'node:test';
import {
  destroy, errno, faultAlloc, hwptAlloc, hwptAllocArgs, ioasAlloc, mapFixed, mockDomain, raw, rawTry, selftestData,
  setup, testCmd, testCmdTry, type T,
} from '../drivers/mock/test_helpers.js';
import { HWPT_ALLOC, MOCK, TEST_OP } from '../uapi/enums.js';
import { encode } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import { MockAmdv1Domain } from '../drivers/mock/amdv1.js';
import type { HwptPaging } from './hwpt.js';
import { ObjType } from './object.js';

const NEST = HWPT_ALLOC.NEST_PARENT;

function fixture(profile: '6.12' | 'mainline' = 'mainline'): T & { ioas: number; dev: number; stdev: number; autoHwpt: number } {
  const t = setup(profile);
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  return Object.assign(t, { ioas, dev: md.idevId, stdev: md.stdevId, autoHwpt: md.hwptId });
}

function allocErr(t: T, a: Parameters<typeof hwptAllocArgs>[1], extra: Record<string, unknown> = {}) {
  return rawTry(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, { ...hwptAllocArgs(t, a), ...extra }).err?.code ?? null;
}

test('HWPT_ALLOC prologue: reserved word, data type/len pairing, device and pt lookups, in order', () => {
  const t = fixture();
  assert.equal(allocErr(t, { devId: 99, ptId: 99 }, { __reserved: 1 }), 'EOPNOTSUPP');
  assert.equal(allocErr(t, { devId: 99, ptId: t.ioas, dataType: 0, dataLen: 4 }), 'EINVAL');
  assert.equal(allocErr(t, { devId: 99, ptId: t.ioas, dataType: MOCK.HWPT_DATA_SELFTEST, dataLen: 0 }), 'EINVAL');
  assert.equal(allocErr(t, { devId: 99, ptId: t.ioas }), 'ENOENT');
  assert.equal(allocErr(t, { devId: t.ioas, ptId: t.ioas }), 'ENOENT'); // dev_id of the wrong type
  assert.equal(allocErr(t, { devId: t.dev, ptId: 99 }), 'EINVAL'); // missing pt: EINVAL, not ENOENT
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.dev }), 'EINVAL'); // a DEVICE is no page-table parent
  // __reserved2 is not checked.
  const id = raw(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, { dev_id: t.dev, pt_id: t.ioas, __reserved2: 7 }).out_hwpt_id;
  assert.equal(id, 5);
});

test('HWPT_ALLOC on an IOAS: flag checks (mainline)', () => {
  const t = fixture();
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, flags: 1 << 20 }), 'EOPNOTSUPP');
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, flags: HWPT_ALLOC.FAULT_ID_VALID | NEST }), 'EOPNOTSUPP');
  const nd = mockDomain(t, t.ioas, MOCK.FLAGS_DEVICE_NO_DIRTY);
  assert.equal(allocErr(t, { devId: nd.idevId, ptId: t.ioas, flags: HWPT_ALLOC.DIRTY_TRACKING }), 'EOPNOTSUPP');
  // Failures leave no object: the next ID is the lowest free one.
  const id = hwptAlloc(t, { devId: t.dev, ptId: t.ioas, flags: HWPT_ALLOC.PASID | HWPT_ALLOC.DIRTY_TRACKING | NEST });
  assert.equal(id, 7);
});

test('HWPT_ALLOC on an IOAS: 6.12 rejects the PASID flag and any paging driver data', () => {
  const t = fixture('6.12');
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, flags: HWPT_ALLOC.PASID }), 'EOPNOTSUPP');
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t) }), 'EOPNOTSUPP');
  assert.equal(hwptAlloc(t, { devId: t.dev, ptId: t.ioas, flags: NEST | HWPT_ALLOC.DIRTY_TRACKING }), 5);
});

test('HWPT_ALLOC on an IOAS: mainline (gen B) paging data selects the page-table type', () => {
  const t = fixture();
  const data = (pt: number) => encode(S.iommu_hwpt_selftest, { iotlb: 0, pagetable_type: pt });
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, dataType: 0xbeef, data: data(0) }), 'EOPNOTSUPP');
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, dataType: MOCK.HWPT_DATA_SELFTEST, data: data(2) }), 'EOPNOTSUPP');
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, dataType: MOCK.HWPT_DATA_SELFTEST, data: data(0).subarray(0, 3) }), 'EINVAL');
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, dataType: MOCK.HWPT_DATA_SELFTEST, dataLen: 8, dataUptr: 0n }), 'EFAULT');
  const id = hwptAlloc(t, { devId: t.dev, ptId: t.ioas, dataType: MOCK.HWPT_DATA_SELFTEST, data: data(0) });
  assert.equal(id, 5);
});

test('a 24-byte HWPT_ALLOC (v6.6 layout) is accepted: no data, no fault', () => {
  const t = fixture();
  const out = raw(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, { dev_id: t.dev, pt_id: t.ioas }, 24);
  assert.equal(out.out_hwpt_id, 5);
  assert.equal(rawTry(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, { dev_id: t.dev, pt_id: t.ioas }, 23).err?.code, 'EINVAL');
});

for (const profile of ['6.12', 'mainline'] as const) {
  test(`nested HWPT_ALLOC check order (${profile})`, () => {
    const t = fixture(profile);
    const plain = hwptAlloc(t, { devId: t.dev, ptId: t.ioas });
    const parent = hwptAlloc(t, { devId: t.dev, ptId: t.ioas, flags: NEST });
    const d = selftestData(t);
    const ds = MOCK.HWPT_DATA_SELFTEST;
    assert.equal(allocErr(t, { devId: t.dev, ptId: parent, flags: HWPT_ALLOC.DIRTY_TRACKING, dataType: ds, data: d }), 'EOPNOTSUPP');
    assert.equal(allocErr(t, { devId: t.dev, ptId: parent }), 'EOPNOTSUPP'); // no data
    assert.equal(allocErr(t, { devId: t.dev, ptId: t.autoHwpt, dataType: ds, data: d }), 'EINVAL'); // auto-domain parent
    assert.equal(allocErr(t, { devId: t.dev, ptId: plain, dataType: ds, data: d }), 'EINVAL'); // not NEST_PARENT
    assert.equal(allocErr(t, { devId: t.dev, ptId: parent, dataType: 0xdeaf, data: d }), 'EOPNOTSUPP');
    assert.equal(allocErr(t, { devId: t.dev, ptId: parent, dataType: ds, data: d.subarray(0, 3) }), 'EINVAL');
    const long = new Uint8Array(d.length + 1);
    assert.equal(allocErr(t, { devId: t.dev, ptId: parent, dataType: ds, data: long }), 'EINVAL');
    assert.equal(allocErr(t, { devId: t.dev, ptId: parent, dataType: ds, dataLen: d.length, dataUptr: 0n }), 'EFAULT');
    const pasidErr = allocErr(t, { devId: t.dev, ptId: parent, flags: HWPT_ALLOC.PASID, dataType: ds, data: d });
    assert.equal(pasidErr, profile === '6.12' ? 'EOPNOTSUPP' : null);
    const nested = hwptAlloc(t, { devId: t.dev, ptId: parent, dataType: ds, data: d });
    assert.equal(nested, profile === '6.12' ? 7 : 8);
    testCmd(t, TEST_OP.MD_CHECK_IOTLB, nested, { id: 0, iotlb: MOCK.IOTLB_DEFAULT });
    testCmd(t, TEST_OP.MD_CHECK_IOTLB, nested, { id: 3, iotlb: MOCK.IOTLB_DEFAULT });
    // The nested HWPT holds its parent; the parent holds its IOAS.
    assert.throws(() => destroy(t, parent), errno('EBUSY'));
    assert.throws(() => destroy(t, t.ioas), errno('EBUSY'));
    destroy(t, nested);
    if (profile === 'mainline') destroy(t, nested - 1);
    destroy(t, parent);
    destroy(t, plain);
  });
}

test('HWPT_ALLOC with FAULT_ID_VALID: missing fault -> ENOENT and the HWPT is discarded', () => {
  const t = fixture();
  const F = HWPT_ALLOC.FAULT_ID_VALID;
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, flags: F, faultId: 77 }), 'ENOENT');
  assert.equal(allocErr(t, { devId: t.dev, ptId: t.ioas, flags: F, faultId: t.ioas }), 'ENOENT');
  const { faultId, faultFd } = faultAlloc(t);
  assert.equal(faultId, 5);
  const id = hwptAlloc(t, { devId: t.dev, ptId: t.ioas, flags: F, faultId });
  assert.equal(id, 6);
  t.caller.fds.close(faultFd);
  assert.throws(() => destroy(t, faultId), errno('EBUSY')); // the HWPT holds the FAULT
  destroy(t, id);
  destroy(t, faultId);
});

test('HWPT_ALLOC copy-back fault discards the HWPT', () => {
  const t = fixture();
  const addr = t.mem.alloc(48);
  t.mem.write(addr, encode(S.iommu_hwpt_alloc, { size: 48, dev_id: t.dev, pt_id: t.ioas }));
  t.mem.mprotect(addr, 4096, 1);
  assert.throws(() => t.ctx.ioctl((0x3b << 8) | 0x89, addr, t.caller), errno('EFAULT'));
  assert.equal(hwptAlloc(t, { devId: t.dev, ptId: t.ioas }), 5);
});

test('a paging HWPT is filled from the IOAS and reserves outside the mock aperture', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  // A mapping outside the aperture makes any mock domain fail with EADDRINUSE.
  const ioas2 = ioasAlloc(t);
  mapFixed(t, ioas2, 0x1000n, 4096);
  assert.throws(() => mockDomain(t, ioas2), errno('EADDRINUSE'));
  const md = mockDomain(t, ioas);
  assert.equal(md.stdevId, 3); // the failed attempt freed its IDs
  const va = mapFixed(t, ioas, 1n << 24n, 8192);
  const id = hwptAlloc(t, { devId: md.idevId, ptId: ioas });
  testCmd(t, TEST_OP.MD_CHECK_MAP, id, { iova: 1n << 24n, length: 8192n, uptr: va });
  assert.throws(() => hwptAlloc(t, { devId: md.idevId, ptId: ioas2 }), errno('EADDRINUSE'));
});

// ---- dirty tracking ----------------------------------------------------------------------

function dirtyFixture(profile: '6.12' | 'mainline' = 'mainline') {
  const t = fixture(profile);
  const hwpt = hwptAlloc(t, { devId: t.dev, ptId: t.ioas, flags: HWPT_ALLOC.DIRTY_TRACKING });
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, t.stdev, { pt_id: hwpt });
  return Object.assign(t, { hwpt });
}

const setDirty = (t: T, hwptId: number, flags: number, extra = {}) =>
  rawTry(t, 'HWPT_SET_DIRTY_TRACKING', S.iommu_hwpt_set_dirty_tracking, { hwpt_id: hwptId, flags, ...extra }).err?.code ?? null;

test('SET_DIRTY_TRACKING check order', () => {
  const t = dirtyFixture();
  assert.equal(setDirty(t, 99, 2), 'EOPNOTSUPP');
  assert.equal(setDirty(t, 99, 1), 'ENOENT');
  assert.equal(setDirty(t, t.ioas, 1), 'ENOENT');
  const plain = hwptAlloc(t, { devId: t.dev, ptId: t.ioas });
  assert.equal(setDirty(t, plain, 1), 'EOPNOTSUPP');
  assert.equal(setDirty(t, plain, 0), 'EOPNOTSUPP');
  assert.equal(setDirty(t, t.hwpt, 1, { __reserved: 5 }), null); // __reserved is not checked
  assert.equal(setDirty(t, t.hwpt, 1), null);
  assert.equal(setDirty(t, t.hwpt, 0), null);
  // A NO_DIRTY device cannot attach to a domain with dirty ops.
  assert.throws(() => mockDomain(t, t.hwpt, MOCK.FLAGS_DEVICE_NO_DIRTY), errno('EINVAL'));
});

function bitmap(t: T, hwptId: number, iova: bigint, length: bigint, pageSize: bigint, flags = 0, extra = {}) {
  const nbits = pageSize ? Number(length / pageSize) : 1;
  const data = t.mem.alloc(Math.max(8, Math.ceil(nbits / 64) * 8));
  const r = rawTry(t, 'HWPT_GET_DIRTY_BITMAP', S.iommu_hwpt_get_dirty_bitmap,
    { hwpt_id: hwptId, flags, iova, length, page_size: pageSize, data, ...extra });
  const bytes = t.mem.read(data, Math.max(8, Math.ceil(nbits / 64) * 8));
  const bits: number[] = [];
  for (let i = 0; i < nbits; i++) if (bytes[i >> 3]! & (1 << (i & 7))) bits.push(i);
  return { err: r.err?.code ?? null, bits };
}

test('GET_DIRTY_BITMAP check order', () => {
  const t = dirtyFixture();
  const base = 1n << 24n;
  assert.equal(bitmap(t, t.hwpt, base, 4096n, 4096n, 2).err, 'EOPNOTSUPP');
  assert.equal(bitmap(t, t.hwpt, base, 4096n, 4096n, 0, { __reserved: 1 }).err, 'EOPNOTSUPP');
  assert.equal(bitmap(t, 99, base, 4096n, 4096n).err, 'ENOENT');
  assert.equal(bitmap(t, t.hwpt, (1n << 64n) - 4096n, 8192n, 4096n).err, 'EOVERFLOW');
  assert.equal(bitmap(t, t.hwpt, 4096n, 0n, 4096n).err, 'EOVERFLOW'); // length 0 with iova != 0
  assert.equal(bitmap(t, t.hwpt, base + 1024n, 4096n, 4096n).err, 'EINVAL'); // IOAS alignment (2048)
  assert.equal(bitmap(t, t.hwpt, base, 4096n, 0n).err, 'EINVAL');
  assert.equal(bitmap(t, t.hwpt, base + 2048n, 4096n, 4096n).err, 'EINVAL'); // page_size alignment
  const plain = hwptAlloc(t, { devId: t.dev, ptId: t.ioas });
  assert.equal(bitmap(t, plain, base, 4096n, 4096n).err, 'EOPNOTSUPP');
  // An unusable bitmap buffer fails the bitmap allocation with ENOMEM.
  assert.equal(rawTry(t, 'HWPT_GET_DIRTY_BITMAP', S.iommu_hwpt_get_dirty_bitmap,
    { hwpt_id: t.hwpt, iova: base, length: 4096n, page_size: 4096n, data: 0n }).err?.code, 'ENOMEM');
});

for (const profile of ['6.12', 'mainline'] as const) {
  test(`dirty tracking round trip: DIRTY marks, bitmap reads and clears, NO_CLEAR keeps (${profile})`, () => {
    const t = dirtyFixture(profile);
    const base = 1n << 24n;
    const len = 64n * 1024n;
    mapFixed(t, t.ioas, base, Number(len));
    assert.equal(setDirty(t, t.hwpt, 1), null);
    // Mark every other 4 KiB page dirty (through its first mock page: DIRTY at the mock page size,
    // the only one 6.12's op handles as meant).
    const ps = 4096n;
    const mps = 2048n;
    const n = Number(len / ps);
    const bm = t.mem.alloc(8);
    const bytes = new Uint8Array(8);
    for (let i = 0; i < n; i += 2) bytes[(2 * i) >> 3]! |= 1 << ((2 * i) & 7);
    t.mem.write(bm, bytes);
    const r = testCmd(t, TEST_OP.DIRTY, t.hwpt, { iova: base, length: len, page_size: mps, uptr: bm });
    assert.equal(r.out_nr_dirty, BigInt(n / 2));
    // Gen A: one entry per 2 KiB; gen B (AMDv1): an entry is dirty as a whole, so every page of
    // an entry holding a marked item reads back dirty.
    let want = [...Array(n).keys()].filter((i) => i % 2 === 0);
    const d = (t.ctx.objects.find(t.hwpt, ObjType.HWPT_PAGING) as HwptPaging).domain;
    if (d instanceof MockAmdv1Domain) {
      const leaves = d.leaves();
      const leafOf = (iova: bigint) => leaves.find((l) => l.iova <= iova && iova < l.iova + l.size)!;
      const hot = new Set(want.map((i) => leafOf(base + BigInt(i) * ps)));
      want = [...Array(n).keys()].filter((i) => hot.has(leafOf(base + BigInt(i) * ps)));
    }
    assert.deepEqual(bitmap(t, t.hwpt, base, len, ps, 1).bits, want); // NO_CLEAR
    assert.deepEqual(bitmap(t, t.hwpt, base, len, ps).bits, want);
    assert.deepEqual(bitmap(t, t.hwpt, base, len, ps).bits, []); // cleared
    // Re-enabling starts from a clean snapshot.
    testCmd(t, TEST_OP.DIRTY, t.hwpt, { iova: base, length: len, page_size: mps, uptr: bm });
    assert.equal(setDirty(t, t.hwpt, 1), null);
    assert.deepEqual(bitmap(t, t.hwpt, base, len, ps).bits, []);
    // Disabled: DIRTY is refused and the bitmap read still returns 0 with nothing set.
    assert.equal(setDirty(t, t.hwpt, 0), null);
    assert.throws(() => testCmd(t, TEST_OP.DIRTY, t.hwpt, { iova: base, length: len, page_size: ps, uptr: bm }), errno('EINVAL'));
    assert.deepEqual(bitmap(t, t.hwpt, base, len, ps), { err: null, bits: [] });
  });
}

// ---- HWPT_INVALIDATE -----------------------------------------------------------------------

function invalidate(t: T, hwptId: number, entries: { flags: number; iotlb_id: number }[], o: {
  dataType?: number; entryLen?: number; entryNum?: number; uptr?: bigint; reserved?: number;
} = {}) {
  const entryLen = o.entryLen ?? 8;
  let uptr = o.uptr;
  if (uptr === undefined) {
    uptr = t.mem.alloc(Math.max(1, entries.length) * entryLen + 8);
    entries.forEach((e, i) => t.mem.write(uptr! + BigInt(i * entryLen), encode(S.iommu_hwpt_invalidate_selftest, e)));
  }
  const r = rawTry(t, 'HWPT_INVALIDATE', S.iommu_hwpt_invalidate, {
    hwpt_id: hwptId, data_uptr: uptr, data_type: o.dataType ?? MOCK.HWPT_INVALIDATE_DATA_SELFTEST, entry_len: entryLen,
    entry_num: o.entryNum ?? entries.length, __reserved: o.reserved ?? 0,
  });
  return { err: r.err?.code ?? null, num: r.out.entry_num };
}

function nestedFixture(profile: '6.12' | 'mainline') {
  const t = fixture(profile);
  const parent = hwptAlloc(t, { devId: t.dev, ptId: t.ioas, flags: NEST });
  const nested = hwptAlloc(t, { devId: t.dev, ptId: parent, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t) });
  return Object.assign(t, { parent, nested });
}

const iotlb = (t: T, id: number, i: number, v: number) =>
  testCmdTry(t, TEST_OP.MD_CHECK_IOTLB, id, { id: i, iotlb: v }).err === null;

for (const profile of ['6.12', 'mainline'] as const) {
  test(`HWPT_INVALIDATE check order and entry_num copy-back (${profile})`, () => {
    const t = nestedFixture(profile);
    const e = { flags: 0, iotlb_id: 0 };
    assert.deepEqual(invalidate(t, t.nested, [e], { reserved: 1, entryNum: 1 }), { err: 'EOPNOTSUPP', num: 0 });
    assert.deepEqual(invalidate(t, t.nested, [e], { uptr: 0n }), { err: 'EINVAL', num: 0 });
    assert.deepEqual(invalidate(t, t.nested, [e], { entryLen: 0 }), { err: 'EINVAL', num: 0 });
    assert.deepEqual(invalidate(t, t.nested, [e], { entryLen: 4097 }), { err: 'EINVAL', num: 0 });
    assert.deepEqual(invalidate(t, t.nested, [e], { entryNum: (1 << 19) + 1 }), { err: 'EINVAL', num: 0 });
    assert.deepEqual(invalidate(t, 99, [e]), { err: 'ENOENT', num: 0 });
    // A paging HWPT: 6.12 only looks up nested HWPTs.
    assert.deepEqual(invalidate(t, t.parent, [e]), { err: profile === '6.12' ? 'ENOENT' : 'EINVAL', num: 0 });
    assert.deepEqual(invalidate(t, t.ioas, [e]), { err: profile === '6.12' ? 'ENOENT' : 'EINVAL', num: 0 });
    // Driver: type first (even for an empty array), then per entry.
    assert.deepEqual(invalidate(t, t.nested, [], { dataType: MOCK.HWPT_INVALIDATE_DATA_SELFTEST_INVALID }), { err: 'EINVAL', num: 0 });
    assert.deepEqual(invalidate(t, t.nested, []), { err: null, num: 0 });
    assert.deepEqual(invalidate(t, t.nested, [e], { entryLen: 9 }), { err: 'EINVAL', num: 0 });
    assert.deepEqual(invalidate(t, t.nested, [e], { entryLen: 1 }), { err: 'EINVAL', num: 0 });
    assert.deepEqual(invalidate(t, t.nested, [{ flags: 0xffffffff, iotlb_id: 0 }]), { err: 'EOPNOTSUPP', num: 0 });
    assert.deepEqual(invalidate(t, t.nested, [{ flags: 1, iotlb_id: 4 }]), { err: 'EINVAL', num: 0 }); // checked even with ALL
    assert.ok(iotlb(t, t.nested, 0, MOCK.IOTLB_DEFAULT));
    // Two entries, the second bad: the first takes effect, entry_num = 1.
    assert.deepEqual(invalidate(t, t.nested, [{ flags: 0, iotlb_id: 0 }, { flags: 0, iotlb_id: 4 }]), { err: 'EINVAL', num: 1 });
    assert.ok(iotlb(t, t.nested, 0, 0));
    assert.ok(iotlb(t, t.nested, 1, MOCK.IOTLB_DEFAULT));
    assert.deepEqual(invalidate(t, t.nested, [{ flags: 0, iotlb_id: 1 }, { flags: 0, iotlb_id: 2 }]), { err: null, num: 2 });
    assert.ok(iotlb(t, t.nested, 2, 0));
    assert.ok(iotlb(t, t.nested, 3, MOCK.IOTLB_DEFAULT));
    assert.deepEqual(invalidate(t, t.nested, [{ flags: 1, iotlb_id: 3 }]), { err: null, num: 1 });
    for (let i = 0; i < 4; i++) assert.ok(iotlb(t, t.nested, i, 0));
    // Unreadable entries: EFAULT at the first one.
    assert.deepEqual(invalidate(t, t.nested, [], { uptr: 0x10n, entryNum: 1 }), { err: 'EFAULT', num: 0 });
  });
}

test('the pt_id / hwpt_id type switches are open for other object types (the vIOMMU branch)', async () => {
  const { IommufdObject, ObjType: OT } = await import('./object.js');
  const { registerHwptAllocTarget, registerInvalidateTarget, hwptNestedAllocOnViommu } = await import('./hwpt.js');
  const { mockDriverOf } = await import('../drivers/mock/mock.js');
  const t = nestedFixture('mainline');
  // A stand-in object type nothing else registers.
  class Fake extends IommufdObject {
    readonly type = OT.VEVENTQ;
    destroy(): void {}
  }
  const v = t.ctx.allocObj(new Fake());
  t.ctx.objects.finalize(v);
  const d = selftestData(t);
  assert.equal(allocErr(t, { devId: t.dev, ptId: v.id, dataType: MOCK.HWPT_DATA_SELFTEST, data: d }), 'EINVAL');
  assert.deepEqual(invalidate(t, v.id, []), { err: 'EINVAL', num: 0 });
  const parentObj = t.ctx.objects.find(t.parent, OT.HWPT_PAGING) as import('./hwpt.js').HwptPaging;
  registerHwptAllocTarget(OT.VEVENTQ, (ctx, _idev, pt, flags, data) =>
    hwptNestedAllocOnViommu(ctx, pt, parentObj, flags, data, (_f, dd) => mockDriverOf(ctx.emu).allocNested(parentObj.domain, dd, pt)));
  registerInvalidateTarget(OT.VEVENTQ, (_ctx, _obj, req) => { req.handled = req.entryNum; });
  assert.equal(allocErr(t, { devId: t.dev, ptId: v.id, flags: HWPT_ALLOC.NEST_PARENT, dataType: MOCK.HWPT_DATA_SELFTEST, data: d }), 'EOPNOTSUPP');
  assert.equal(allocErr(t, { devId: t.dev, ptId: v.id }), 'EOPNOTSUPP'); // no data
  const id = hwptAlloc(t, { devId: t.dev, ptId: v.id, dataType: MOCK.HWPT_DATA_SELFTEST, data: d });
  assert.equal(v.users, 2, 'the nested HWPT holds its owner');
  assert.deepEqual(invalidate(t, v.id, [{ flags: 0, iotlb_id: 0 }, { flags: 0, iotlb_id: 1 }]), { err: null, num: 2 });
  destroy(t, id);
  assert.equal(v.users, 1);
});
