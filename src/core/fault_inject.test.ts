// Fault injection as the kernel's framework has it (fault_inject.ts): the fail-nth counter over
// every kind of point, the debugfs switches, the xarray node model, and the points of one call
// being the same on the raw and the typed entry (the kernel's order: copy-in, allocations,
// copy-out).
import assert from 'node:assert/strict';
import test from 'node:test';
import { isErrno } from '../uapi/errno.js';
import * as S from '../uapi/structs.js';
import {
  FAIL_NTH_SELFTEST, FaultInjection, KERNEL_DEFAULTS, settingsFromBits, settingsToBits, XaShape, type FaultSettings,
} from './fault_inject.js';
import { env, raw, type Env } from './ioas_test_helpers.js';

test('xarray nodes: the first index above 0 needs a leaf, 64 more levels need more, emptied nodes are freed', () => {
  const xa = new XaShape();
  assert.equal(xa.newNodes(0), 0); // index 0 alone lives in the head
  assert.equal(xa.newNodes(1), 1);
  xa.store(1);
  assert.equal(xa.newNodes(2), 0);
  assert.equal(xa.newNodes(63), 0);
  assert.equal(xa.newNodes(64), 2); // a new root above the old leaf, and a second leaf
  xa.store(64);
  assert.equal(xa.newNodes(100), 0);
  assert.equal(xa.newNodes(4096), 3); // a third level on top, its second child and a leaf
  xa.erase(64);
  assert.equal(xa.newNodes(64), 2);
  xa.erase(1);
  assert.equal(xa.newNodes(1), 1);
  // Only index 0, kept in the head: growing to reach 200 makes its leaf, the root and 200's leaf.
  const z = new XaShape();
  z.store(0);
  assert.equal(z.newNodes(200), 3);
  // 512 consecutive indices from 0: 8 leaves under one root.
  let n = 0;
  for (let i = 0; i < 512; i++) {
    n += xa.newNodes(i);
    xa.store(i);
  }
  assert.equal(n, 9);
});

test('the debugfs switches decide which allocations are points; user copies and iommufd points always are', () => {
  const f = new FaultInjection();
  const points = (settings: FaultSettings, probe: (f: FaultInjection) => boolean): boolean => {
    f.settings = { ...settings };
    f.nth = 1;
    const fired = probe(f);
    f.nth = 0;
    return fired;
  };
  assert.equal(points(KERNEL_DEFAULTS, (x) => x.slab('kernel')), false, 'ignore-gfp-wait Y: sleeping allocations are no points');
  assert.equal(points(KERNEL_DEFAULTS, (x) => x.slab('nowait')), true);
  assert.equal(points(FAIL_NTH_SELFTEST, (x) => x.slab('kernel')), true);
  assert.equal(points({ ...FAIL_NTH_SELFTEST, slabCacheFilter: true }, (x) => x.slab('kernel')), false);
  assert.equal(points(FAIL_NTH_SELFTEST, (x) => x.pages(0)), false, 'min-order 1: single pages are no points');
  assert.equal(points(FAIL_NTH_SELFTEST, (x) => x.pages(1)), true);
  assert.equal(points({ ...FAIL_NTH_SELFTEST, pageMinOrder: 0 }, (x) => x.pages(0)), true);
  assert.equal(points(KERNEL_DEFAULTS, (x) => x.pages(3, 'nowait', true)), false, 'ignore-gfp-highmem Y');
  assert.equal(points(KERNEL_DEFAULTS, (x) => x.usercopy()), true);
  assert.equal(points(KERNEL_DEFAULTS, (x) => x.iommufd()), true);
  // Not armed: nothing fires, nothing counts.
  f.nth = 0;
  assert.equal(f.usercopy(), false);
  assert.equal(f.nth, 0);
  // The wire's bits carry every switch; absent bits mean the kernel's defaults.
  for (const s of [KERNEL_DEFAULTS, FAIL_NTH_SELFTEST, { ...FAIL_NTH_SELFTEST, slabCacheFilter: true, pageMinOrder: 5 }]) {
    assert.deepEqual(settingsFromBits(settingsToBits(s)), s);
  }
  assert.deepEqual(settingsFromBits(0), KERNEL_DEFAULTS);
});

/** What a call returned with point k armed, k = 1, 2, ... until no point fires (a fresh context each time). */
function outcomes(settings: FaultSettings, call: (e: Env) => void, prep: (e: Env) => void = () => {}): string[] {
  const out: string[] = [];
  for (let k = 1; k < 100; k++) {
    const e = env();
    prep(e);
    e.emu.faults.settings = { ...settings };
    e.emu.failNth = k;
    let res = 'ok';
    try {
      call(e);
    } catch (err) {
      if (!isErrno(err)) throw err;
      res = err.code;
    }
    const fired = e.emu.failNth === 0;
    e.emu.failNth = 0;
    if (!fired) return out;
    out.push(res);
  }
  throw new Error('no end of the points');
}

const rawAlloc = (e: Env): void => void raw(e, 'IOAS_ALLOC', S.iommu_ioas_alloc, {});
const typedAlloc = (e: Env): void => void e.ctx.call('IOAS_ALLOC', { size: 12, flags: 0, out_ioas_id: 0 }, e.caller);

test('IOAS_ALLOC fails as the kernel does at each point, the same on the raw and the typed entry', () => {
  // 6.12.117 and 7.3.4: copy-in, the object, the objects xarray's first node (tried without
  // sleeping, then retried: absorbed), copy-out.
  const kernel = ['EFAULT', 'ENOMEM', 'ok', 'EFAULT'];
  assert.deepEqual(outcomes(FAIL_NTH_SELFTEST, rawAlloc), kernel);
  assert.deepEqual(outcomes(FAIL_NTH_SELFTEST, typedAlloc), kernel);
  // With the kernel's default switches the object's allocation (it may sleep) is no point.
  assert.deepEqual(outcomes(KERNEL_DEFAULTS, rawAlloc), ['EFAULT', 'ok', 'EFAULT']);
  assert.deepEqual(outcomes(KERNEL_DEFAULTS, typedAlloc), ['EFAULT', 'ok', 'EFAULT']);
});

test('the first point of an ioctl is its copy-in (EFAULT), before any lookup or allocation', () => {
  const first = (call: (e: Env) => void): string => outcomes(FAIL_NTH_SELFTEST, call)[0]!;
  assert.equal(first((e) => void raw(e, 'IOAS_ALLOC', S.iommu_ioas_alloc, {})), 'EFAULT');
  assert.equal(first((e) => void raw(e, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: 1 })), 'EFAULT');
  assert.equal(first((e) => void raw(e, 'DESTROY', S.iommu_destroy, { id: 1 })), 'EFAULT');
  // Then the lookup's own point (iommufd_get_object: ENOENT), the copy of each range, the copy-out.
  const ranges = (e: Env): void => {
    const buf = e.mem.alloc(16 * 4);
    raw(e, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: 1, num_iovas: 4, allowed_iovas: buf });
  };
  assert.deepEqual(outcomes(FAIL_NTH_SELFTEST, ranges, rawAlloc), ['EFAULT', 'ENOENT', 'EFAULT', 'EFAULT']);
});
