// The original vIOMMU series' ABI (profile 'viommu-v1', 02 §2): VIOMMU_ALLOC at
// 0x8f with the core-managed DEFAULT type, SET/UNSET_VDEV_ID (0x90/0x91, table
// entries that are not objects), VIOMMU_INVALIDATE (0x92); all on the raw entry.
import assert from 'node:assert/strict';
import test from 'node:test';
import { IO } from '../uapi/ioctls.js';
import { encode } from '../uapi/layout.js';
import {
  closeCtx, code, destroy, destroyTry, devCache, devCacheAll, errOf, fixture, hwptAlloc, invArray, invalidate, iotlb,
  MOCK, mockDomain, NEST, nestedAlloc, nextId, pins, PS, raw, rawTry, replace, S, setup, U64_MAX, BASE_IOVA, type Fx,
  type InvEntry, type T,
} from './viommu_test_helpers.js';

const V1 = 'viommu-v1' as const;

function allocV1(t: T, a: { devId: number; hwptId: number; type?: number; flags?: number }, size?: number) {
  return rawTry(t, 'VIOMMU_ALLOC_V1', S.iommu_viommu_alloc_v1, {
    flags: a.flags ?? 0, type: a.type ?? 0, dev_id: a.devId, hwpt_id: a.hwptId,
  }, size);
}

function viommuV1(t: T, devId: number, hwptId: number): number {
  const r = allocV1(t, { devId, hwptId });
  if (r.err) throw r.err;
  return r.out.out_viommu_id;
}

function setId(t: T, viommuId: number, devId: number, vdevId: bigint) {
  return code(rawTry(t, 'VIOMMU_SET_VDEV_ID', S.iommu_viommu_vdev_id_v1, { viommu_id: viommuId, dev_id: devId, vdev_id: vdevId }));
}

function unsetId(t: T, viommuId: number, devId: number, vdevId: bigint) {
  return code(rawTry(t, 'VIOMMU_UNSET_VDEV_ID', S.iommu_viommu_vdev_id_v1, { viommu_id: viommuId, dev_id: devId, vdev_id: vdevId }));
}

function invV1(t: T, a: { viommuId: number; uptr?: bigint; dataType?: number; entryLen?: number; entryNum?: number; reserved?: number }) {
  const r = rawTry(t, 'VIOMMU_INVALIDATE', S.iommu_viommu_invalidate_v1, {
    viommu_id: a.viommuId, data_uptr: a.uptr ?? 0n, data_type: a.dataType ?? MOCK.VIOMMU_INVALIDATE_DATA_SELFTEST,
    entry_len: a.entryLen ?? 12, entry_num: a.entryNum ?? 0, __reserved: a.reserved ?? 0,
  });
  return { err: code(r), entryNum: r.out.entry_num };
}

function invEntriesV1(t: T, viommuId: number, entries: InvEntry[]) {
  return invV1(t, { viommuId, uptr: invArray(t, entries), entryNum: entries.length });
}

/** v1 vIOMMU on the fixture's parent, the device attached to a nested HWPT of it. */
function attachedV1(): Fx & { viommu: number; nested: number } {
  const t = fixture(V1);
  const viommu = viommuV1(t, t.idev, t.parent);
  const nested = nestedAlloc(t, t.idev, viommu);
  assert.equal(replace(t, t.stdev, nested), 0);
  return Object.assign(t, { viommu, nested });
}

