// HW_QUEUE_ALLOC on the raw entry (02 §9, 03 §5.8, 01 Appendix A): check order,
// the internal access (IDs, pins, locked areas, IOVA alignment), the mock's
// index rules and queue dependencies, destroy and teardown.
import assert from 'node:assert/strict';
import test from 'node:test';
import { ObjType } from './object.js';
import type { ProfileName } from '../uapi/profiles.js';
import {
  BASE_IOVA, closeCtx, code, destroy, destroyTry, fixture, hwQueueAlloc, hwQueueAllocTry, MOCK, nextId, pins, PS,
  raw, rawTry, S, U64_MAX, unmapTry, viommuAlloc, rawReadOnly, type Fx,
} from './viommu_test_helpers.js';

const NEW: ProfileName[] = ['6.17', 'mainline'];

function withViommu(p: ProfileName): Fx & { viommu: number } {
  const t = fixture(p);
  return Object.assign(t, { viommu: viommuAlloc(t, { devId: t.idev, hwptId: t.parent }) });
}

function alignment(t: Fx): bigint {
  const arr = t.mem.alloc(256);
  return raw(t, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: t.ioas, num_iovas: 16, allowed_iovas: arr }).out_iova_alignment;
}

function mapAt(t: Fx, va: bigint, iova: bigint, length: bigint, flags = 1 | 2 | 4): void {
  raw(t, 'IOAS_MAP', S.iommu_ioas_map, { flags, ioas_id: t.ioas, user_va: va, length, iova });
}

