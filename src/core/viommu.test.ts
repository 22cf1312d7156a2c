// vIOMMU family on the raw ioctl entry: VIOMMU_ALLOC (02 §3), vDEVICE (02 §5),
// HWPT_ALLOC on a vIOMMU (02 §6), HWPT_INVALIDATE on a vIOMMU (02 §7), mmap of
// the mock vIOMMU's region (01 §5.8, 03 §5.7), tombstones, and the VMM flow
// end to end under every profile that has the vIOMMU ioctls.
import { FAIL_NTH_SELFTEST } from './fault_inject.js';
import assert from 'node:assert/strict';
import test from 'node:test';
import { iommufdMmap, MAP_SHARED, PROT_EXEC } from './mmap.js';
import { ObjType } from './object.js';
import { IO } from '../uapi/ioctls.js';
import { encode } from '../uapi/layout.js';
import type { ProfileName } from '../uapi/profiles.js';
import {
  BASE_IOVA, bareViommuDriver, bindForeign, bindMockOtherInstance, closeCtx, code, destroy, destroyTry, devCache,
  devCacheAll, errOf, fixture, foreignDriver, hwptAlloc, hwptAllocTry, hwQueueAlloc, invalidate, invalidateEntries,
  invArray, iotlb, MOCK, mockDomain, NEST, nestedAlloc, nextId, parseEvents, pins, PS, raw, rawTry, readFd, replace,
  S, setup, trigger, U64_MAX, unmapTry, vdevAlloc, vdevAllocTry, veventqAlloc, viommuAlloc, viommuAllocData,
  viommuAllocTry, HWPT_ALLOC, TEST_OP, testCmd, rawReadOnly, setupWith, hwptAllocArgs, type Fx,
} from './viommu_test_helpers.js';

const ALL: ProfileName[] = ['6.13', '6.15', '6.17', 'mainline'];
const NEW: ProfileName[] = ['6.17', 'mainline'];
const OLD: ProfileName[] = ['6.13', '6.15'];
const SELFTEST = MOCK.VIOMMU_TYPE_SELFTEST;

function withViommu(profile: ProfileName): Fx & { viommu: number } {
  const t = fixture(profile);
  const viommu = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
  return Object.assign(t, { viommu });
}

// ---- presence of the ioctls --------------------------------------------------------------

test('6.12 has no vIOMMU ioctls: 0x90..0x94 are ENOTTY on the raw entry', () => {
  const t = setup('6.12');
  for (const nr of [0x90, 0x91, 0x93, 0x94]) {
    const addr = t.mem.alloc(64);
    t.mem.write(addr, encode(S.iommu_vdevice_alloc, { size: 40 }, Infinity, 40));
    assert.equal(errOf(() => t.ctx.ioctl(IO(nr), addr, t.caller)), 'ENOTTY', `nr 0x${nr.toString(16)}`);
  }
});

test('VEVENTQ_ALLOC is ENOTTY before 6.15, HW_QUEUE_ALLOC before 6.17', () => {
  for (const p of ALL) {
    const t = setup(p);
    const addr = t.mem.alloc(64);
    t.mem.write(addr, encode(S.iommu_hw_queue_alloc, { size: 40 }, Infinity, 40));
    const vq = errOf(() => t.ctx.ioctl(IO(0x93), addr, t.caller));
    const hq = errOf(() => t.ctx.ioctl(IO(0x94), addr, t.caller));
    assert.equal(vq === 'ENOTTY', p === '6.13', `${p} veventq ${vq}`);
    assert.equal(hq === 'ENOTTY', p === '6.13' || p === '6.15', `${p} hw queue ${hq}`);
  }
});

// ---- IOMMU_VIOMMU_ALLOC (02 §3) -------------------------------------------------------------

for (const p of NEW) {
  test(`VIOMMU_ALLOC check order, 6.17+ (${p})`, () => {
    const t = fixture(p);
    const bad = 999;
    // 1. flags or DEFAULT type, before any lookup.
    assert.equal(code(viommuAllocTry(t, { devId: bad, hwptId: bad, flags: 1 })), 'EOPNOTSUPP');
    assert.equal(code(viommuAllocTry(t, { devId: bad, hwptId: bad, type: 0 })), 'EOPNOTSUPP');
    // 2. the device (0, missing, wrong type).
    assert.equal(code(viommuAllocTry(t, { devId: 0, hwptId: t.parent })), 'ENOENT');
    assert.equal(code(viommuAllocTry(t, { devId: bad, hwptId: bad })), 'ENOENT');
    assert.equal(code(viommuAllocTry(t, { devId: t.ioas, hwptId: t.parent })), 'ENOENT');
    // 3. the device's driver has no vIOMMU support at all.
    const plain = bindForeign(t);
    assert.equal(code(viommuAllocTry(t, { devId: plain.id, hwptId: bad })), 'EOPNOTSUPP');
    // 4. the driver does not support the type: decided before the HWPT lookup on 6.17+.
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: 0, type: 0xdead })), 'EOPNOTSUPP');
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.parent, type: 0xdead })), 'EOPNOTSUPP');
    // 5. the nesting parent: 0, missing, an IOAS, a nested HWPT -> ENOENT.
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: 0 })), 'ENOENT');
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: bad })), 'ENOENT');
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.ioas })), 'ENOENT');
    const nestedOnParent = nestedAlloc(t, t.idev, t.parent);
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: nestedOnParent })), 'ENOENT');
    // 6. not a nesting parent (a plain HWPT, the auto-domain).
    const plainHwpt = hwptAlloc(t, { devId: t.idev, ptId: t.ioas });
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: plainHwpt })), 'EINVAL');
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.autoHwpt })), 'EINVAL');
    // Success; failures consumed no ID; __reserved is not checked.
    const expect = nextId(t);
    const r = viommuAllocTry(t, { devId: t.idev, hwptId: t.parent, reserved: 0xffffffff });
    assert.equal(code(r), 0);
    assert.equal(r.out.out_viommu_id, expect);
    // 7. the vIOMMU holds its parent.
    assert.equal(destroyTry(t, t.parent), 'EBUSY');
    destroy(t, r.out.out_viommu_id);
    destroy(t, nestedOnParent);
    destroy(t, t.parent);
  });
}

for (const p of OLD) {
  test(`VIOMMU_ALLOC check order, 6.13-6.16: the type is rejected after the HWPT checks (${p})`, () => {
    const t = fixture(p);
    assert.equal(code(viommuAllocTry(t, { devId: 999, hwptId: 999, flags: 1 })), 'EOPNOTSUPP');
    assert.equal(code(viommuAllocTry(t, { devId: 999, hwptId: 999, type: 0 })), 'EOPNOTSUPP');
    assert.equal(code(viommuAllocTry(t, { devId: 0, hwptId: t.parent })), 'ENOENT');
    const plain = bindForeign(t);
    assert.equal(code(viommuAllocTry(t, { devId: plain.id, hwptId: 999 })), 'EOPNOTSUPP');
    // Unsupported type + bad hwpt_id: ENOENT here (EOPNOTSUPP on 6.17+).
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: 0, type: 0xdead })), 'ENOENT');
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: 999, type: 0xdead })), 'ENOENT');
    const plainHwpt = hwptAlloc(t, { devId: t.idev, ptId: t.ioas });
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: plainHwpt, type: 0xdead })), 'EINVAL');
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.parent, type: 0xdead })), 'EOPNOTSUPP');
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: plainHwpt })), 'EINVAL');
    const id = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    assert.equal(id, plainHwpt + 1);
    assert.equal(destroyTry(t, t.parent), 'EBUSY');
  });
}