test('viommu-v1 ioctl numbers: 0x8f is VIOMMU_ALLOC (no IOAS_MAP_FILE), 0x90-0x92 the vdev-ID and invalidate ioctls', () => {
  const t = fixture(V1);
  // An IOAS_MAP_FILE request at 0x8f is read as a v1 VIOMMU_ALLOC: 48 bytes with a non-zero tail beyond
  // the 24-byte struct -> E2BIG; cut to 24 bytes its flags word is non-zero -> EOPNOTSUPP.
  const addr = t.mem.alloc(48);
  t.mem.write(addr, encode(S.iommu_ioas_map_file, { size: 48, flags: 7, ioas_id: t.ioas, fd: 3, start: 0n, length: PS, iova: 0n }, Infinity, 48));
  assert.equal(errOf(() => t.ctx.ioctl(IO(0x8f), addr, t.caller)), 'E2BIG');
  t.mem.write(addr, new Uint8Array([24]));
  assert.equal(errOf(() => t.ctx.ioctl(IO(0x8f), addr, t.caller)), 'EOPNOTSUPP');
  // No vEVENTQ / HW queue, and IOAS_CHANGE_PROCESS is not 0x92 here.
  for (const nr of [0x93, 0x94]) assert.equal(errOf(() => t.ctx.ioctl(IO(nr), addr, t.caller)), 'ENOTTY');
  const c = invV1(t, { viommuId: 999, entryNum: 0 });
  assert.deepEqual(c, { err: 'ENOENT', entryNum: 0 });
  // On mainline the same numbers are the merged ioctls.
  const m = setup('mainline');
  // 0x90 is VIOMMU_ALLOC there: the v1 viommu_id word sits where `flags` is -> EOPNOTSUPP.
  assert.equal(code(rawTry(m, 'VIOMMU_SET_VDEV_ID', S.iommu_viommu_vdev_id_v1, { viommu_id: 1 })), 'EOPNOTSUPP');
});

test('v1 VIOMMU_ALLOC check order: flags, device, parent, NEST_PARENT, then the type (only DEFAULT)', () => {
  const t = fixture(V1);
  assert.equal(code(allocV1(t, { devId: 999, hwptId: 999, flags: 1, type: 5 })), 'EOPNOTSUPP');
  // The type is checked after the lookups.
  assert.equal(code(allocV1(t, { devId: 999, hwptId: t.parent, type: 5 })), 'ENOENT');
  assert.equal(code(allocV1(t, { devId: t.idev, hwptId: 0, type: 5 })), 'ENOENT');
  assert.equal(code(allocV1(t, { devId: t.idev, hwptId: t.ioas, type: 5 })), 'ENOENT');
  const direct = nestedAlloc(t, t.idev, t.parent);
  assert.equal(code(allocV1(t, { devId: t.idev, hwptId: direct, type: 5 })), 'ENOENT');
  const plain = hwptAlloc(t, { devId: t.idev, ptId: t.ioas });
  assert.equal(code(allocV1(t, { devId: t.idev, hwptId: plain, type: 5 })), 'EINVAL');
  assert.equal(code(allocV1(t, { devId: t.idev, hwptId: t.parent, type: 5 })), 'EOPNOTSUPP');
  assert.equal(code(allocV1(t, { devId: t.idev, hwptId: t.parent, type: MOCK.VIOMMU_TYPE_SELFTEST })), 'EOPNOTSUPP');
  assert.equal(code(allocV1(t, { devId: t.idev, hwptId: t.parent }, 23)), 'EINVAL');
  const expect = nextId(t);
  const r = allocV1(t, { devId: t.idev, hwptId: t.parent }, 24);
  assert.equal(code(r), 0);
  assert.equal(r.out.out_viommu_id, expect);
  assert.equal(destroyTry(t, t.parent), 'EBUSY');
  destroy(t, expect);
  destroy(t, direct);
  destroy(t, t.parent);
});

test('v1: a nested HWPT on the DEFAULT vIOMMU comes from the parent\'s driver and holds the vIOMMU', () => {
  const t = fixture(V1);
  const v = viommuV1(t, t.idev, t.parent);
  const data = new Uint8Array(4);
  assert.equal(code(rawTry(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, { dev_id: t.idev, pt_id: v, data_type: 0xbeef,
    data_len: 4, data_uptr: t.mem.alloc(4) })), 'EOPNOTSUPP');
  assert.equal(code(rawTry(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, { dev_id: t.idev, pt_id: v, flags: 8 /* ALLOC_PASID */,
    data_type: MOCK.HWPT_DATA_SELFTEST, data_len: 4, data_uptr: t.mem.alloc(4) })), 'EOPNOTSUPP');
  void data;
  const n = nestedAlloc(t, t.idev, v);
  assert.equal(destroyTry(t, v), 'EBUSY');
  // No vDEVICE is needed to attach in this ABI.
  assert.equal(replace(t, t.stdev, n), 0);
  assert.equal(destroyTry(t, n), 'EBUSY');
  // HWPT_INVALIDATE still knows only nested HWPTs here: a vIOMMU id is not found.
  assert.deepEqual(invalidate(t, { hwptId: v, entryNum: 0 }), { err: 'ENOENT', entryNum: 0 });
  assert.deepEqual(invalidate(t, { hwptId: t.parent, entryNum: 0 }), { err: 'ENOENT', entryNum: 0 });
});