for (const p of NEW) {
  test(`HW_QUEUE_ALLOC check order: core steps 1-7 (${p})`, () => {
    const t = withViommu(p);
    const v = t.viommu;
    const q = (o: Parameters<typeof hwQueueAllocTry>[2], id = v) => code(hwQueueAllocTry(t, id, o));
    // 1. flags / DEFAULT type, before anything.
    assert.equal(q({ flags: 1, length: 0n }, 999), 'EOPNOTSUPP');
    assert.equal(q({ type: 0, length: 0n }, 999), 'EOPNOTSUPP');
    // 2. length 0.
    assert.equal(q({ length: 0n, iova: U64_MAX }, 999), 'EINVAL');
    // 3. iova + length - 1 overflows.
    assert.equal(q({ iova: U64_MAX, length: 2n }, 999), 'EOVERFLOW');
    assert.equal(q({ iova: 1n, length: U64_MAX }, 999), 'ENOENT'); // exactly reaches U64_MAX: no overflow
    // 4. the vIOMMU.
    assert.equal(q({}, 999), 'ENOENT');
    assert.equal(q({}, 0), 'ENOENT');
    assert.equal(q({}, t.parent), 'ENOENT');
    // 5. the driver's HW queue type.
    assert.equal(q({ type: 0xbeef }), 'EOPNOTSUPP');
    // 7. page-count arithmetic overflow: the page-aligned span does not fit in 64 bits.
    assert.equal(q({ iova: 1n, length: U64_MAX }), 'ERANGE');
    assert.equal(q({ iova: 0n, length: U64_MAX }), 'ERANGE');
    // 8. the page array (kvcalloc, at most INT_MAX bytes) before any pin: ENOMEM for a queue over ~1 TiB
    // (7.3.4 golden traces: length 2^63 at an unmapped IOVA was ENOMEM, not ENOENT).
    assert.equal(q({ iova: PS, length: (1n << 64n) - PS }), 'ENOMEM'); // fits 64 bits exactly
    assert.equal(q({ iova: PS, length: 268435456n * PS }), 'ENOMEM');
    assert.equal(q({ iova: PS, length: 268435455n * PS }), 'ENOENT'); // the largest array kvmalloc may grant: a pin attempt
    // Not mapped (entirely, partly) -> ENOENT.
    assert.equal(q({ iova: BASE_IOVA + 16n * PS }), 'ENOENT');
    assert.equal(q({ iova: BASE_IOVA + PS, length: 2n * PS }), 'ENOENT');
    assert.equal(q({ iova: BASE_IOVA - 8n, length: 16n }), 'ENOENT');
    // Failures left no objects and no lock.
    const expect = nextId(t);
    assert.equal(code(unmapTry(t, t.ioas, BASE_IOVA, 2n * PS)), 0);
    mapAt(t, t.va, BASE_IOVA, 2n * PS);
    const id = hwQueueAlloc(t, v, { iova: BASE_IOVA, length: 2n * PS });
    assert.equal(id, expect);
  });

  test(`HW_QUEUE_ALLOC: pages must be readable and physically contiguous (${p})`, () => {
    const t = withViommu(p);
    // Two pages whose frames are allocated in reverse order -> not contiguous.
    const a = t.mem.mmap(PS, { shared: true });
    const b = t.mem.mmap(PS, { shared: true });
    t.mem.write(b, new Uint8Array([1]));
    t.mem.write(t.mem.alloc(1), new Uint8Array([1]));
    t.mem.write(a, new Uint8Array([1]));
    const iova = BASE_IOVA + 32n * PS;
    mapAt(t, a, iova, PS);
    mapAt(t, b, iova + PS, PS);
    assert.equal(code(hwQueueAllocTry(t, t.viommu, { iova, length: 2n * PS })), 'EFAULT');
    // Each page alone is fine (and so is a sub-page queue inside one).
    const q = hwQueueAlloc(t, t.viommu, { iova: iova + PS + 64n, length: 64n });
    destroy(t, q);
    // A mapping without read permission.
    const w = t.mem.mmap(PS, { shared: true });
    mapAt(t, w, iova + 8n * PS, PS, 1 | 2 /* FIXED | WRITEABLE */);
    assert.equal(code(hwQueueAllocTry(t, t.viommu, { iova: iova + 8n * PS })), 'EPERM');
    // The failures left nothing locked.
    assert.equal(code(unmapTry(t, t.ioas, iova, 2n * PS)), 0);
  });

  test(`HW_QUEUE_ALLOC mock index rules and dependencies: the upstream sequence (${p})`, () => {
    const t = withViommu(p);
    const v = t.viommu;
    assert.equal(code(hwQueueAllocTry(t, v, { type: 0 })), 'EOPNOTSUPP');
    assert.equal(code(hwQueueAllocTry(t, v, { length: 0n })), 'EINVAL');
    assert.equal(code(hwQueueAllocTry(t, v, { iova: U64_MAX, length: PS })), 'EOVERFLOW');
    assert.equal(code(hwQueueAllocTry(t, v, { iova: BASE_IOVA + 64n * PS })), 'ENOENT');
    // Index 1 before 0 -> EIO; index >= 2 -> EINVAL (checked first).
    assert.equal(code(hwQueueAllocTry(t, v, { index: 1 })), 'EIO');
    assert.equal(code(hwQueueAllocTry(t, v, { index: 2 })), 'EINVAL');
    assert.equal(code(hwQueueAllocTry(t, v, { index: 0xffffffff })), 'EINVAL');
    const before = nextId(t);
    const q0 = hwQueueAlloc(t, v, { index: 0 });
    assert.equal(q0, before);
    assert.equal(code(hwQueueAllocTry(t, v, { index: 0 })), 'EEXIST');
    assert.equal(code(hwQueueAllocTry(t, v, { index: 2 })), 'EINVAL');
    // The queue page is locked (EBUSY comes before the "cannot split an area" ENOENT); another mapping is not.
    assert.equal(code(unmapTry(t, t.ioas, BASE_IOVA, PS)), 'EBUSY');
    assert.equal(code(unmapTry(t, t.ioas, BASE_IOVA, 2n * PS)), 'EBUSY');
    assert.equal(code(unmapTry(t, t.ioas, 0n, U64_MAX)), 'EBUSY');
    const other = t.mem.mmap(PS, { shared: true });
    mapAt(t, other, BASE_IOVA + 16n * PS, PS);
    assert.equal(code(unmapTry(t, t.ioas, BASE_IOVA + 16n * PS, PS)), 0);
    // Index 1 on an unaligned half page (inside the same page as queue 0).
    const q1 = hwQueueAlloc(t, v, { index: 1, iova: BASE_IOVA + PS / 2n, length: PS / 2n });
    assert.equal(q1, q0 + 2); // q0's internal access took q0 + 1
    // Queue 1 depends on queue 0.
    assert.equal(destroyTry(t, q0), 'EBUSY');
    assert.equal(destroyTry(t, v), 'EBUSY');
    destroy(t, q1);
    destroy(t, q0);
    // Everything unlocked, the IDs free again.
    assert.equal(nextId(t), q0);
    assert.equal(code(unmapTry(t, t.ioas, BASE_IOVA, 2n * PS)), 0);
    assert.equal(destroyTry(t, v), 0);
  });

  test(`HW queue internal access: next ID, users on the IOAS, never user-destroyable, IOVA alignment (${p})`, () => {
    const t = withViommu(p);
    const mockAlign = BigInt(MOCK.PAGE_SIZE);
    assert.equal(alignment(t), mockAlign);
    const ioasUsers = t.ctx.objects.get(t.ioas, ObjType.IOAS).users;
    const q = hwQueueAlloc(t, t.viommu);
    const access = t.ctx.objects.get(q + 1, ObjType.ANY);
    assert.equal(access.type, ObjType.ACCESS);
    assert.equal(t.ctx.objects.get(t.ioas, ObjType.IOAS).users, ioasUsers + 1);
    assert.equal(destroyTry(t, q + 1), 'EBUSY');
    assert.equal(alignment(t), PS);
    // With the access attached, a mapping only 2 KiB-aligned is refused.
    const va = t.mem.mmap(2n * PS, { shared: true });
    assert.equal(code(rawTry(t, 'IOAS_MAP', S.iommu_ioas_map, { flags: 7, ioas_id: t.ioas, user_va: va, length: PS,
      iova: BASE_IOVA + 40n * PS + mockAlign })), 'EINVAL');
    destroy(t, q);
    assert.equal(alignment(t), mockAlign);
    assert.equal(t.ctx.objects.get(t.ioas, ObjType.IOAS).users, ioasUsers);
    assert.equal(destroyTry(t, q + 1), 'ENOENT');
  });

  test(`HW queue: a driver error rolls back the access, the lock and both IDs (${p})`, () => {
    const t = withViommu(p);
    const id = nextId(t);
    assert.equal(code(hwQueueAllocTry(t, t.viommu, { index: 1 })), 'EIO');
    assert.equal(nextId(t), id);
    assert.equal(alignment(t), BigInt(MOCK.PAGE_SIZE));
    assert.equal(t.ctx.objects.get(t.viommu, ObjType.VIOMMU).users, 1);
    assert.equal(code(unmapTry(t, t.ioas, BASE_IOVA, 2n * PS)), 0);
  });

  test(`HW_QUEUE_ALLOC copy-back EFAULT: queue, access, lock and the mock's index slot are released (${p})`, () => {
    const t = withViommu(p);
    const id = nextId(t);
    assert.equal(rawReadOnly(t, 'HW_QUEUE_ALLOC', S.iommu_hw_queue_alloc, { viommu_id: t.viommu,
      type: MOCK.HW_QUEUE_TYPE_SELFTEST, index: 0, nesting_parent_iova: BASE_IOVA, length: PS }), 'EFAULT');
    assert.equal(nextId(t), id);
    assert.equal(t.ctx.objects.get(t.viommu, ObjType.VIOMMU).users, 1);
    assert.equal(alignment(t), BigInt(MOCK.PAGE_SIZE));
    assert.equal(hwQueueAlloc(t, t.viommu, { index: 0 }), id);
  });

  test(`HW queue: an IOAS holding a sub-page (2 KiB-aligned) area cannot take the internal access -> EADDRINUSE (${p})`, () => {
    const t = withViommu(p);
    const va = t.mem.mmap(PS, { shared: true });
    const half = PS / 2n;
    mapAt(t, va + half, BASE_IOVA + 64n * PS + half, half);
    const id = nextId(t);
    assert.equal(code(hwQueueAllocTry(t, t.viommu)), 'EADDRINUSE');
    assert.equal(nextId(t), id);
    assert.equal(alignment(t), BigInt(MOCK.PAGE_SIZE));
    assert.equal(code(unmapTry(t, t.ioas, BASE_IOVA + 64n * PS + half, half)), 0);
    assert.equal(hwQueueAlloc(t, t.viommu), id);
  });

  test(`HW queue: 40 bytes are mandatory; queues of two vIOMMUs are independent (${p})`, () => {
    const t = withViommu(p);
    assert.equal(code(hwQueueAllocTry(t, t.viommu, {}, 39)), 'EINVAL');
    const v2 = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    const a = hwQueueAlloc(t, t.viommu, { index: 0 });
    const b = hwQueueAlloc(t, v2, { index: 0 });
    hwQueueAlloc(t, v2, { index: 1, iova: BASE_IOVA + PS });
    assert.equal(code(hwQueueAllocTry(t, t.viommu, { index: 0 })), 'EEXIST');
    destroy(t, a); // v2's queue 0 is held by its queue 1, not by this one
    assert.equal(destroyTry(t, b), 'EBUSY');
  });

  test(`HW queues: closing the context tears down queue 1 before queue 0 and unpins everything (${p})`, () => {
    const t = withViommu(p);
    hwQueueAlloc(t, t.viommu, { index: 0, length: 2n * PS });
    hwQueueAlloc(t, t.viommu, { index: 1, iova: BASE_IOVA + PS, length: PS });
    assert.ok(pins(t, t.va, 2n * PS).every((n) => n > 0));
    closeCtx(t);
    assert.equal(t.ctx.closed, true);
    assert.equal(t.ctx.objects.size, 0);
    assert.deepEqual(pins(t, t.va, 2n * PS), [0, 0]);
  });
}

for (const p of ['6.13', '6.15'] as ProfileName[]) {
  test(`HW_QUEUE_ALLOC does not exist before 6.17 (${p})`, () => {
    const t = withViommu(p);
    assert.equal(code(hwQueueAllocTry(t, t.viommu)), 'ENOTTY');
  });
}