test('VIOMMU_ALLOC struct sizes: 24 is the minimum everywhere; 6.13 knows 24 bytes, 6.17 40', () => {
  for (const p of ALL) {
    const t = fixture(p);
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.parent }, 23)), 'EINVAL', p);
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.parent }, 24)), 0, p);
    // A 40-byte caller with data_len set: 6.13/6.15 see a non-zero tail beyond their struct.
    // (Laid out with the 6.17 table whatever the profile.)
    const uptr = t.mem.alloc(24);
    const a40 = t.mem.alloc(40);
    t.mem.write(a40, encode(S.iommu_viommu_alloc, { size: 40, type: SELFTEST, dev_id: t.idev, hwpt_id: t.parent,
      data_len: 24, data_uptr: uptr }, Infinity, 40));
    assert.equal(errOf(() => t.ctx.ioctl(IO(0x90), a40, t.caller)), OLD.includes(p) ? 'E2BIG' : 0, p);
    // A longer caller struct needs a zero tail.
    const addr = t.mem.alloc(64);
    const bytes = new Uint8Array(48);
    bytes.set(encode(S.iommu_viommu_alloc, { size: 48, type: SELFTEST, dev_id: t.idev, hwpt_id: t.parent }, Infinity, 40));
    bytes[44] = 1;
    t.mem.write(addr, bytes);
    assert.equal(errOf(() => t.ctx.ioctl(IO(0x90), addr, t.caller)), 'E2BIG', p);
    bytes[44] = 0;
    t.mem.write(addr, bytes);
    assert.equal(errOf(() => t.ctx.ioctl(IO(0x90), addr, t.caller)), 0, p);
    // Copy-back: out_viommu_id is written, nothing beyond min(size, sizeof).
    const out = new DataView(t.mem.read(addr, 48).buffer);
    assert.ok(out.getUint32(20, true) > 0);
    // A 24-byte caller: only its 24 bytes are written back.
    const a24 = t.mem.alloc(64);
    const b24 = new Uint8Array(64).fill(0xaa);
    b24.set(encode(S.iommu_viommu_alloc, { size: 24, type: SELFTEST, dev_id: t.idev, hwpt_id: t.parent }, Infinity, 24));
    t.mem.write(a24, b24);
    assert.equal(errOf(() => t.ctx.ioctl(IO(0x90), a24, t.caller)), 0, p);
    const back = t.mem.read(a24, 64);
    assert.ok(new DataView(back.buffer).getUint32(20, true) > 0);
    assert.ok(back.subarray(24).every((x) => x === 0xaa), `${p}: bytes past the caller's size untouched`);
  }
});

for (const p of NEW) {
  test(`VIOMMU_ALLOC driver data: selftest loopback, copy rules and rollback (${p})`, () => {
    const t = fixture(p);
    const uptr = t.mem.alloc(64);
    t.mem.write(uptr, encode(S.iommu_viommu_selftest, { in_data: 0x1234 }));
    // Initial size 8, kernel struct 24: shorter or longer -> EINVAL.
    for (const len of [1, 4, 7, 25, 64]) {
      assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.parent, dataLen: len, dataUptr: uptr })), 'EINVAL', `len ${len}`);
    }
    // Unreadable data -> EFAULT; the object is gone again.
    const id0 = nextId(t);
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.parent, dataLen: 8, dataUptr: 0n })), 'EFAULT');
    // Data the driver cannot write back (read-only): EFAULT, rolled back.
    const ro = t.mem.alloc(24);
    t.mem.write(ro, encode(S.iommu_viommu_selftest, { in_data: 5 }));
    t.mem.mprotect(ro, 4096, 1);
    assert.equal(code(viommuAllocTry(t, { devId: t.idev, hwptId: t.parent, dataLen: 24, dataUptr: ro })), 'EFAULT');
    assert.equal(nextId(t), id0);
    // 8 bytes: out_data only, nothing written past them.
    const a = viommuAllocData(t, t.idev, t.parent, 0xabcd, 8);
    assert.equal(a.id, id0);
    assert.equal(a.data.out_data, 0xabcd);
    assert.deepEqual([...t.mem.read(a.uptr + 8n, 16)], new Array(16).fill(0xee));
    // 24 bytes: out_data plus the mmap region; the first region of a context is at PAGE_SIZE.
    // (The rolled-back attempts above left no region behind.)
    const b = viommuAllocData(t, t.idev, t.parent, 0x5678, 24);
    assert.equal(b.data.in_data, 0x5678);
    assert.equal(b.data.out_data, 0x5678);
    assert.equal(b.data.out_mmap_length, 2n * PS);
    assert.equal(b.data.out_mmap_offset, 3n * PS); // a's region (8-byte data) took [PS, 3*PS)
    // Regions are lowest-fit: after destroying a, a new one reuses PAGE_SIZE.
    destroy(t, a.id);
    const c = viommuAllocData(t, t.idev, t.parent, 1, 24);
    assert.equal(c.data.out_mmap_offset, PS);
    // No data, no region.
    const d = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    assert.ok(d > 0);
    assert.equal(errOf(() => iommufdMmap(t.ctx, 5n * PS, 2n * PS, MAP_SHARED, 3)), 'ENXIO');
  });

  test(`VIOMMU_ALLOC: the struct copy-back fails -> EFAULT, object and mmap region discarded (${p})`, () => {
    const t = fixture(p);
    const addr = t.mem.alloc(40);
    t.mem.write(addr, encode(S.iommu_viommu_alloc, { size: 40, type: SELFTEST, dev_id: t.idev, hwpt_id: t.parent,
      data_len: 24, data_uptr: t.mem.alloc(24) }, Infinity, 40));
    t.mem.mprotect(addr, 4096, 1);
    const before = t.ctx.objects.size;
    assert.equal(errOf(() => t.ctx.ioctl(IO(0x90), addr, t.caller)), 'EFAULT');
    assert.equal(t.ctx.objects.size, before);
    assert.equal(errOf(() => iommufdMmap(t.ctx, PS, 2n * PS, MAP_SHARED, 3)), 'ENXIO');
    assert.equal(destroyTry(t, t.parent), 0);
  });
}

for (const p of ALL) {
  test(`several vIOMMUs may share one nesting parent; DESTROY(vIOMMU) frees the ID (${p})`, () => {
    const t = fixture(p);
    const v1 = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    const v2 = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    assert.equal(v2, v1 + 1);
    assert.equal(t.ctx.objects.get(t.parent, ObjType.HWPT_PAGING).users, 3);
    destroy(t, v1);
    assert.equal(destroyTry(t, t.parent), 'EBUSY');
    assert.equal(viommuAlloc(t, { devId: t.idev, hwptId: t.parent }), v1); // lowest free ID
    destroy(t, v1);
    destroy(t, v2);
    assert.equal(destroyTry(t, v2), 'ENOENT');
    destroy(t, t.parent);
  });

  test(`the vIOMMU does not hold its dev_id device: it may be unbound (${p})`, () => {
    const t = fixture(p);
    const other = mockDomain(t, t.ioas);
    const v = viommuAlloc(t, { devId: other.idevId, hwptId: t.parent });
    destroy(t, other.stdevId);
    // Still usable with another device behind the same instance.
    assert.ok(vdevAlloc(t, v, t.idev, 1n) > 0);
  });
}