test('v1 SET_VDEV_ID: lookups, attachment to a nested HWPT of this vIOMMU, EBUSY on a used vdev_id', () => {
  const t = fixture(V1);
  const v = viommuV1(t, t.idev, t.parent);
  const v2 = viommuV1(t, t.idev, t.parent);
  assert.equal(code(rawTry(t, 'VIOMMU_SET_VDEV_ID', S.iommu_viommu_vdev_id_v1, { viommu_id: v, dev_id: t.idev }, 23)), 'EINVAL');
  // Order: the device, its attachment (a nested HWPT), then the vIOMMU, then its ownership of that HWPT.
  assert.equal(setId(t, 999, 999, 1n), 'ENOENT');
  assert.equal(setId(t, v, 999, 1n), 'ENOENT');
  assert.equal(setId(t, 999, t.idev, 1n), 'EINVAL'); // attached to an IOAS: checked before the vIOMMU lookup
  // Attached to an IOAS (auto-domain) -> EINVAL.
  assert.equal(setId(t, v, t.idev, 1n), 'EINVAL');
  // Attached to a nested HWPT made directly on the parent -> EINVAL.
  const direct = nestedAlloc(t, t.idev, t.parent);
  assert.equal(replace(t, t.stdev, direct), 0);
  assert.equal(setId(t, v, t.idev, 1n), 'EINVAL');
  assert.equal(setId(t, 999, t.idev, 1n), 'ENOENT'); // a nested HWPT: the vIOMMU lookup comes next
  // Attached to a nested HWPT of another vIOMMU -> EINVAL.
  const n2 = nestedAlloc(t, t.idev, v2);
  assert.equal(replace(t, t.stdev, n2), 0);
  assert.equal(setId(t, 999, t.idev, 1n), 'ENOENT');
  assert.equal(setId(t, t.parent, t.idev, 1n), 'ENOENT');
  assert.equal(setId(t, v, t.idev, 1n), 'EINVAL');
  // Attached to one of this vIOMMU: OK; the entry is no object (no ID consumed).
  const n = nestedAlloc(t, t.idev, v);
  assert.equal(replace(t, t.stdev, n), 0);
  const id = nextId(t);
  assert.equal(setId(t, v, t.idev, 0x99n), 0);
  assert.equal(nextId(t), id);
  // Any 64-bit vdev_id; a second ID for the same device is just another entry.
  assert.equal(setId(t, v, t.idev, U64_MAX), 0);
  // A used vdev_id -> EBUSY (also for another device attached the same way).
  const d2 = mockDomain(t, t.ioas);
  assert.equal(replace(t, d2.stdevId, n), 0);
  assert.equal(setId(t, v, d2.idevId, 0x99n), 'EBUSY');
  assert.equal(setId(t, v, t.idev, 0x99n), 'EBUSY');
  assert.equal(setId(t, v, d2.idevId, 0x98n), 0);
  // The same vdev_id on another vIOMMU is a different table.
  assert.equal(replace(t, d2.stdevId, n2), 0);
  assert.equal(setId(t, v2, d2.idevId, 0x99n), 0);
});

test('v1 UNSET_VDEV_ID: the (vIOMMU, device, vdev_id) triple must match an entry', () => {
  const t = attachedV1();
  const v = t.viommu;
  const d2 = mockDomain(t, t.ioas);
  assert.equal(replace(t, d2.stdevId, t.nested), 0);
  assert.equal(setId(t, v, t.idev, 0x10n), 0);
  assert.equal(setId(t, v, d2.idevId, 0x20n), 0);
  assert.equal(unsetId(t, 999, t.idev, 0x10n), 'ENOENT');
  assert.equal(unsetId(t, v, 999, 0x10n), 'ENOENT');
  assert.equal(unsetId(t, v, t.idev, 0x20n), 'EINVAL'); // another device's entry
  assert.equal(unsetId(t, v, t.idev, 0x11n), 'EINVAL'); // no such entry
  const v2 = viommuV1(t, t.idev, t.parent);
  assert.equal(unsetId(t, v2, t.idev, 0x10n), 'EINVAL'); // another vIOMMU
  assert.equal(unsetId(t, v, t.idev, 0x10n), 0);
  assert.equal(unsetId(t, v, t.idev, 0x10n), 'EINVAL');
  // UNSET does not require the attachment any more.
  assert.equal(replace(t, d2.stdevId, t.ioas), 0);
  assert.equal(unsetId(t, v, d2.idevId, 0x20n), 0);
  // A freed vdev_id can be set again.
  assert.equal(setId(t, v, t.idev, 0x20n), 0);
});

