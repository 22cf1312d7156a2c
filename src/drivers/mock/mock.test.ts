import { FAIL_NTH_SELFTEST } from '../../core/fault_inject.js';
import assert from 'node:assert/strict';
import test from 'node:test';
import type { Device } from '../../core/device.js';
import type { HwptPaging } from '../../core/hwpt.js';
import { ObjType } from '../../core/object.js';
import { isErrno } from '../../uapi/errno.js';
import { HWPT_ALLOC, MOCK, TEST_OP } from '../../uapi/enums.js';
import { encode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import { MockAmdv1Domain } from './amdv1.js';
import { MockDevice, MockPagingDomain, SLOT_FLAGS } from './mock.js';
import {
  destroy, errno, hwptAlloc, ioasAlloc, iovaRanges, mapFixed, mockDomain, raw, rawTry, selftestData, setup, testCmd,
  testCmdTry, type T,
} from './test_helpers.js';

const BASE = 1n << 24n;

function domainOf(t: T, hwptId: number): MockPagingDomain {
  return (t.ctx.objects.find(hwptId, ObjType.HWPT_PAGING) as HwptPaging).domain as MockPagingDomain;
}

const checkMap = (t: T, id: number, iova: bigint, length: bigint, uptr: bigint) =>
  testCmdTry(t, TEST_OP.MD_CHECK_MAP, id, { iova, length, uptr }).err?.code ?? null;

test('MD_CHECK_MAP: gen A checks 2 KiB alignment before the lookup, gen B after it; then per-step physical addresses', () => {
  for (const profile of ['6.12', '7.3'] as const) {
  const t = setup(profile);
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const va = mapFixed(t, ioas, BASE, 16384);
  const unaligned = profile === '6.12' ? 'EINVAL' : 'ENOENT';
  assert.equal(checkMap(t, 99, BASE + 1n, 2048n, va), unaligned);
  assert.equal(checkMap(t, 99, BASE, 2047n, va), unaligned);
  assert.equal(checkMap(t, 99, BASE, 2048n, va + 1n), unaligned);
  assert.equal(checkMap(t, md.hwptId, BASE + 1n, 2048n, va), 'EINVAL');
  assert.equal(checkMap(t, 99, BASE, 2048n, va), 'ENOENT');
  assert.equal(checkMap(t, ioas, BASE, 2048n, va), 'ENOENT');
  assert.equal(checkMap(t, md.hwptId, BASE, 16384n, va), null);
  assert.equal(checkMap(t, md.hwptId, BASE + 2048n, 4096n, va + 2048n), null); // sub-page offsets count
  assert.equal(checkMap(t, md.hwptId, BASE, 4096n, va + 2048n), 'EINVAL');
  assert.equal(checkMap(t, md.hwptId, BASE + 16384n, 2048n, va), 'EINVAL'); // not mapped
  assert.equal(checkMap(t, md.hwptId, BASE, 2048n, 0x10000n), 'EFAULT'); // no user page
  }
});

test('6.12 mock paging domain: one slot per 2 KiB, START/LAST marks, exact unmap', () => {
  const t = setup('6.12');
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  mapFixed(t, ioas, BASE, 8192);
  const d = domainOf(t, md.hwptId);
  assert.equal(d.slots.size, 4);
  assert.equal(d.pgsizeBitmap, 2048n);
  assert.deepEqual([d.apertureStart, d.apertureLast], [MOCK.APERTURE_START, MOCK.APERTURE_LAST]);
  const first = d.slots.get(Number(BASE / 2048n))!;
  assert.ok(first.flags & SLOT_FLAGS.START);
  assert.ok(d.slots.get(Number(BASE / 2048n) + 3)!.flags & SLOT_FLAGS.LAST);
  raw(t, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: ioas, iova: BASE, length: 8192n });
  assert.equal(d.slots.size, 0);
});