// ---- vIOMMU destroy is blocked by each kind of holder (02 §3.6) -------------------------------

for (const p of NEW) {
  test(`DESTROY(vIOMMU) -> EBUSY while a vDEVICE, nested HWPT, vEVENTQ, HW queue or mmap exists (${p})`, () => {
    const t = fixture(p);
    const { id: v } = viommuAllocData(t, t.idev, t.parent, 7, 24);
    const holders: [string, () => () => void][] = [
      ['vDEVICE', () => { const id = vdevAlloc(t, v, t.idev, 1n); return () => destroy(t, id); }],
      ['nested HWPT', () => { const id = nestedAlloc(t, t.idev, v); return () => destroy(t, id); }],
      ['vEVENTQ', () => {
        const q = veventqAlloc(t, v);
        return () => { t.caller.fds.close(q.fd); destroy(t, q.id); };
      }],
      ['HW queue', () => { const id = hwQueueAlloc(t, v); return () => destroy(t, id); }],
      ['mmap', () => { const m = iommufdMmap(t.ctx, PS, 2n * PS, MAP_SHARED, 3); return () => m.close(); }],
    ];
    for (const [what, make] of holders) {
      const release = make();
      assert.equal(destroyTry(t, v), 'EBUSY', what);
      release();
    }
    assert.equal(destroyTry(t, v), 0);
    destroy(t, t.parent);
  });
}

// ---- IOMMU_VDEVICE_ALLOC (02 §5) ---------------------------------------------------------------

for (const p of ALL) {
  test(`VDEVICE_ALLOC lookups, instance check, virt_id uniqueness per vIOMMU (${p})`, () => {
    const t = withViommu(p);
    const v = t.viommu;
    assert.equal(code(vdevAllocTry(t, v, t.idev, 1n, 23)), 'EINVAL'); // min size 24
    assert.equal(code(vdevAllocTry(t, 0, t.idev, 1n)), 'ENOENT');
    assert.equal(code(vdevAllocTry(t, t.parent, t.idev, 1n)), 'ENOENT'); // not a vIOMMU
    assert.equal(code(vdevAllocTry(t, v, 0, 1n)), 'ENOENT');
    assert.equal(code(vdevAllocTry(t, v, t.stdev, 1n)), 'ENOENT'); // the selftest object is no DEVICE
    // A device behind another physical IOMMU instance.
    const far = bindMockOtherInstance(t);
    assert.equal(code(vdevAllocTry(t, v, far.id, 1n)), 'EINVAL');
    // Any 64-bit virt_id, 0 included.
    const d2 = mockDomain(t, t.ioas);
    const id = nextId(t);
    const a = vdevAlloc(t, v, t.idev, 0n);
    assert.equal(a, id);
    // The same virt_id again on this vIOMMU -> EEXIST, with the ID freed and nothing held.
    const r = vdevAllocTry(t, v, d2.idevId, 0n);
    assert.equal(code(r), 'EEXIST');
    const users = t.ctx.objects.get(v, ObjType.VIOMMU).users;
    assert.equal(users, 2); // table + the one vDEVICE
    const b = vdevAlloc(t, v, d2.idevId, U64_MAX);
    assert.equal(b, a + 1);
    // The same virt_id on another vIOMMU is fine.
    const v2 = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    const d3 = mockDomain(t, t.ioas);
    assert.ok(vdevAlloc(t, v2, d3.idevId, 0n) > 0);
    // Each vDEVICE holds its vIOMMU.
    assert.equal(destroyTry(t, v), 'EBUSY');
    destroy(t, a);
    destroy(t, b);
    assert.equal(destroyTry(t, v), 0);
    // The output struct: out_vdevice_id at offset 12, virt_id intact.
    const out = raw(t, 'VDEVICE_ALLOC', S.iommu_vdevice_alloc, { viommu_id: v2, dev_id: t.idev, virt_id: 0x1234n });
    assert.equal(out.virt_id, 0x1234n);
    assert.ok(out.out_vdevice_id > 0);
  });
}

for (const p of NEW) {
  test(`VDEVICE_ALLOC 6.17+: one vDEVICE per device on any vIOMMU (EEXIST), freed by DESTROY (${p})`, () => {
    const t = withViommu(p);
    const v2 = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    const a = vdevAlloc(t, t.viommu, t.idev, 1n);
    assert.equal(code(vdevAllocTry(t, t.viommu, t.idev, 2n)), 'EEXIST');
    assert.equal(code(vdevAllocTry(t, v2, t.idev, 1n)), 'EEXIST');
    // The DEVICE is held by its vDEVICE.
    const users = t.ctx.objects.get(t.idev, ObjType.DEVICE).users;
    destroy(t, a);
    assert.equal(t.ctx.objects.get(t.idev, ObjType.DEVICE).users, users - 1);
    assert.ok(vdevAlloc(t, v2, t.idev, 1n) > 0);
  });

  test(`VDEVICE_ALLOC 6.17+: a device in the middle of unbind -> ENOENT (${p})`, () => {
    const t = withViommu(p);
    const d2 = mockDomain(t, t.ioas);
    const idev = t.ctx.objects.get(d2.idevId, ObjType.DEVICE) as import('./device.js').Device;
    let during: string | number = 'not run';
    // A concurrent VDEVICE_ALLOC issued while the device is being unbound.
    idev.unbindHooks.push(() => { during = code(vdevAllocTry(t, t.viommu, d2.idevId, 5n)); });
    destroy(t, d2.stdevId);
    assert.equal(during, 'ENOENT');
  });
}

for (const p of OLD) {
  test(`VDEVICE_ALLOC 6.13-6.16: a device may have several vDEVICEs (${p})`, () => {
    const t = withViommu(p);
    const v2 = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    const a = vdevAlloc(t, t.viommu, t.idev, 1n);
    const b = vdevAlloc(t, t.viommu, t.idev, 2n);
    const c = vdevAlloc(t, v2, t.idev, 1n);
    assert.deepEqual([b, c], [a + 1, a + 2]);
    assert.equal(code(vdevAllocTry(t, t.viommu, t.idev, 1n)), 'EEXIST'); // virt_id still unique per vIOMMU
  });
}

// ---- tombstones (02 §5.3) ---------------------------------------------------------------------