test('v1 vdev-ID entries hold nothing: they vanish with the device or the vIOMMU', () => {
  const t = attachedV1();
  const v = t.viommu;
  const d2 = mockDomain(t, t.ioas);
  assert.equal(replace(t, d2.stdevId, t.nested), 0);
  assert.equal(setId(t, v, d2.idevId, 0x42n), 0);
  // Removing the device silently drops its entries: the vdev_id is free for another device.
  destroy(t, d2.stdevId);
  assert.equal(setId(t, v, t.idev, 0x42n), 0);
  assert.deepEqual(invEntriesV1(t, v, [{ vdev_id: 0x42, cache_id: 1 }]), { err: 0, entryNum: 1 });
  assert.ok(devCache(t, t.idev, 1, 0));
  // The vIOMMU can go with entries still in its table (once its nested HWPT is gone).
  assert.equal(replace(t, t.stdev, t.ioas), 0);
  destroy(t, t.nested);
  assert.equal(destroyTry(t, v), 0);
  assert.equal(destroyTry(t, t.parent), 0);
});

test('v1 VIOMMU_INVALIDATE: core checks, entry_num always copied back, mock semantics, DEV_CHECK_CACHE', () => {
  const t = attachedV1();
  const v = t.viommu;
  assert.equal(setId(t, v, t.idev, 0x99n), 0);
  const D = MOCK.DEV_CACHE_DEFAULT;
  const arr = invArray(t, [{ vdev_id: 0x99 }]);
  assert.equal(code(rawTry(t, 'VIOMMU_INVALIDATE', S.iommu_viommu_invalidate_v1, { viommu_id: v }, 31)), 'EINVAL');
  assert.deepEqual(invV1(t, { viommuId: 999, reserved: 1, entryNum: 3 }), { err: 'EOPNOTSUPP', entryNum: 0 });
  assert.deepEqual(invV1(t, { viommuId: 999, uptr: 0n, entryNum: 1 }), { err: 'EINVAL', entryNum: 0 });
  assert.deepEqual(invV1(t, { viommuId: 999, uptr: arr, entryLen: 0, entryNum: 1 }), { err: 'EINVAL', entryNum: 0 });
  // A failed vIOMMU lookup returned before the copy-back: entry_num keeps the caller's value.
  assert.deepEqual(invV1(t, { viommuId: 999, uptr: arr, entryNum: 1 }), { err: 'ENOENT', entryNum: 1 });
  // Only a vIOMMU: the nested HWPT id is not found.
  assert.deepEqual(invV1(t, { viommuId: t.nested, uptr: arr, entryNum: 1 }), { err: 'ENOENT', entryNum: 1 });
  assert.deepEqual(invV1(t, { viommuId: v, dataType: 0x0dadbeef }), { err: 'EINVAL', entryNum: 0 });
  assert.deepEqual(invV1(t, { viommuId: v }), { err: 0, entryNum: 0 });
  assert.deepEqual(invEntriesV1(t, v, [{ flags: 0xffffffff, vdev_id: 0x99 }]), { err: 'EOPNOTSUPP', entryNum: 0 });
  assert.deepEqual(invEntriesV1(t, v, [{ vdev_id: 0x99, cache_id: 4 }]), { err: 'EINVAL', entryNum: 0 });
  assert.deepEqual(invEntriesV1(t, v, [{ vdev_id: 0x98 }]), { err: 'EINVAL', entryNum: 0 });
  assert.deepEqual(devCacheAll(t, t.idev), [D, D, D, D]);
  assert.deepEqual(invEntriesV1(t, v, [{ vdev_id: 0x99, cache_id: 0 }, { vdev_id: 0x99, cache_id: 4 }]), { err: 'EINVAL', entryNum: 1 });
  assert.deepEqual(devCacheAll(t, t.idev), [0, D, D, D]);
  assert.deepEqual(invEntriesV1(t, v, [{ flags: 1, vdev_id: 0x99 }]), { err: 0, entryNum: 1 });
  assert.deepEqual(devCacheAll(t, t.idev), [0, 0, 0, 0]);
  // After UNSET the vdev_id is unknown to the invalidation.
  assert.equal(unsetId(t, v, t.idev, 0x99n), 0);
  assert.deepEqual(invEntriesV1(t, v, [{ vdev_id: 0x99 }]), { err: 'EINVAL', entryNum: 0 });
});