test('6.12 HUGE_IOVA device: 1 MiB IOPTEs where IOVA and phys are 1 MiB aligned; dirty reports whole IOPTEs', () => {
  const t = setup('6.12');
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas, MOCK.FLAGS_DEVICE_HUGE_IOVA);
  const hwpt = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.DIRTY_TRACKING });
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: hwpt });
  const d = domainOf(t, hwpt);
  assert.equal(d.pgsizeBitmap, 2048n | (1n << 20n));
  const len = 2 * 1024 * 1024;
  const va = mapFixed(t, ioas, BASE, len, { hugetlb: true });
  const huge = [...d.slots.values()].filter((s) => s.flags & SLOT_FLAGS.HUGE).length;
  assert.equal(huge, len / 2048);
  testCmd(t, TEST_OP.MD_CHECK_MAP, hwpt, { iova: BASE, length: BigInt(len), uptr: va });
  // Unaligned IOVA: small IOPTEs only.
  const va2 = t.mem.mmap(len, { hugetlb: true });
  raw(t, 'IOAS_MAP', S.iommu_ioas_map, { flags: 7, ioas_id: ioas, user_va: va2 + 4096n, length: 1n << 20n, iova: BASE + (4n << 20n) + 4096n });
  assert.equal([...d.slots.values()].filter((s) => s.flags & SLOT_FLAGS.HUGE).length, huge);

  raw(t, 'HWPT_SET_DIRTY_TRACKING', S.iommu_hwpt_set_dirty_tracking, { hwpt_id: hwpt, flags: 1 });
  const bm = t.mem.alloc(128);
  const bits = new Uint8Array(128);
  bits[0] = 1; // mock page 0 of the first 1 MiB
  t.mem.write(bm, bits);
  const r = testCmd(t, TEST_OP.DIRTY, hwpt, { iova: BASE, length: BigInt(len), page_size: 2048n, uptr: bm });
  assert.equal(r.out_nr_dirty, 1n);
  const out = t.mem.alloc(64);
  raw(t, 'HWPT_GET_DIRTY_BITMAP', S.iommu_hwpt_get_dirty_bitmap, { hwpt_id: hwpt, iova: BASE, length: BigInt(len), page_size: 4096n, data: out });
  const got = t.mem.read(out, 64);
  assert.deepEqual([...got.subarray(0, 32)], new Array(32).fill(0xff)); // 256 pages = the whole 1 MiB IOPTE
  assert.deepEqual([...got.subarray(32, 64)], new Array(32).fill(0));
});

test('DIRTY op: argument checks, lookup, tracking; gen A counts mapped bits, gen B every set bit', () => {
  for (const profile of ['6.12', 'mainline'] as const) {
    const t = setup(profile);
    const ioas = ioasAlloc(t);
    const md = mockDomain(t, ioas);
    const hwpt = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.DIRTY_TRACKING });
    testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: hwpt });
    mapFixed(t, ioas, BASE, 8192);
    const bm = t.mem.alloc(8);
    t.mem.write(bm, new Uint8Array([0xff]));
    const dirty = (id: number, u: Record<string, unknown>) =>
      testCmdTry(t, TEST_OP.DIRTY, id, { iova: BASE, length: 16384n, page_size: 2048n, uptr: bm, ...u });
    assert.equal(dirty(99, { page_size: 0n }).err?.code, 'EINVAL');
    assert.equal(dirty(99, { length: 0n }).err?.code, 'EINVAL');
    assert.equal(dirty(99, { iova: BASE + 1n }).err?.code, 'EINVAL');
    assert.equal(dirty(99, { length: 2049n }).err?.code, 'EINVAL');
    assert.equal(dirty(99, { uptr: 0n }).err?.code, 'EINVAL');
    assert.equal(dirty(99, { length: (1n << 27n) * 2048n + 2048n }).err?.code, 'EOVERFLOW');
    assert.equal(dirty(99, {}).err?.code, 'ENOENT');
    assert.equal(dirty(hwpt, {}).err?.code, 'EINVAL'); // tracking off
    raw(t, 'HWPT_SET_DIRTY_TRACKING', S.iommu_hwpt_set_dirty_tracking, { hwpt_id: hwpt, flags: 1 });
    assert.equal(dirty(hwpt, { uptr: 0x10n }).err?.code, 'EFAULT');
    const r = dirty(hwpt, {});
    assert.equal(r.err, null);
    assert.equal(r.u.out_nr_dirty, profile === '6.12' ? 4n : 8n);
  }
});