for (const p of NEW) {
  test(`vDEVICE tombstone: unbinding the device destroys the vDEVICE; its ID stays reserved until close (${p})`, () => {
    const t = withViommu(p);
    const d2 = mockDomain(t, t.ioas);
    const vdev = vdevAlloc(t, t.viommu, d2.idevId, 0x99n);
    destroy(t, d2.stdevId);
    assert.equal(destroyTry(t, vdev), 'ENOENT');
    // The vIOMMU reference is gone with the vDEVICE.
    assert.equal(t.ctx.objects.get(t.viommu, ObjType.VIOMMU).users, 1);
    // The ID is not handed out again: lower free IDs first, then past it.
    const ids: number[] = [];
    for (let i = 0; i < 6; i++) ids.push(raw(t, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id);
    assert.ok(!ids.includes(vdev), `${ids} must not reuse ${vdev}`);
    // The vDEVICE lookup fails like any other missing ID.
    assert.equal(code(vdevAllocTry(t, vdev, t.idev, 1n)), 'ENOENT');
    // The virt_id became free on the vIOMMU.
    assert.ok(vdevAlloc(t, t.viommu, t.idev, 0x99n) > 0);
    // A tombstone counts as an object for RLIMIT_MODE.
    const tt = withViommu(p);
    const d = mockDomain(tt, tt.ioas);
    const vd = vdevAlloc(tt, tt.viommu, d.idevId, 1n);
    destroy(tt, d.stdevId);
    for (const id of [tt.viommu, tt.parent, tt.stdev, tt.ioas]) destroy(tt, id);
    assert.equal(tt.ctx.objects.size, 1);
    assert.equal(code(rawTry(tt, 'OPTION', S.iommu_option, { option_id: 0, op: 0, object_id: 0, val64: 1n })), 'EBUSY');
    assert.equal(destroyTry(tt, vd), 'ENOENT');
    closeCtx(tt);
    assert.equal(tt.ctx.objects.size, 0);
  });

  test(`vDEVICE tombstone while the device is attached to a nested HWPT of the vIOMMU (${p})`, () => {
    const t = withViommu(p);
    const d2 = mockDomain(t, t.ioas);
    const vdev = vdevAlloc(t, t.viommu, d2.idevId, 0x42n);
    const nested = nestedAlloc(t, d2.idevId, t.viommu);
    assert.equal(replace(t, d2.stdevId, nested), 0);
    destroy(t, d2.stdevId);
    assert.equal(destroyTry(t, vdev), 'ENOENT');
    destroy(t, nested);
    destroy(t, t.viommu);
    closeCtx(t);
    assert.equal(t.ctx.objects.size, 0);
  });
}

for (const p of OLD) {
  test(`6.13-6.16: the vDEVICE survives the device's unbind and can be destroyed (${p})`, () => {
    const t = withViommu(p);
    const d2 = mockDomain(t, t.ioas);
    const vdev = vdevAlloc(t, t.viommu, d2.idevId, 0x99n);
    destroy(t, d2.stdevId);
    assert.equal(destroyTry(t, t.viommu), 'EBUSY');
    assert.equal(destroyTry(t, vdev), 0);
    assert.equal(destroyTry(t, t.viommu), 0);
    // The ID is reusable at once.
    assert.equal(nextId(t) <= vdev, true);
  });
}

// ---- HWPT_ALLOC with pt_id = vIOMMU (02 §6) ------------------------------------------------------

for (const p of ALL) {
  test(`HWPT_ALLOC on a vIOMMU: check order (${p})`, () => {
    const t = withViommu(p);
    const v = t.viommu;
    const ds = MOCK.HWPT_DATA_SELFTEST;
    const data = encode(S.iommu_hwpt_selftest, { iotlb: MOCK.IOTLB_DEFAULT, pagetable_type: 0 }).subarray(0, 4);
    // 1. prologue.
    assert.equal(code(hwptAllocTry(t, { devId: 999, ptId: v, dataType: ds, data }, { __reserved: 1 })), 'EOPNOTSUPP');
    assert.equal(code(hwptAllocTry(t, { devId: 999, ptId: v, dataType: 0, dataLen: 4 })), 'EINVAL');
    assert.equal(code(hwptAllocTry(t, { devId: 999, ptId: v, dataType: ds, dataLen: 0 })), 'EINVAL');
    assert.equal(code(hwptAllocTry(t, { devId: 999, ptId: v, dataType: ds, data })), 'ENOENT');
    assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: 999, dataType: ds, data })), 'EINVAL');
    // 2. another physical IOMMU instance.
    const far = bindMockOtherInstance(t);
    assert.equal(code(hwptAllocTry(t, { devId: far.id, ptId: v, dataType: ds, data, flags: 1 << 30 })), 'EINVAL');
    // 3. flags.
    for (const f of [NEST, HWPT_ALLOC.DIRTY_TRACKING, 1 << 30, HWPT_ALLOC.FAULT_ID_VALID | (1 << 31)]) {
      assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: v, dataType: ds, data, flags: f })), 'EOPNOTSUPP', `flags ${f}`);
    }
    const pr = hwptAllocTry(t, { devId: t.idev, ptId: v, dataType: ds, data, flags: HWPT_ALLOC.PASID });
    const pasid = code(pr);
    assert.equal(pasid, p === '6.13' ? 'EOPNOTSUPP' : 0);
    // 4. no driver data.
    assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: v })), 'EOPNOTSUPP');
    // 7. the driver's data rules (mock: type 0xdead, initial size 4, kernel size 4 (gen A) / 8 (gen B)).
    assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: v, dataType: 0xbeef, data })), 'EOPNOTSUPP');
    assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: v, dataType: ds, data: data.subarray(0, 3) })), 'EINVAL');
    const kernelLen = p === 'mainline' ? 8 : 4;
    const long = new Uint8Array(kernelLen + 1);
    assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: v, dataType: ds, data: long })), 'EINVAL');
    assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: v, dataType: ds, dataLen: 4, dataUptr: 0n })), 'EFAULT');
    // 8. the FAULT object.
    assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: v, dataType: ds, data, flags: HWPT_ALLOC.FAULT_ID_VALID,
      faultId: 0xffffffff })), 'ENOENT');
    // Success: +1 on the vIOMMU, none on the parent.
    const parentUsers = t.ctx.objects.get(t.parent, ObjType.HWPT_PAGING).users;
    const id = nestedAlloc(t, t.idev, v);
    assert.equal(t.ctx.objects.get(id, ObjType.HWPT_NESTED).type, ObjType.HWPT_NESTED);
    assert.equal(t.ctx.objects.get(t.parent, ObjType.HWPT_PAGING).users, parentUsers);
    assert.equal(destroyTry(t, v), 'EBUSY');
    destroy(t, id);
    if (pasid === 0) destroy(t, pr.out.out_hwpt_id); // the ALLOC_PASID one
    assert.equal(destroyTry(t, v), 0);
  });
}

test('HWPT_ALLOC on a vIOMMU with FAULT_ID_VALID: the HWPT holds the FAULT object', () => {
  const t = withViommu('mainline');
  const f = raw(t, 'FAULT_QUEUE_ALLOC', S.iommu_fault_alloc, {});
  const id = nestedAlloc(t, t.idev, t.viommu, { flags: HWPT_ALLOC.FAULT_ID_VALID, faultId: f.out_fault_id });
  t.caller.fds.close(f.out_fault_fd);
  assert.equal(destroyTry(t, f.out_fault_id), 'EBUSY');
  destroy(t, id);
  destroy(t, f.out_fault_id);
});