test('v1 end to end: IOAS -> device -> parent -> DEFAULT vIOMMU -> nested -> attach -> SET_VDEV_ID -> invalidate -> teardown', () => {
  const t = setup(V1);
  const ioas = raw(t, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id;
  const va = t.mem.mmap(1 << 20, { shared: true });
  raw(t, 'IOAS_MAP', S.iommu_ioas_map, { flags: 7, ioas_id: ioas, user_va: va, length: 1n << 20n, iova: BASE_IOVA });
  const md = mockDomain(t, ioas);
  const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: NEST });
  const viommu = viommuV1(t, md.idevId, parent);
  const nested = nestedAlloc(t, md.idevId, viommu);
  // SET_VDEV_ID before the attach is refused; after it, accepted.
  assert.equal(setId(t, viommu, md.idevId, 0x99n), 'EINVAL');
  assert.equal(replace(t, md.stdevId, nested), 0);
  assert.equal(setId(t, viommu, md.idevId, 0x99n), 0);
  const d2 = mockDomain(t, ioas);
  assert.equal(replace(t, d2.stdevId, nested), 0);
  assert.equal(setId(t, viommu, d2.idevId, 0x99n), 'EBUSY');
  assert.equal(unsetId(t, viommu, d2.idevId, 0x99n), 'EINVAL');
  // vIOMMU-scoped invalidation (device cache) and the nested HWPT's IOTLB.
  assert.deepEqual(invEntriesV1(t, viommu, [{ vdev_id: 0x99, cache_id: 3 }]), { err: 0, entryNum: 1 });
  assert.ok(devCache(t, md.idevId, 3, 0));
  assert.ok(devCache(t, d2.idevId, 3, MOCK.DEV_CACHE_DEFAULT));
  const e = t.mem.alloc(8);
  t.mem.write(e, encode(S.iommu_hwpt_invalidate_selftest, { flags: 0, iotlb_id: 2 }));
  assert.deepEqual(invalidate(t, { hwptId: nested, uptr: e, entryLen: 8, entryNum: 1, dataType: MOCK.HWPT_INVALIDATE_DATA_SELFTEST }),
    { err: 0, entryNum: 1 });
  assert.ok(iotlb(t, nested, 2, 0));
  assert.ok(iotlb(t, nested, 1, MOCK.IOTLB_DEFAULT));
  // Wrong order: EBUSY each time.
  for (const id of [ioas, parent, viommu, nested, md.idevId]) assert.equal(destroyTry(t, id), 'EBUSY', `id ${id}`);
  // Right order.
  assert.equal(unsetId(t, viommu, md.idevId, 0x99n), 0);
  destroy(t, d2.stdevId);
  assert.equal(replace(t, md.stdevId, ioas), 0);
  destroy(t, nested);
  destroy(t, viommu);
  destroy(t, parent);
  destroy(t, md.stdevId);
  destroy(t, ioas);
  assert.equal(t.ctx.objects.size, 0);
  closeCtx(t);
  assert.equal(t.ctx.objects.size, 0);
  assert.ok(pins(t, va, 1n << 20n).every((n) => n === 0));
});

test('v1: closing with a populated vdev-ID table leaves nothing', () => {
  const t = attachedV1();
  assert.equal(setId(t, t.viommu, t.idev, 1n), 0);
  closeCtx(t);
  assert.equal(t.ctx.closed, true);
  assert.equal(t.ctx.objects.size, 0);
  assert.deepEqual(pins(t, t.va, 2n * PS), [0, 0]);
});