test('DIRTY op with page_size 4096: 6.12 looks entries up at iova / page_size (kernel quirk), mainline at the IOVA', () => {
  for (const profile of ['6.12', 'mainline'] as const) {
    const t = setup(profile);
    const ioas = ioasAlloc(t);
    const md = mockDomain(t, ioas);
    const hwpt = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.DIRTY_TRACKING });
    testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: hwpt });
    mapFixed(t, ioas, BASE, 16384);
    raw(t, 'HWPT_SET_DIRTY_TRACKING', S.iommu_hwpt_set_dirty_tracking, { hwpt_id: hwpt, flags: 1 });
    const bm = t.mem.alloc(8);
    t.mem.write(bm, new Uint8Array([0x0f]));
    const r = testCmd(t, TEST_OP.DIRTY, hwpt, { iova: BASE, length: 16384n, page_size: 4096n, uptr: bm });
    // 6.12: slots BASE/4096 + i lie below the aperture, nothing is mapped there.
    assert.equal(r.out_nr_dirty, profile === '6.12' ? 0n : 4n, profile);
  }
});

test('MD_CHECK_IOTLB and DEV_CHECK_CACHE', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
  const nested = hwptAlloc(t, { devId: md.idevId, ptId: parent, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t, 0x1234) });
  const iotlb = (id: number, i: number, v: number) => testCmdTry(t, TEST_OP.MD_CHECK_IOTLB, id, { id: i, iotlb: v }).err?.code ?? null;
  assert.equal(iotlb(nested, 0, 0x1234), null);
  assert.equal(iotlb(nested, 0, 0x1235), 'EINVAL');
  assert.equal(iotlb(nested, 4, 0x1234), 'EINVAL');
  assert.equal(iotlb(parent, 0, 0x1234), 'ENOENT');
  const cache = (id: number, i: number, v: number) => testCmdTry(t, TEST_OP.DEV_CHECK_CACHE, id, { id: i, cache: v }).err?.code ?? null;
  for (let i = 0; i < 4; i++) assert.equal(cache(md.idevId, i, MOCK.DEV_CACHE_DEFAULT), null);
  assert.equal(cache(md.idevId, 4, MOCK.DEV_CACHE_DEFAULT), 'EINVAL');
  assert.equal(cache(md.idevId, 0, 0), 'EINVAL');
  assert.equal(cache(md.stdevId, 0, MOCK.DEV_CACHE_DEFAULT), 'ENOENT');
  const mdev = (t.ctx.objects.find(md.idevId, ObjType.DEVICE) as Device).dev as MockDevice;
  mdev.cache[2] = 0;
  assert.equal(cache(md.idevId, 2, 0), null);
});

test('gen B HUGE page-table type: PAGE_SIZE | 1 MiB pages, natural aperture, alignment PAGE_SIZE', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const data = encode(S.iommu_hwpt_selftest, { iotlb: 0, pagetable_type: 1 });
  const hwpt = hwptAlloc(t, { devId: md.idevId, ptId: ioas, dataType: MOCK.HWPT_DATA_SELFTEST, data });
  const d = domainOf(t, hwpt) as unknown as MockAmdv1Domain;
  assert.equal(d.pgsizeBitmap, 4096n | (1n << 20n));
  assert.equal(iovaRanges(t, ioas).alignment, 4096n);
  const va = mapFixed(t, ioas, 1n << 30n, 2 << 20, { hugetlb: true });
  testCmd(t, TEST_OP.MD_CHECK_MAP, hwpt, { iova: 1n << 30n, length: 2n << 20n, uptr: va });
  assert.deepEqual(d.leaves().map((l) => l.size), [1n << 20n, 1n << 20n]);
  // The table's own geometry: three levels from 2 KiB, 256 GiB.
  assert.deepEqual([d.apertureStart, d.apertureLast], [0n, (1n << 38n) - 1n]);
});