test('HWPT_ALLOC / HWPT_INVALIDATE / HW_QUEUE_ALLOC on a vIOMMU whose driver has none of those ops -> EOPNOTSUPP', () => {
  const t = fixture('mainline');
  const dev = bindForeign(t, { driver: foreignDriver(bareViommuDriver) });
  assert.equal(code(viommuAllocTry(t, { devId: dev.id, hwptId: t.parent, type: SELFTEST })), 'EOPNOTSUPP');
  const v = viommuAlloc(t, { devId: dev.id, hwptId: t.parent, type: 1 });
  const data = new Uint8Array(4);
  assert.equal(code(hwptAllocTry(t, { devId: dev.id, ptId: v, dataType: MOCK.HWPT_DATA_SELFTEST, data })), 'EOPNOTSUPP');
  // The mock device is behind another instance than this vIOMMU.
  assert.equal(code(hwptAllocTry(t, { devId: t.idev, ptId: v, dataType: MOCK.HWPT_DATA_SELFTEST, data })), 'EINVAL');
  assert.deepEqual(invalidate(t, { hwptId: v, entryNum: 0 }), { err: 'EOPNOTSUPP', entryNum: 0 });
  assert.equal(code(rawTry(t, 'HW_QUEUE_ALLOC', S.iommu_hw_queue_alloc, { viommu_id: v, type: 1, length: PS,
    nesting_parent_iova: BASE_IOVA })), 'EOPNOTSUPP');
  assert.equal(code(vdevAllocTry(t, v, t.idev, 1n)), 'EINVAL'); // instance mismatch
  assert.ok(vdevAlloc(t, v, dev.id, 1n) > 0);
});

for (const p of ALL) {
  test(`attaching to a nested HWPT of a vIOMMU: vDEVICE needed from 6.15; EBUSY destroy while attached (${p})`, () => {
    const t = withViommu(p);
    const nested = nestedAlloc(t, t.idev, t.viommu);
    const r = replace(t, t.stdev, nested);
    if (p === '6.13') {
      assert.equal(r, 0); // the 6.13 mock did not look for a vDEVICE
      assert.equal(replace(t, t.stdev, t.ioas), 0);
    } else {
      assert.equal(r, 'ENOENT');
    }
    const vdev = vdevAlloc(t, t.viommu, t.idev, 0x10n);
    assert.equal(replace(t, t.stdev, nested), 0);
    assert.equal(destroyTry(t, nested), 'EBUSY');
    assert.equal(destroyTry(t, t.viommu), 'EBUSY');
    // The auto-domain went away with the replace; the parent stays held by the vIOMMU.
    assert.equal(destroyTry(t, t.autoHwpt), 'ENOENT');
    assert.equal(replace(t, t.stdev, t.ioas), 0);
    destroy(t, nested);
    destroy(t, vdev);
    destroy(t, t.viommu);
    destroy(t, t.parent);
  });
}

// ---- HWPT_INVALIDATE on a vIOMMU (02 §7, 03 §5.7) ---------------------------------------------------

for (const p of ALL) {
  test(`HWPT_INVALIDATE core order on a vIOMMU, entry_num always copied back (${p})`, () => {
    const t = withViommu(p);
    const v = t.viommu;
    const arr = invArray(t, [{}]);
    // 1. reserved word (even with a bad id and bad array).
    assert.deepEqual(invalidate(t, { hwptId: 999, reserved: 1, entryNum: 5 }), { err: 'EOPNOTSUPP', entryNum: 0 });
    // 2. the four-way array check, before the lookup.
    assert.deepEqual(invalidate(t, { hwptId: 999, uptr: 0n, entryNum: 1 }), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidate(t, { hwptId: 999, uptr: arr, entryLen: 0, entryNum: 1 }), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidate(t, { hwptId: 999, uptr: arr, entryLen: 4097, entryNum: 1 }), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidate(t, { hwptId: 999, uptr: arr, entryNum: (1 << 19) + 1 }), { err: 'EINVAL', entryNum: 0 });
    // The limits themselves pass the core check.
    assert.deepEqual(invalidate(t, { hwptId: 999, uptr: arr, entryLen: 4096, entryNum: 1 }), { err: 'ENOENT', entryNum: 0 });
    assert.deepEqual(invalidate(t, { hwptId: 999, uptr: arr, entryNum: 1 << 19 }), { err: 'ENOENT', entryNum: 0 });
    // An empty array needs no pointer.
    assert.deepEqual(invalidate(t, { hwptId: 999, uptr: 0n, entryLen: 0, entryNum: 0 }), { err: 'ENOENT', entryNum: 0 });
    // 3/4. lookup with any type; an IOAS or a paging HWPT is not invalidatable.
    assert.deepEqual(invalidate(t, { hwptId: t.ioas, entryNum: 0 }), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidate(t, { hwptId: t.parent, entryNum: 0 }), { err: 'EINVAL', entryNum: 0 });
    // The mock checks the data type even for an empty array.
    assert.deepEqual(invalidate(t, { hwptId: v, dataType: 0x0dadbeef, entryNum: 0 }), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidate(t, { hwptId: v, entryNum: 0 }), { err: 0, entryNum: 0 });
    // The HWPT flavour of the selftest type is a different struct on a nested HWPT: a vIOMMU takes it as its own.
    assert.deepEqual(invalidate(t, { hwptId: v, dataType: MOCK.HWPT_INVALIDATE_DATA_SELFTEST, entryNum: 0 }), { err: 0, entryNum: 0 });
  });

  test(`vIOMMU invalidation (mock): semantic checks, partial progress, DEV_CHECK_CACHE (${p})`, () => {
    const t = withViommu(p);
    const v = t.viommu;
    const d2 = mockDomain(t, t.ioas);
    vdevAlloc(t, v, t.idev, 0x99n);
    vdevAlloc(t, v, d2.idevId, 0x88n);
    const D = MOCK.DEV_CACHE_DEFAULT;
    assert.deepEqual(devCacheAll(t, t.idev), [D, D, D, D]);
    // Bad flags, cache_id 4 (even with ALL), unknown vdev_id: nothing applied.
    assert.deepEqual(invalidateEntries(t, v, [{ flags: 0xffffffff, vdev_id: 0x99 }]), { err: 'EOPNOTSUPP', entryNum: 0 });
    assert.deepEqual(invalidateEntries(t, v, [{ flags: 2, vdev_id: 0x99 }]), { err: 'EOPNOTSUPP', entryNum: 0 });
    assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x99, cache_id: 4 }]), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidateEntries(t, v, [{ flags: 1, vdev_id: 0x99, cache_id: 4 }]), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x77 }]), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(devCacheAll(t, t.idev), [D, D, D, D]);
    // Two entries, the second bad: entry_num = 1 and only the first took effect.
    assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x99, cache_id: 0 }, { vdev_id: 0x99, cache_id: 4 }]),
      { err: 'EINVAL', entryNum: 1 });
    assert.deepEqual(devCacheAll(t, t.idev), [0, D, D, D]);
    // Entries go to the device the vdev_id names.
    assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x88, cache_id: 3 }, { vdev_id: 0x99, cache_id: 2 }]),
      { err: 0, entryNum: 2 });
    assert.deepEqual(devCacheAll(t, t.idev), [0, D, 0, D]);
    assert.deepEqual(devCacheAll(t, d2.idevId), [D, D, D, 0]);
    // ALL clears every entry of that device.
    assert.deepEqual(invalidateEntries(t, v, [{ flags: 1, vdev_id: 0x88 }]), { err: 0, entryNum: 1 });
    assert.deepEqual(devCacheAll(t, d2.idevId), [0, 0, 0, 0]);
    assert.ok(devCache(t, t.idev, 1, D));
  });

  test(`vIOMMU invalidation (mock): whole-array copy, short entries zero-extended, long ones need a zero tail (${p})`, () => {
    const t = withViommu(p);
    const v = t.viommu;
    vdevAlloc(t, v, t.idev, 0x99n);
    const D = MOCK.DEV_CACHE_DEFAULT;
    // Short entries read as zero-extended: vdev_id 0 is unknown here -> EINVAL from the lookup.
    assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x99, cache_id: 1 }], 1), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x99, cache_id: 1 }], 8), { err: 0, entryNum: 1 }); // cache_id reads 0
    assert.deepEqual(devCacheAll(t, t.idev), [0, D, D, D]);
    // Longer entries with a zero tail are fine...
    assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x99, cache_id: 1 }, { vdev_id: 0x99, cache_id: 2 }], 13),
      { err: 0, entryNum: 2 });
    assert.deepEqual(devCacheAll(t, t.idev), [0, 0, 0, D]);
    // ...a non-zero tail in any entry is E2BIG before anything runs: entry_num 0.
    const uptr = invArray(t, [{ vdev_id: 0x99, cache_id: 3 }, { vdev_id: 0x99, cache_id: 3 }], 16,
      (i) => new Uint8Array([0, 0, 0, i]));
    assert.deepEqual(invalidate(t, { hwptId: v, uptr, entryLen: 16, entryNum: 2 }), { err: 'E2BIG', entryNum: 0 });
    assert.ok(devCache(t, t.idev, 3, D));
    // The upstream "entry_len 13 / 1 on a zero-filled request" cases: EINVAL from vdev_id 0.
    const zero = t.mem.alloc(64);
    assert.deepEqual(invalidate(t, { hwptId: v, uptr: zero, entryLen: 13, entryNum: 1 }), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(invalidate(t, { hwptId: v, uptr: zero, entryLen: 1, entryNum: 1 }), { err: 'EINVAL', entryNum: 0 });
    // A fault anywhere in the array: EFAULT, entry_num 0, nothing applied.
    const page = t.mem.alloc(4096); // followed by an unmapped guard page
    t.mem.write(page + 4096n - 12n, encode(S.iommu_viommu_invalidate_selftest, { flags: 0, vdev_id: 0x99, cache_id: 3 }));
    assert.deepEqual(invalidate(t, { hwptId: v, uptr: page + 4096n - 12n, entryNum: 2 }), { err: 'EFAULT', entryNum: 0 });
    assert.deepEqual(invalidate(t, { hwptId: v, uptr: 0x10n, entryNum: 1 }), { err: 'EFAULT', entryNum: 0 });
    assert.ok(devCache(t, t.idev, 3, D));
    // With a vDEVICE whose virt_id is 0, the zero-extended entry is valid.
    const d2 = mockDomain(t, t.ioas);
    vdevAlloc(t, v, d2.idevId, 0n);
    assert.deepEqual(invalidate(t, { hwptId: v, uptr: zero, entryLen: 1, entryNum: 1 }), { err: 0, entryNum: 1 });
    assert.deepEqual(devCacheAll(t, d2.idevId), [0, D, D, D]);
  });
}