test('7.3 mock domain (AMDv1, 2 KiB granule): every power of two from 2 KiB to 64 GiB, largest fitting entries', () => {
  const t = setup('7.3');
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const d = domainOf(t, md.hwptId) as unknown as MockAmdv1Domain;
  assert.ok(d instanceof MockAmdv1Domain);
  let want = 0n;
  for (let b = 11n; b <= 36n; b++) want |= 1n << b;
  assert.equal(d.pgsizeBitmap, want);
  assert.deepEqual([d.apertureStart, d.apertureLast], [MOCK.APERTURE_START, MOCK.APERTURE_LAST]);
  assert.equal(iovaRanges(t, ioas).alignment, 2048n);
  // A 2 MiB huge page at a 2 MiB aligned IOVA: one 2 MiB entry.
  const va = mapFixed(t, ioas, 16n << 20n, 2 << 20, { hugetlb: true });
  assert.deepEqual(d.leaves().map((l) => l.size), [2n << 20n]);
  testCmd(t, TEST_OP.MD_CHECK_MAP, md.hwptId, { iova: 16n << 20n, length: 2n << 20n, uptr: va });
  // The same memory at an IOVA 8 KiB off a 2 MiB boundary: 8K, 16K ... then 2 MiB-aligned pieces.
  const iova = (64n << 20n) + 8192n;
  raw(t, 'IOAS_MAP', S.iommu_ioas_map, { flags: 7, ioas_id: ioas, user_va: va + 8192n, length: (2n << 20n) - 8192n, iova });
  const sizes = d.leaves().filter((l) => l.iova >= 64n << 20n).map((l) => l.size);
  assert.equal(sizes.reduce((a, b) => a + b, 0n), (2n << 20n) - 8192n);
  assert.deepEqual(sizes.slice(0, 3), [8192n, 16384n, 32768n]);
  // Unmapping an area removes its entries (and the lower tables it covers).
  raw(t, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: ioas, iova, length: (2n << 20n) - 8192n });
  assert.deepEqual(d.leaves().map((l) => l.size), [2n << 20n]);
  raw(t, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: ioas, iova: 0n, length: (1n << 64n) - 1n });
  // Each area is unmapped on its own: tables no single unmap covered stay (the 512 MiB
  // level-1 table, and the 1 MiB level-0 table the unaligned area started in).
  assert.deepEqual(d.stats, { entries: 0, tables: 2 });
});

test('7.3 mock domain: a dirty mark on one 2 KiB item makes the whole entry dirty; NO_CLEAR keeps it', () => {
  const t = setup('7.3');
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const hwpt = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.DIRTY_TRACKING });
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: hwpt });
  const len = 2 << 20;
  mapFixed(t, ioas, BASE, len, { hugetlb: true });
  raw(t, 'HWPT_SET_DIRTY_TRACKING', S.iommu_hwpt_set_dirty_tracking, { hwpt_id: hwpt, flags: 1 });
  const bm = t.mem.alloc(128);
  const bits = new Uint8Array(128);
  bits[1] = 0x02; // the 2 KiB item at BASE + 9 * 2 KiB, inside the one 2 MiB entry
  t.mem.write(bm, bits);
  assert.equal(testCmd(t, TEST_OP.DIRTY, hwpt, { iova: BASE, length: 1n << 20n, page_size: 2048n, uptr: bm }).out_nr_dirty, 1n);
  const read = (noClear: boolean): Uint8Array => {
    const out = t.mem.alloc(64);
    t.mem.write(out, new Uint8Array(64));
    raw(t, 'HWPT_GET_DIRTY_BITMAP', S.iommu_hwpt_get_dirty_bitmap,
      { hwpt_id: hwpt, flags: noClear ? 1 : 0, iova: BASE, length: BigInt(len), page_size: 4096n, data: out });
    return t.mem.read(out, 64);
  };
  assert.deepEqual([...read(true)], new Array(64).fill(0xff)); // 512 pages: the whole 2 MiB entry
  assert.deepEqual([...read(false)], new Array(64).fill(0xff));
  assert.deepEqual([...read(false)], new Array(64).fill(0));
});

test('fault injection: MOCK_DOMAIN over a populated IOAS unwinds completely at every failure point', () => {
  for (const profile of ['6.12', 'mainline'] as const) {
    let k = 1;
    for (; k < 200; k++) {
      const t = setup(profile);
      const ioas = ioasAlloc(t);
      mapFixed(t, ioas, BASE, 256 * 1024);
      const before = iovaRanges(t, ioas);
      t.emu.faults.settings = { ...FAIL_NTH_SELFTEST }; // as the fail_nth selftest: every allocation
      t.emu.failNth = k;
      let failed = false;
      try {
        mockDomain(t, ioas);
      } catch (e) {
        if (!isErrno(e)) throw e;
        failed = true;
      }
      const left = t.emu.failNth;
      t.emu.failNth = 0;
      if (!failed && left > 0) break; // no point left to fail
      if (!failed) continue; // an absorbed point (the kernel retries that allocation): success
      assert.deepEqual(t.ctx.objects.all().map((o) => [o.id, o.users]), [[1, 1]], `${profile} k=${k}`);
      assert.deepEqual(iovaRanges(t, ioas), before, `${profile} k=${k}`);
      t.ctx.put();
    }
    assert.ok(k > 3 && k < 200, `${profile}: ${k} failure points`);
  }
});