test('vIOMMU invalidation after the vDEVICE is gone: its virt_id is unknown again', () => {
  const t = withViommu('mainline');
  const vd = vdevAlloc(t, t.viommu, t.idev, 5n);
  assert.deepEqual(invalidateEntries(t, t.viommu, [{ vdev_id: 5 }]), { err: 0, entryNum: 1 });
  destroy(t, vd);
  assert.deepEqual(invalidateEntries(t, t.viommu, [{ vdev_id: 5 }]), { err: 'EINVAL', entryNum: 0 });
});

test('nested HWPT of a vIOMMU: its own invalidation (IOTLB) works like a plain nested HWPT', () => {
  const t = withViommu('mainline');
  const nested = nestedAlloc(t, t.idev, t.viommu);
  const e = (flags: number, id: number) => encode(S.iommu_hwpt_invalidate_selftest, { flags, iotlb_id: id });
  const put = (es: Uint8Array[]) => {
    const u = t.mem.alloc(64);
    es.forEach((x, i) => t.mem.write(u + BigInt(8 * i), x));
    return u;
  };
  const inv = (es: Uint8Array[], entryLen = 8) => invalidate(t, { hwptId: nested, uptr: put(es), entryLen, entryNum: es.length,
    dataType: MOCK.HWPT_INVALIDATE_DATA_SELFTEST });
  assert.deepEqual(inv([e(0, 1), e(0, 4)]), { err: 'EINVAL', entryNum: 1 });
  assert.ok(iotlb(t, nested, 1, 0));
  assert.ok(iotlb(t, nested, 0, MOCK.IOTLB_DEFAULT));
  assert.deepEqual(inv([e(0, 0)], 9), { err: 'EINVAL', entryNum: 0 });
  assert.deepEqual(inv([e(1, 0)]), { err: 0, entryNum: 1 });
  for (let i = 0; i < 4; i++) assert.ok(iotlb(t, nested, i, 0));
});

// ---- mmap of the mock vIOMMU region (01 §5.8, 03 §5.7) -------------------------------------------------

for (const p of NEW) {
  test(`mmap rules on /dev/iommu (${p})`, () => {
    const t = fixture(p);
    const { id: v, data } = viommuAllocData(t, t.idev, t.parent, 0xc0ffee, 24);
    const off = data.out_mmap_offset;
    const len = data.out_mmap_length;
    assert.deepEqual([off, len], [PS, 2n * PS]);
    const mm = (o: bigint, l: bigint, flags = MAP_SHARED, prot = 3) => errOf(() => iommufdMmap(t.ctx, o, l, flags, prot).close());
    // Length not a page multiple, or not MAP_SHARED -> EINVAL; PROT_EXEC -> EPERM; in that order.
    assert.equal(mm(off, len - 1n, 0x02, 3 | PROT_EXEC), 'EINVAL');
    assert.equal(mm(off, 0n), 'EINVAL');
    assert.equal(mm(off, len, 0x02, 3 | PROT_EXEC), 'EINVAL');
    assert.equal(mm(999n * PS, len, MAP_SHARED, 1 | PROT_EXEC), 'EPERM');
    // Only the exact (offset, length) maps: shifted offsets, sub- and super-ranges -> ENXIO.
    for (const [o, l] of [[off - PS, len], [off + PS, len], [0n, len], [off, PS], [off, len + PS], [off + PS, PS]]) {
      assert.equal(mm(o!, l!), 'ENXIO', `${o}/${l}`);
    }
    // The exact region: two pages, the first u32 holds in_data.
    const m = iommufdMmap(t.ctx, off, len, MAP_SHARED, 1);
    assert.equal(m.pages.length, 2);
    assert.equal(new DataView(m.pages[0]!.read(0, 4).buffer).getUint32(0, true), 0xc0ffee);
    // A live mapping holds the vIOMMU (and the context).
    assert.equal(destroyTry(t, v), 'EBUSY');
    const m2 = iommufdMmap(t.ctx, off, len, MAP_SHARED | 0x10, 3);
    m.close();
    assert.equal(destroyTry(t, v), 'EBUSY');
    m2.close();
    m2.close(); // a second munmap is harmless
    assert.equal(destroyTry(t, v), 0);
    // The region went with its owner.
    assert.equal(mm(off, len), 'ENXIO');
  });

  test(`a live mmap keeps the context alive after close (${p})`, () => {
    const t = fixture(p);
    const { id: v, data } = viommuAllocData(t, t.idev, t.parent, 1, 24);
    const m = iommufdMmap(t.ctx, data.out_mmap_offset, data.out_mmap_length, MAP_SHARED, 3);
    closeCtx(t);
    assert.equal(t.ctx.closed, false);
    assert.ok(t.ctx.objects.find(v, ObjType.VIOMMU));
    m.close();
    assert.equal(t.ctx.closed, true);
    assert.equal(t.ctx.objects.size, 0);
  });
}

// ---- the VMM flow end to end, per profile ----------------------------------------------------------

for (const p of ALL) {
  test(`end to end: IOAS -> device -> parent -> vIOMMU -> vDEVICE -> nested -> attach -> invalidate -> events -> teardown (${p})`, () => {
    const t = setup(p);
    const hasQ = p !== '6.13';
    const hasHwQueue = NEW.includes(p);
    const ioas = raw(t, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id;
    const va = t.mem.mmap(1 << 20, { shared: true });
    raw(t, 'IOAS_MAP', S.iommu_ioas_map, { flags: 1 | 2 | 4, ioas_id: ioas, user_va: va, length: 1n << 20n, iova: BASE_IOVA });
    const md = mockDomain(t, ioas);
    const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: NEST });
    let viommu: number;
    let mmapOff = 0n;
    if (hasHwQueue) {
      const r = viommuAllocData(t, md.idevId, parent, 0x5a5a, 24);
      viommu = r.id;
      assert.equal(r.data.out_data, 0x5a5a);
      mmapOff = r.data.out_mmap_offset;
    } else {
      viommu = viommuAlloc(t, { devId: md.idevId, hwptId: parent });
    }
    const vdev = vdevAlloc(t, viommu, md.idevId, 0x99n);
    const nested = nestedAlloc(t, md.idevId, viommu);
    assert.equal(replace(t, md.stdevId, nested), 0);
    // Invalidate: vIOMMU (device cache) and nested HWPT (IOTLB).
    assert.deepEqual(invalidateEntries(t, viommu, [{ vdev_id: 0x99, cache_id: 2 }]), { err: 0, entryNum: 1 });
    assert.ok(devCache(t, md.idevId, 2, 0));
    assert.ok(devCache(t, md.idevId, 1, MOCK.DEV_CACHE_DEFAULT));
    const e = t.mem.alloc(8);
    t.mem.write(e, encode(S.iommu_hwpt_invalidate_selftest, { flags: 0, iotlb_id: 3 }));
    assert.deepEqual(invalidate(t, { hwptId: nested, uptr: e, entryLen: 8, entryNum: 1, dataType: MOCK.HWPT_INVALIDATE_DATA_SELFTEST }),
      { err: 0, entryNum: 1 });
    assert.ok(iotlb(t, nested, 3, 0));
    assert.ok(iotlb(t, nested, 2, MOCK.IOTLB_DEFAULT));
    // Events.
    let q: { id: number; fd: number } | null = null;
    if (hasQ) {
      q = veventqAlloc(t, viommu, { depth: 4 });
      assert.equal(trigger(t, md.idevId), 0);
      assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 0, virtId: 0x99 }]);
    }
    let hq = 0;
    let m: ReturnType<typeof iommufdMmap> | null = null;
    if (hasHwQueue) {
      hq = hwQueueAlloc(t, viommu, { iova: BASE_IOVA, length: PS });
      assert.equal(code(unmapTry(t, ioas, BASE_IOVA, 1n << 20n)), 'EBUSY');
      m = iommufdMmap(t.ctx, mmapOff, 2n * PS, MAP_SHARED, 3);
    }
    // Destroy in the wrong order: every holder blocks.
    for (const id of [ioas, parent, viommu, nested]) assert.equal(destroyTry(t, id), 'EBUSY', `id ${id}`);
    if (q) assert.equal(destroyTry(t, q.id), 'EBUSY');
    assert.equal(destroyTry(t, md.idevId), 'EBUSY');
    // The right order.
    m?.close();
    if (hq) destroy(t, hq);
    if (q) {
      t.caller.fds.close(q.fd);
      destroy(t, q.id);
    }
    assert.equal(destroyTry(t, viommu), 'EBUSY');
    assert.equal(replace(t, md.stdevId, ioas), 0);
    destroy(t, nested);
    destroy(t, vdev);
    destroy(t, viommu);
    destroy(t, parent);
    assert.equal(destroyTry(t, ioas), 'EBUSY'); // the device's auto-domain
    destroy(t, md.stdevId);
    raw(t, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: ioas, iova: 0n, length: U64_MAX });
    destroy(t, ioas);
    assert.equal(t.ctx.objects.size, 0);
    closeCtx(t);
    assert.equal(t.ctx.objects.size, 0);
    assert.ok(pins(t, va, 1n << 20n).every((n) => n === 0));
  });

  test(`end to end: close with everything still alive leaves nothing (${p})`, () => {
    const t = setup(p);
    const ioas = raw(t, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id;
    const va = t.mem.mmap(1 << 16, { shared: true });
    raw(t, 'IOAS_MAP', S.iommu_ioas_map, { flags: 1 | 2 | 4, ioas_id: ioas, user_va: va, length: 1n << 16n, iova: BASE_IOVA });
    const md = mockDomain(t, ioas);
    const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: NEST });
    const viommu = NEW.includes(p) ? viommuAllocData(t, md.idevId, parent, 3, 24).id : viommuAlloc(t, { devId: md.idevId, hwptId: parent });
    vdevAlloc(t, viommu, md.idevId, 7n);
    const nested = nestedAlloc(t, md.idevId, viommu);
    assert.equal(replace(t, md.stdevId, nested), 0);
    let fd = -1;
    if (p !== '6.13') {
      fd = veventqAlloc(t, viommu).fd;
      trigger(t, md.idevId);
    }
    if (NEW.includes(p)) {
      hwQueueAlloc(t, viommu, { index: 0 });
      hwQueueAlloc(t, viommu, { index: 1, iova: BASE_IOVA + PS });
    }
    assert.ok(pins(t, va, 1n << 16n).every((n) => n > 0));
    closeCtx(t);
    if (fd >= 0) {
      assert.equal(t.ctx.closed, false); // the vEVENTQ fd keeps the context
      t.caller.fds.close(fd);
    }
    assert.equal(t.ctx.closed, true);
    assert.equal(t.ctx.objects.size, 0);
    assert.ok(pins(t, va, 1n << 16n).every((n) => n === 0));
  });
}

// ---- copy-back faults roll creation back; HWPT_INVALIDATE's copy-back fault comes after the work ----------