test('a 1 MiB-aligned HWPT_INVALIDATE entry array crossing into unmapped memory fails with EFAULT at that entry', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
  const nested = hwptAlloc(t, { devId: md.idevId, ptId: parent, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t) });
  const page = t.mem.mmap(4096);
  const uptr = page + 4096n - 8n;
  t.mem.write(uptr, encode(S.iommu_hwpt_invalidate_selftest, { flags: 0, iotlb_id: 1 }));
  const r = rawTry(t, 'HWPT_INVALIDATE', S.iommu_hwpt_invalidate, {
    hwpt_id: nested, data_uptr: uptr, data_type: MOCK.HWPT_INVALIDATE_DATA_SELFTEST, entry_len: 8, entry_num: 2,
  });
  assert.equal(r.err?.code, 'EFAULT');
  assert.equal(r.out.entry_num, 1);
  destroy(t, nested);
  assert.throws(() => testCmd(t, TEST_OP.MD_CHECK_IOTLB, nested, { id: 0, iotlb: 0 }), errno('ENOENT'));
});

test('copy-back faults: MOCK_DOMAIN undoes everything, PASID_ATTACH detaches again', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const roCmd = (op: number, id: number, u: Record<string, unknown>) => {
    const addr = t.mem.alloc(S.IOMMU_TEST_CMD_SIZE);
    const buf = encode(S.iommu_test_cmd, { size: S.IOMMU_TEST_CMD_SIZE, op, id }, Infinity, S.IOMMU_TEST_CMD_SIZE);
    const view = { [TEST_OP.MOCK_DOMAIN]: S.test_mock_domain, [TEST_OP.PASID_ATTACH]: S.test_pasid_attach }[op]!;
    const full = new Uint8Array(buf);
    full.set(encode(view, u, Infinity, S.IOMMU_TEST_CMD_SIZE).subarray(16, 64), 16);
    t.mem.write(addr, full);
    t.mem.mprotect(addr, 4096, 1);
    return () => t.ctx.ioctl((0x3b << 8) | 0xa0, addr, t.caller);
  };
  assert.throws(roCmd(TEST_OP.MOCK_DOMAIN, ioas, {}), errno('EFAULT'));
  assert.deepEqual(t.ctx.objects.all().map((o) => [o.id, o.users]), [[1, 1]]);
  const md = mockDomain(t, ioas, MOCK.FLAGS_DEVICE_PASID);
  const h = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.PASID });
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: h });
  assert.throws(roCmd(TEST_OP.PASID_ATTACH, md.stdevId, { pasid: 7, pt_id: h }), errno('EFAULT'));
  testCmd(t, TEST_OP.PASID_CHECK_HWPT, md.stdevId, { pasid: 7, hwpt_id: 0 });
});

test('fault injection: FAULT_QUEUE_ALLOC and HWPT_ALLOC with a FAULT leave nothing behind', () => {
  for (let k = 1; k < 50; k++) {
    const t = setup();
    const ioas = ioasAlloc(t);
    const md = mockDomain(t, ioas);
    const before = t.ctx.objects.all().length;
    t.emu.faults.settings = { ...FAIL_NTH_SELFTEST }; // as the fail_nth selftest: every allocation
    t.emu.failNth = k;
    let done = false;
    try {
      const r = raw(t, 'FAULT_QUEUE_ALLOC', S.iommu_fault_alloc, {});
      hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.FAULT_ID_VALID, faultId: r.out_fault_id });
      done = true;
    } catch (e) {
      if (!isErrno(e)) throw e;
    }
    const left = t.emu.failNth;
    t.emu.failNth = 0;
    if (done) {
      assert.ok(left > 0 && k > 2);
      return;
    }
    const objs = t.ctx.objects.all();
    if (objs.length > before) {
      // The FAULT was made; only the HWPT failed.
      assert.equal(objs.length, before + 1);
      assert.equal(objs[objs.length - 1]!.users, 2); // table + its fd
    } else {
      assert.equal(t.caller.fds.open, 0, `k=${k}`);
    }
  }
  assert.fail('no success within 50 failure points');
});