for (const p of ALL) {
  test(`copy-back EFAULT: VDEVICE_ALLOC and HWPT_ALLOC(vIOMMU) leave no trace; HWPT_INVALIDATE has taken effect (${p})`, () => {
    const t = withViommu(p);
    const id = nextId(t);
    assert.equal(rawReadOnly(t, 'VDEVICE_ALLOC', S.iommu_vdevice_alloc, { viommu_id: t.viommu, dev_id: t.idev, virt_id: 7n }), 'EFAULT');
    assert.equal(t.ctx.objects.get(t.viommu, ObjType.VIOMMU).users, 1);
    assert.equal(nextId(t), id);
    // Device mark and virt_id were released with it.
    const vd = vdevAlloc(t, t.viommu, t.idev, 7n);
    assert.equal(vd, id);
    const args = hwptAllocArgs(t, { devId: t.idev, ptId: t.viommu, dataType: MOCK.HWPT_DATA_SELFTEST, data: new Uint8Array(4) });
    assert.equal(rawReadOnly(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, args as Record<string, unknown>), 'EFAULT');
    assert.equal(t.ctx.objects.get(t.viommu, ObjType.VIOMMU).users, 2);
    assert.equal(nextId(t), vd + 1);
    // The invalidation ran; only the report of entry_num failed.
    assert.equal(rawReadOnly(t, 'HWPT_INVALIDATE', S.iommu_hwpt_invalidate, { hwpt_id: t.viommu,
      data_uptr: invArray(t, [{ vdev_id: 7, cache_id: 1 }]), data_type: MOCK.VIOMMU_INVALIDATE_DATA_SELFTEST, entry_len: 12,
      entry_num: 1 }), 'EFAULT');
    assert.ok(devCache(t, t.idev, 1, 0));
    // An error and a faulting copy-back: EFAULT wins.
    assert.equal(rawReadOnly(t, 'HWPT_INVALIDATE', S.iommu_hwpt_invalidate, { hwpt_id: 999 }), 'EFAULT');
  });
}

// ---- the iommufd for-next invalidation loop (02 §7.4), behind the profile switch --------------------

test('for-next invalidation loop: per-entry copy (entry_len exactly 12), entries run one by one', () => {
  const t = setupWith('mainline', { invalidateCoreLoop: true });
  const ioas = raw(t, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id;
  const md = mockDomain(t, ioas);
  const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: NEST });
  const v = viommuAlloc(t, { devId: md.idevId, hwptId: parent });
  vdevAlloc(t, v, md.idevId, 0x99n);
  const D = MOCK.DEV_CACHE_DEFAULT;
  assert.deepEqual(invalidate(t, { hwptId: v, dataType: 0x0dadbeef }), { err: 'EINVAL', entryNum: 0 });
  assert.deepEqual(invalidate(t, { hwptId: v }), { err: 0, entryNum: 0 });
  // No zero-extension or zero-tail acceptance any more.
  for (const len of [1, 8, 13, 16]) {
    assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x99 }], len), { err: 'EINVAL', entryNum: 0 }, `len ${len}`);
  }
  // A fault in entry 1: entry 0 already ran.
  const page = t.mem.alloc(4096);
  t.mem.write(page + 4096n - 12n, encode(S.iommu_viommu_invalidate_selftest, { flags: 0, vdev_id: 0x99, cache_id: 2 }));
  assert.deepEqual(invalidate(t, { hwptId: v, uptr: page + 4096n - 12n, entryNum: 2 }), { err: 'EFAULT', entryNum: 1 });
  assert.deepEqual(devCacheAll(t, md.idevId), [D, D, 0, D]);
  assert.deepEqual(invalidateEntries(t, v, [{ vdev_id: 0x99, cache_id: 0 }, { vdev_id: 0x98 }]), { err: 'EINVAL', entryNum: 1 });
  assert.deepEqual(devCacheAll(t, md.idevId), [0, D, 0, D]);
});

// ---- fault injection: every failure point of every vIOMMU-family allocation leaves no trace -------------

function snapshot(t: Fx): string {
  const objs = t.ctx.objects.all().map((o) => `${o.id}:${o.type}:${o.users}`).join(',');
  const regions = (t.ctx.ext.get('mmap') as unknown[] | undefined)?.length ?? 0;
  return `${objs} fds=${t.caller.fds.open} mmap=${regions} pins=${pins(t, t.va, 2n * PS).join('/')}`;
}

for (const p of ['6.15', 'mainline'] as ProfileName[]) {
  test(`fail-nth sweep over VIOMMU/VDEVICE/nested HWPT/VEVENTQ/HW_QUEUE allocation: rollback is complete (${p})`, () => {
    const t = fixture(p);
    const v = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    const d2 = mockDomain(t, t.ioas);
    const calls: [string, () => void][] = [
      ['VIOMMU_ALLOC', () => (p === 'mainline' ? viommuAllocData(t, t.idev, t.parent, 9, 24) : viommuAlloc(t, { devId: t.idev, hwptId: t.parent }))],
      ['VDEVICE_ALLOC', () => vdevAlloc(t, v, d2.idevId, 0x44n)],
      ['HWPT_ALLOC', () => nestedAlloc(t, d2.idevId, v)],
      ['VEVENTQ_ALLOC', () => veventqAlloc(t, v)],
    ];
    if (p === 'mainline') calls.push(['HW_QUEUE_ALLOC', () => hwQueueAlloc(t, v, { length: 2n * PS })]);
    for (const [name, call] of calls) {
      let fired = 0;
      for (let k = 1; k < 50; k++) {
        const before = snapshot(t);
        t.emu.faults.settings = { ...FAIL_NTH_SELFTEST }; // as the fail_nth selftest: every allocation
        t.emu.failNth = k;
        const err = errOf(call);
        const hit = t.emu.failNth === 0;
        t.emu.failNth = 0;
        if (!hit) {
          assert.equal(err, 0, `${name}: succeeds once no failure point fires`);
          break;
        }
        fired++;
        // A point whose failure the kernel absorbs (an xarray node retried with GFP_KERNEL):
        // the call succeeded, and the sweep ends there.
        if (err === 0) break;
        assert.notEqual(err, 0, `${name} fail-nth ${k}`);
        assert.equal(snapshot(t), before, `${name} fail-nth ${k} (${err}) left a trace`);
      }
      assert.ok(fired > 0, `${name} has failure points`);
    }
    closeCtx(t);
    for (const fd of [...Array(2000).keys()].filter((n) => t.caller.fds.lookup(n))) t.caller.fds.close(fd);
    assert.equal(t.ctx.closed, true, 'no leaked context reference');
    assert.equal(t.ctx.objects.size, 0);
  });
}

// Silence unused-import lint for helpers only some profiles use.
void testCmd; void TEST_OP; void BASE_IOVA;

test('mmap of /dev/iommu before 6.17: the file has no mmap, every mapping is ENODEV (no mapping type: EINVAL)', () => {
  for (const profile of ['6.12', '6.13', '6.15'] as const) {
    const t = setup(profile);
    assert.equal(errOf(() => iommufdMmap(t.ctx, PS, 2n * PS, MAP_SHARED, 3)), 'ENODEV', profile);
    assert.equal(errOf(() => iommufdMmap(t.ctx, 0n, 1n, 0x02, 1)), 'ENODEV', profile);
    assert.equal(errOf(() => iommufdMmap(t.ctx, PS, PS, 0x10, 1)), 'EINVAL', profile);
  }
  assert.equal(errOf(() => iommufdMmap(setup('6.17').ctx, PS, 2n * PS, MAP_SHARED, 3)), 'ENXIO');
});
