// IOAS ioctls on the raw entry (01 §4.2-4.11): every check-order step and
// errno, copy-back rules, and the page/pin/accounting effects (05 §4).
import assert from 'node:assert/strict';
import test from 'node:test';
import { fail, isErrno, type ErrnoName } from '../uapi/errno.js';
import { OPTION, TEST_OP, VFIO_IOAS_OP } from '../uapi/enums.js';
import { IO } from '../uapi/ioctls.js';
import { encode } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import {
  allow, checkRefs, copy, destroy, env, errOf, FIXED, ioasAlloc, iovaRanges, map, MAP_RW, mockDomain, option, pins,
  PS, raw, rawErr, rangesBuf, testCmd, U64_MAX, unmap, type Env,
} from './ioas_test_helpers.js';
import { PhysAllocator, PROT_READ, SimMemory, defaultProcess, type SimPage } from './simmem.js';
import { PAGE_SIZE, type FileBacking, type PhysPage } from './usermem.js';
import { SimpleFdTable } from './file.js';

const is = (code: ErrnoName) => (e: unknown): boolean => isErrno(e, code);
const MiB = 1n << 20n;

/** A 2 MiB-aligned buffer of `len` bytes. */
function buffer(e: Env, len: bigint | number): bigint {
  const base = e.mem.mmap(Number(len) + (2 << 20));
  const aligned = (base + (2n << 20n) - 1n) & ~((2n << 20n) - 1n);
  return aligned;
}

// ---- IOAS_ALLOC ------------------------------------------------------------------------

test('IOAS_ALLOC: flags must be 0 (EOPNOTSUPP), IDs are the lowest free', () => {
  const e = env();
  assert.throws(() => raw(e, 'IOAS_ALLOC', S.iommu_ioas_alloc, { flags: 1 }), is('EOPNOTSUPP'));
  assert.equal(ioasAlloc(e), 1);
  assert.equal(ioasAlloc(e), 2);
  destroy(e, 1);
  assert.equal(ioasAlloc(e), 1);
});

test('IOAS_ALLOC: a copy-back fault gives EFAULT and leaves no object', () => {
  const e = env();
  const addr = e.mem.alloc(16);
  e.mem.write(addr, encode(S.iommu_ioas_alloc, { size: 12 }));
  e.mem.mprotect(addr, 4096, PROT_READ);
  assert.throws(() => e.ctx.ioctl(IO(0x81), addr, e.caller), is('EFAULT'));
  assert.equal(e.ctx.objects.size, 0);
  assert.equal(ioasAlloc(e), 1);
});

// ---- ALLOW_IOVAS --------------------------------------------------------------------------

test('ALLOW_IOVAS: reserved word, lookup, user copy, range checks in order', () => {
  const e = env();
  const id = ioasAlloc(e);
  const good = rangesBuf(e, [[0x10000n, 0x1ffffn]]);
  const call = (v: Partial<{ __reserved: number; ioas_id: number; num_iovas: number; allowed_iovas: bigint }>) =>
    raw(e, 'IOAS_ALLOW_IOVAS', S.iommu_ioas_allow_iovas, { ioas_id: id, num_iovas: 1, allowed_iovas: good, ...v });
  assert.throws(() => call({ __reserved: 1, ioas_id: 99 }), is('EOPNOTSUPP'));
  assert.throws(() => call({ ioas_id: 99, allowed_iovas: 0n }), is('ENOENT'));
  assert.throws(() => call({ allowed_iovas: 0n }), is('EFAULT'));
  assert.throws(() => allow(e, id, [[0x1000n, 0x1000n]]), is('EINVAL'));
  assert.throws(() => allow(e, id, [[0x2000n, 0x1000n]]), is('EINVAL'));
  assert.throws(() => allow(e, id, [[0x1000n, 0x4fffn], [0x4000n, 0x8000n]]), is('EINVAL'));
  // Only the first entry is readable: EFAULT on the second.
  const page = e.mem.mmap(4096);
  e.mem.write(page + 4080n, e.mem.read(rangesBuf(e, [[0x1000n, 0x1fffn]]), 16));
  assert.throws(() => call({ num_iovas: 2, allowed_iovas: page + 4080n }), is('EFAULT'));
  allow(e, id, [[0x1000n, 0x1fffn], [0x3000n, 0x3fffn]]);
  call({ num_iovas: 0 });
});

test('ALLOW_IOVAS: intersecting a reserved range is EADDRINUSE and keeps the old list; allowed ranges block reservations', () => {
  const e = env();
  const id = ioasAlloc(e);
  allow(e, id, [[0x100000n, 0x1fffffn]]);
  testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x400000n, length: 0x1000n });
  assert.throws(() => allow(e, id, [[0x400000n, 0x4fffffn]]), is('EADDRINUSE'));
  // The old list is still in force: auto IOVA lands inside it.
  const va = buffer(e, 0x1000);
  assert.equal(map(e, id, va, 0x1000n), 0x100000n);
  assert.throws(() => testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x1f0000n, length: 0x20000n }), is('EADDRINUSE'));
  // Allowed ranges do not change IOVA_RANGES and do not restrict fixed maps.
  assert.deepEqual(iovaRanges(e, id).ranges, [[0n, 0x3fffffn], [0x401000n, U64_MAX]]);
  assert.equal(map(e, id, va, 0x1000n, { iova: 0x800000n }), 0x800000n);
});

// ---- IOVA_RANGES ----------------------------------------------------------------------------

test('IOVA_RANGES: reserved word, lookup, fresh IOAS is [0, U64_MAX] with alignment 1', () => {
  const e = env();
  const id = ioasAlloc(e);
  assert.throws(() => raw(e, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: 77, __reserved: 1 }), is('EOPNOTSUPP'));
  assert.throws(() => raw(e, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: 77 }), is('ENOENT'));
  assert.deepEqual(iovaRanges(e, id), { ranges: [[0n, U64_MAX]], align: 1n });
});

test('IOVA_RANGES: EMSGSIZE after copying back the count; EFAULT on a bad array', () => {
  const e = env();
  const id = ioasAlloc(e);
  testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x10000n, length: 0x10000n });
  testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x40000n, length: 0x10000n });
  const r = rawErr(e, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: id, num_iovas: 0 });
  assert.equal(r.err, 'EMSGSIZE');
  assert.equal(r.out.num_iovas, 3);
  assert.equal(r.out.out_iova_alignment, 1n);
  const buf = e.mem.alloc(64);
  const r2 = rawErr(e, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: id, num_iovas: 1, allowed_iovas: buf });
  assert.equal(r2.err, 'EMSGSIZE');
  const dv = new DataView(e.mem.read(buf, 32).buffer);
  assert.equal(dv.getBigUint64(0, true), 0n);
  assert.equal(dv.getBigUint64(8, true), 0xffffn);
  assert.equal(dv.getBigUint64(16, true), 0n, 'only num_iovas_in entries are written');
  assert.equal(rawErr(e, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: id, num_iovas: 3, allowed_iovas: 8n }).err,
    'EFAULT');
  assert.deepEqual(iovaRanges(e, id).ranges, [[0n, 0xffffn], [0x20000n, 0x3ffffn], [0x50000n, U64_MAX]]);
});

test('IOVA_RANGES: a mock domain narrows to its aperture and sets alignment to the mock page', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    const md = mockDomain(e, id);
    assert.deepEqual(iovaRanges(e, id), { ranges: [[1n << 24n, (1n << 31n) - 1n]], align: 2048n });
    destroy(e, md.stdev);
    assert.deepEqual(iovaRanges(e, id), { ranges: [[0n, U64_MAX]], align: 1n });
  }
});

// ---- MAP -------------------------------------------------------------------------------------

test('MAP: argument checks in kernel order', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    const va = buffer(e, 0x10000);
    const m = (v: Record<string, unknown>) =>
      raw(e, 'IOAS_MAP', S.iommu_ioas_map, { flags: MAP_RW, ioas_id: id, user_va: va, length: 0x1000n, ...v });
    assert.throws(() => m({ flags: 8, ioas_id: 99 }), is('EOPNOTSUPP'));
    assert.throws(() => m({ __reserved: 1, ioas_id: 99 }), is('EOPNOTSUPP'));
    assert.throws(() => m({ iova: U64_MAX, flags: 0, ioas_id: 99 }), is('EOVERFLOW'));
    assert.throws(() => m({ length: U64_MAX, flags: 0, ioas_id: 99 }), is('EOVERFLOW'));
    assert.throws(() => m({ flags: FIXED, ioas_id: 99 }), is('EINVAL'));
    assert.throws(() => m({ ioas_id: 99, length: 0n }), is('ENOENT'));
    assert.throws(() => m({ length: 0n }), is('EINVAL'));
    assert.throws(() => m({ user_va: U64_MAX - 0x10n, length: 0x20n }), is('EOVERFLOW'));
    assert.throws(() => m({ user_va: 0n, length: U64_MAX - 1n }), is('EINVAL'));
    // Automatic placement: length >= 2^63 - 1 overflows the alignment computation.
    assert.throws(() => m({ user_va: 0x1000n, length: (1n << 63n) - 1n }), is('EOVERFLOW'));
    // Fixed placement.
    assert.throws(() => m({ flags: MAP_RW | FIXED, iova: U64_MAX - 0x10n, length: 0x100n }), is('EOVERFLOW'));
    testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x100000n, length: 0x1000n });
    assert.throws(() => m({ flags: MAP_RW | FIXED, iova: 0x100800n }), is('EINVAL'));
    m({ flags: MAP_RW | FIXED, iova: 0x200000n });
    assert.throws(() => m({ flags: MAP_RW | FIXED, iova: 0x200fffn, length: 0x10n }), is('EEXIST'));
    assert.equal(e.ctx.objects.size, 1);
  }
});

test('MAP: alignment rules with a mock domain (length, IOVA, page offset, natural alignment)', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    mockDomain(e, id);
    const va = buffer(e, 0x10000);
    const m = (v: Record<string, unknown>) =>
      raw(e, 'IOAS_MAP', S.iommu_ioas_map, { flags: MAP_RW, ioas_id: id, user_va: va, length: 0x1000n, ...v });
    assert.throws(() => m({ length: 0x400n }), is('EINVAL'));
    assert.throws(() => m({ flags: MAP_RW | FIXED, iova: 0x1000400n }), is('EINVAL'));
    assert.throws(() => m({ flags: MAP_RW | FIXED, iova: 0x1000000n, user_va: va + 0x400n }), is('EINVAL'));
    // Natural alignment of the source address (1 KiB) is below the IOAS's 2 KiB.
    assert.throws(() => m({ user_va: va + 0x400n, length: 0x800n }), is('EINVAL'));
    assert.equal(m({ user_va: va + 0x800n, length: 0x800n }).out.iova, 0x1000800n);
  }
});

test('MAP: automatic IOVA follows the worked example and keeps the sub-page offset', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 4n * MiB);
  assert.equal(map(e, id, va, 0x10000n), 0x10000n);
  assert.equal(map(e, id, va, 0x10000n), 0x20000n);
  // A VA with 0x800 in-page offset: IOVA keeps it.
  const iova = map(e, id, va + 0x800n, 0x800n);
  assert.equal(iova % PS, 0x800n);
  // 2 MiB cap: a 4 MiB map from a 2 MiB-aligned VA is 2 MiB aligned.
  assert.equal(map(e, id, va, 4n * MiB) % (2n * MiB), 0n);
});

test('MAP: ENOSPC when no allowed window fits; windows exclude page 0 and the last page', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x10000);
  allow(e, id, [[0n, 0x1fffn]]);
  assert.equal(map(e, id, va, 0x1000n), 0x1000n);
  assert.throws(() => map(e, id, va, 0x1000n), is('ENOSPC'));
  allow(e, id, [[U64_MAX - 0x1fffn, U64_MAX]]);
  assert.equal(map(e, id, va, 0x1000n), U64_MAX - 0x1fffn);
  assert.throws(() => map(e, id, va, 0x1000n), is('ENOSPC'));
});

test('MAP: without a domain nothing is pinned or even checked', () => {
  const e = env();
  const id = ioasAlloc(e);
  assert.equal(map(e, id, 0x80000000n, 0x10000n, { iova: 0x1000000n }), 0x1000000n);
  const va = buffer(e, 0x10000);
  map(e, id, va, 0x10000n, { iova: 0x2000000n });
  assert.deepEqual(pins(e, va, 0x10000n), new Array(16).fill(0));
  checkRefs(e, va, 0x10000n, 0);
  // Attaching a domain now must pin: the unmapped VA makes it fail with EFAULT.
  assert.throws(() => mockDomain(e, id), is('EFAULT'));
  assert.deepEqual(pins(e, va, 0x10000n), new Array(16).fill(0));
  unmap(e, id, 0x1000000n, 0x10000n);
  const md = mockDomain(e, id);
  checkRefs(e, va, 0x10000n, 1);
  destroy(e, md.stdev);
  checkRefs(e, va, 0x10000n, 0);
});

test('MAP: with a domain, holes give EFAULT and leave nothing behind; one pin per MAP', () => {
  const e = env();
  const id = ioasAlloc(e);
  mockDomain(e, id);
  mockDomain(e, id);
  const va = buffer(e, 0x10000);
  e.mem.munmap(va + 0x4000n, 0x1000n);
  assert.throws(() => map(e, id, va, 0x8000n, { iova: 0x1000000n }), is('EFAULT'));
  assert.deepEqual(pins(e, va, 0x4000n), [0, 0, 0, 0]);
  assert.equal(map(e, id, va, 0x4000n, { iova: 0x1000000n }), 0x1000000n);
  map(e, id, va, 0x4000n, { iova: 0x2000000n });
  assert.deepEqual(pins(e, va, 0x4000n), [2, 2, 2, 2]);
  // The partially covered first page of an unaligned map is pinned too.
  map(e, id, va + 0x3800n, 0x800n, { iova: 0x3000800n });
  assert.deepEqual(pins(e, va, 0x4000n), [2, 2, 2, 3]);
});

test('MAP: WRITEABLE map of read-only memory fails at pin time (EFAULT)', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x2000);
  e.mem.mprotect(va, 0x2000n, PROT_READ);
  map(e, id, va, 0x2000n, { iova: 0x1000000n });
  assert.throws(() => mockDomain(e, id), is('EFAULT'));
  unmap(e, id, 0x1000000n, 0x2000n);
  mockDomain(e, id);
  assert.throws(() => map(e, id, va, 0x2000n, { iova: 0x1000000n }), is('EFAULT'));
  assert.equal(map(e, id, va, 0x2000n, { iova: 0x1000000n, flags: 4 }), 0x1000000n);
});

test('MAP: a copy-back fault returns EFAULT but the mapping stays', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x1000);
  const addr = e.mem.alloc(64);
  e.mem.write(addr, encode(S.iommu_ioas_map, { size: 40, flags: MAP_RW | FIXED, ioas_id: id, user_va: va, length: 0x1000n, iova: 0x5000n }));
  e.mem.mprotect(addr, 4096, PROT_READ);
  assert.throws(() => e.ctx.ioctl(IO(0x85), addr, e.caller), is('EFAULT'));
  assert.equal(unmap(e, id, 0x5000n, 0x1000n), 0x1000n);
});

test('MAP: memlock accounting per pages object (per-user and per-process), ENOMEM leaves nothing', () => {
  for (const mode of [0n, 1n]) {
    const e = env('mainline', { capIpcLock: false, memlockLimit: 4 * PAGE_SIZE, uid: 1000 + Number(mode) });
    if (mode) option(e, OPTION.RLIMIT_MODE, OPTION.OP_SET, 0, 1n);
    const id = ioasAlloc(e);
    mockDomain(e, id);
    const va = buffer(e, 0x10000);
    const charged = (): number => (mode ? e.mem.process.lockedPages : e.emu.userAccounting.get(e.mem.process.uid));
    map(e, id, va, 0x3000n, { iova: 0x1000000n });
    assert.equal(charged(), 3);
    assert.throws(() => map(e, id, va, 0x2000n, { iova: 0x2000000n }), is('ENOMEM'));
    assert.equal(charged(), 3);
    assert.deepEqual(pins(e, va, 0x3000n), [1, 1, 1]);
    assert.throws(() => unmap(e, id, 0x2000000n, 0x2000n), is('ENOENT'));
    // COPY shares the pages: no new charge.
    copy(e, id, id, 0x1000000n, 0x3000n, { dstIova: 0x3000000n });
    assert.equal(charged(), 3);
    unmap(e, id, 0x1000000n, 0x3000n);
    assert.equal(charged(), 3);
    unmap(e, id, 0x3000000n, 0x3000n);
    assert.equal(charged(), 0);
    e.ctx.put();
  }
});

test('MAP: CAP_IPC_LOCK callers are never charged', () => {
  const e = env('mainline', { capIpcLock: true, memlockLimit: 0 });
  const id = ioasAlloc(e);
  mockDomain(e, id);
  map(e, id, buffer(e, 0x4000), 0x4000n, { iova: 0x1000000n });
  assert.equal(e.emu.userAccounting.get(e.mem.process.uid), 0);
});

test('MAP: pins are taken from the source process; a gone source gives EFAULT on attach', () => {
  const e = env();
  const id = ioasAlloc(e);
  const child = e.mem.fork();
  const childCaller = { mem: child, fds: new SimpleFdTable() };
  const va = child.mmap(0x4000, { shared: true });
  const addr = child.alloc(64);
  child.write(addr, encode(S.iommu_ioas_map, { size: 40, flags: MAP_RW | FIXED, ioas_id: id, user_va: va, length: 0x4000n, iova: 0x1000000n }));
  e.ctx.ioctl(IO(0x85), addr, childCaller);
  child.exit();
  assert.throws(() => mockDomain(e, id), is('EFAULT'));
  assert.equal(e.ctx.objects.size, 1);
});

// ---- COPY --------------------------------------------------------------------------------------

test('COPY: argument checks in kernel order', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const a = ioasAlloc(e);
    const b = ioasAlloc(e);
    const va = buffer(e, 0x10000);
    map(e, a, va, 0x4000n, { iova: 0x10000n });
    map(e, a, va, 0x4000n, { iova: 0x14000n, flags: 4 });
    const c = (v: Record<string, unknown>) => raw(e, 'IOAS_COPY', S.iommu_ioas_copy, {
      flags: MAP_RW, dst_ioas_id: b, src_ioas_id: a, length: 0x4000n, src_iova: 0x10000n, ...v,
    });
    assert.throws(() => c({ flags: 8, src_ioas_id: 99 }), is('EOPNOTSUPP'));
    assert.throws(() => c({ length: U64_MAX, src_ioas_id: 99 }), is('EOVERFLOW'));
    assert.throws(() => c({ src_iova: U64_MAX, src_ioas_id: 99 }), is('EOVERFLOW'));
    assert.throws(() => c({ dst_iova: U64_MAX, src_ioas_id: 99 }), is('EOVERFLOW'));
    assert.throws(() => c({ flags: FIXED, src_ioas_id: 99 }), is('EINVAL'));
    assert.throws(() => c({ src_ioas_id: 99, dst_ioas_id: 98 }), is('ENOENT'));
    assert.throws(() => c({ length: 0n, dst_ioas_id: 98 }), is('EINVAL'));
    assert.throws(() => c({ src_iova: U64_MAX - 1n, length: 0x10n, dst_ioas_id: 98 }), is('EOVERFLOW'));
    assert.throws(() => c({ src_iova: 0x8000n, dst_ioas_id: 98 }), is('ENOENT'));
    assert.throws(() => c({ length: 0x9000n, dst_ioas_id: 98 }), is('ENOENT'));
    assert.throws(() => c({ dst_ioas_id: 98 }), is('ENOENT'));
    // WRITEABLE from read-only source pages.
    assert.throws(() => c({ src_iova: 0x14000n }), is('EPERM'));
    assert.throws(() => c({ src_iova: 0x12000n }), is('EPERM'));
    // Spanning two back-to-back areas and starting inside one is fine.
    assert.equal(c({ src_iova: 0x12000n, flags: 4 }).out.dst_iova > 0n, true);
    c({ flags: MAP_RW | FIXED, dst_iova: 0x100000n });
    assert.throws(() => c({ flags: MAP_RW | FIXED, dst_iova: 0x102000n }), is('EEXIST'));
    assert.equal(e.emu.profile.name, profile);
  }
});

test('COPY: the destination shares the pinned pages (one pin), one area per source segment', () => {
  const e = env();
  const a = ioasAlloc(e);
  const b = ioasAlloc(e);
  mockDomain(e, a);
  mockDomain(e, b);
  const va = buffer(e, 0x10000);
  map(e, a, va, 0x2000n, { iova: 0x1000000n });
  map(e, a, va + 0x2000n, 0x2000n, { iova: 0x1002000n });
  copy(e, b, a, 0x1001000n, 0x2000n, { dstIova: 0x1000000n });
  assert.deepEqual(pins(e, va, 0x4000n), [1, 1, 1, 1]);
  // Two areas in the destination: unmapping half of the copy is ENOENT, the exact pieces work.
  assert.throws(() => unmap(e, b, 0x1000800n, 0x1000n), is('ENOENT'));
  assert.equal(unmap(e, b, 0x1000000n, 0x1000n), 0x1000n);
  assert.equal(unmap(e, b, 0x1001000n, 0x1000n), 0x1000n);
  unmap(e, a, 0x1000000n, 0x4000n);
  assert.deepEqual(pins(e, va, 0x4000n), [0, 0, 0, 0]);
});

// ---- UNMAP ---------------------------------------------------------------------------------------

test('UNMAP: lookup first, then EOVERFLOW/EINVAL/EOVERFLOW, unmap-all of an empty IOAS is 0', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    const u = (v: Record<string, unknown>) => raw(e, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: id, ...v });
    assert.throws(() => u({ ioas_id: 9, iova: U64_MAX, length: 0n }), is('ENOENT'));
    assert.equal(u({ iova: 0n, length: U64_MAX }).out.length, 0n);
    assert.throws(() => u({ iova: U64_MAX, length: 1n }), is('EOVERFLOW'));
    assert.throws(() => u({ iova: 1n, length: U64_MAX }), is('EOVERFLOW'));
    assert.throws(() => u({ iova: 1n, length: 0n }), is('EINVAL'));
    assert.throws(() => u({ iova: U64_MAX - 1n, length: 3n }), is('EOVERFLOW'));
    assert.throws(() => u({ iova: 0x1000n, length: 0x1000n }), is('ENOENT'));
  }
});

test('UNMAP: whole areas only; holes are fine; partial completion keeps earlier areas unmapped', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x10000);
  map(e, id, va, 0x1000n, { iova: 0x10000n });
  map(e, id, va, 0x1000n, { iova: 0x12000n });
  map(e, id, va, 0x2000n, { iova: 0x14000n });
  assert.throws(() => unmap(e, id, 0x10000n, 0x800n), is('ENOENT'));
  const r = rawErr(e, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: id, iova: 0x10000n, length: 0x5000n });
  assert.equal(r.err, 'ENOENT');
  assert.equal(r.out.length, 0x5000n, 'length is not reported on error');
  // The first two areas went before the walk hit the partly covered third.
  assert.throws(() => unmap(e, id, 0x10000n, 0x1000n), is('ENOENT'));
  assert.equal(unmap(e, id, 0x0n, 0x100000n), 0x2000n);
  map(e, id, va, 0x1000n, { iova: 0x10000n });
  map(e, id, va, 0x1000n, { iova: 0x30000n });
  assert.equal(unmap(e, id, 0n, U64_MAX), 0x2000n);
});

test('UNMAP: an access holding pins is told to unpin, then the unmap succeeds', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x10000);
  map(e, id, va, 0x4000n, { iova: 0x10000n });
  const fd = testCmd(e, TEST_OP.CREATE_ACCESS, id, { flags: 1 }).out_access_fd;
  testCmd(e, TEST_OP.ACCESS_PAGES, fd, { iova: 0x11000n, length: 0x1000n, uptr: 0n });
  assert.deepEqual(pins(e, va, 0x4000n), [0, 1, 0, 0]);
  assert.equal(unmap(e, id, 0x10000n, 0x4000n), 0x4000n);
  assert.deepEqual(pins(e, va, 0x4000n), [0, 0, 0, 0]);
  e.fds.close(fd);
});

// ---- MAP_FILE and CHANGE_PROCESS ----------------------------------------------------------------------

class SimFile implements FileBacking {
  readonly pages: SimPage[] = [];
  constructor(public size: bigint, readonly pinnable = true, phys = new PhysAllocator()) {
    for (let i = 0n; i < (size + PS - 1n) / PS; i++) this.pages.push(phys.alloc());
  }
  getPages(index: number, npages: number): PhysPage[] {
    if (index + npages > this.pages.length) fail('EFAULT');
    return this.pages.slice(index, index + npages);
  }
}

/** User memory whose fd table knows some pinnable (memfd-like) files. */
class FileMemory extends SimMemory {
  readonly files = new Map<number, FileBacking>();
  getFile(fd: number): FileBacking {
    return this.files.get(fd) ?? fail('EBADF');
  }
}

function fileEnv(proc = {}): Env & { fmem: FileMemory } {
  const e = env('mainline', proc);
  const fmem = new FileMemory(defaultProcess(proc));
  const fds = new SimpleFdTable();
  return { ...e, mem: fmem, fds, caller: { mem: fmem, fds }, ctx: e.emu.open(fmem), fmem };
}

test('MAP_FILE: checks in kernel order, lazy pinning, unpinnable files fail at pin time', () => {
  const e = fileEnv();
  e.fmem.files.set(5, new SimFile(0x10000n));
  e.fmem.files.set(6, new SimFile(0x10000n, false));
  const id = ioasAlloc(e);
  const m = (v: Record<string, unknown>) => raw(e, 'IOAS_MAP_FILE', S.iommu_ioas_map_file, {
    flags: MAP_RW, ioas_id: id, fd: 5, start: 0n, length: 0x4000n, ...v,
  });
  assert.throws(() => m({ flags: 8, ioas_id: 9 }), is('EOPNOTSUPP'));
  assert.throws(() => m({ iova: U64_MAX, flags: 0, ioas_id: 9 }), is('EOVERFLOW'));
  assert.throws(() => m({ length: U64_MAX, flags: 0, ioas_id: 9 }), is('EOVERFLOW'));
  assert.throws(() => m({ flags: FIXED, ioas_id: 9 }), is('EINVAL'));
  assert.throws(() => m({ ioas_id: 9, length: 0n }), is('ENOENT'));
  assert.throws(() => m({ length: 0n, fd: -1 }), is('EINVAL'));
  assert.throws(() => m({ start: U64_MAX - 1n, fd: -1 }), is('EOVERFLOW'));
  assert.throws(() => m({ fd: 77 }), is('EBADF'));
  assert.throws(() => m({ fd: -1 }), is('EBADF'));
  // The auto-IOVA hint is the file offset: offset 0x2000 → 8 KiB natural alignment.
  assert.equal(m({ start: 0x2000n, length: 0x2000n }).out.iova, 0x2000n);
  unmap(e, id, 0x2000n, 0x2000n);
  m({ fd: 6, flags: MAP_RW | FIXED, iova: 0x2000000n });
  assert.throws(() => mockDomain(e, id), is('EINVAL'));
  unmap(e, id, 0x2000000n, 0x4000n);
  mockDomain(e, id);
  m({ flags: MAP_RW | FIXED, iova: 0x1000000n });
  assert.equal((e.fmem.files.get(5) as SimFile).pages[0]!.pins, 1);
});

test('MAP_FILE: pinning needs whole pages before i_size: a partial last page or a truncated file is EINVAL', () => {
  const e = fileEnv();
  const f = new SimFile(0x3800n); // three and a half pages
  e.fmem.files.set(5, f);
  const id = ioasAlloc(e);
  mockDomain(e, id);
  const m = (start: bigint, length: bigint) => errOf(() => raw(e, 'IOAS_MAP_FILE', S.iommu_ioas_map_file, {
    flags: MAP_RW, ioas_id: id, fd: 5, start, length,
  }));
  assert.equal(m(0n, 0x4000n), 'EINVAL'); // the last page is partial
  assert.equal(m(0x3000n, 0x800n), 'EINVAL');
  assert.equal(m(0n, 0x3000n), 0);
  // Truncated: nothing of it can be pinned any more (what is pinned stays).
  f.size = 0n;
  assert.equal(m(0n, 0x1000n), 'EINVAL');
  assert.equal(f.pages[0]!.pins, 1);
  // Without a domain nothing is pinned, so the map itself succeeds.
  const id2 = ioasAlloc(e);
  assert.equal(errOf(() => raw(e, 'IOAS_MAP_FILE', S.iommu_ioas_map_file,
    { flags: MAP_RW, ioas_id: id2, fd: 5, start: 0n, length: 0x4000n })), 0);
});

test('MAP_FILE and CHANGE_PROCESS are absent in 6.12 (ENOTTY)', () => {
  const e = env('6.12');
  assert.throws(() => raw(e, 'IOAS_MAP_FILE', S.iommu_ioas_map_file, {}, 40), is('ENOTTY'));
  assert.throws(() => raw(e, 'IOAS_CHANGE_PROCESS', S.iommu_ioas_change_process, {}, 8), is('ENOTTY'));
});

test('CHANGE_PROCESS: reserved word, user-VA areas refused, charge moves to the caller', () => {
  const e = fileEnv({ capIpcLock: false, memlockLimit: 1 << 20, uid: 1 });
  option(e, OPTION.RLIMIT_MODE, OPTION.OP_SET, 0, 1n);
  e.fmem.files.set(5, new SimFile(0x10000n));
  const id = ioasAlloc(e);
  mockDomain(e, id);
  raw(e, 'IOAS_MAP_FILE', S.iommu_ioas_map_file, { flags: MAP_RW | FIXED, ioas_id: id, fd: 5, length: 0x4000n, iova: 0x1000000n });
  assert.equal(e.fmem.process.lockedPages, 4);
  assert.throws(() => raw(e, 'IOAS_CHANGE_PROCESS', S.iommu_ioas_change_process, { __reserved: 1 }), is('EOPNOTSUPP'));
  // Another process of the same user takes over.
  const other = e.fmem.fork();
  const otherCaller = { mem: other, fds: new SimpleFdTable() };
  const call = (caller: typeof otherCaller): ErrnoName | 0 => errOf(() => {
    const addr = caller.mem.alloc(8);
    caller.mem.write(addr, encode(S.iommu_ioas_change_process, { size: 8 }));
    e.ctx.ioctl(IO(0x92), addr, caller);
  });
  other.process.memlockLimit = 2 * PAGE_SIZE;
  assert.equal(call(otherCaller), 'ENOMEM');
  assert.equal(e.fmem.process.lockedPages, 4);
  assert.equal(other.process.lockedPages, 0);
  other.process.memlockLimit = 1 << 20;
  assert.equal(call(otherCaller), 0);
  assert.equal(e.fmem.process.lockedPages, 0);
  assert.equal(other.process.lockedPages, 4);
  // A user-VA area anywhere in the context makes it EINVAL.
  const id2 = ioasAlloc(e);
  map(e, id2, buffer(e, 0x1000), 0x1000n);
  assert.equal(call(otherCaller), 'EINVAL');
});

// ---- OPTION -------------------------------------------------------------------------------------------

test('OPTION: reserved word and unknown option are EOPNOTSUPP; RLIMIT_MODE rules', () => {
  const e = env('mainline', { capSysResource: false });
  const o = (v: Record<string, unknown>) => raw(e, 'OPTION', S.iommu_option, v);
  assert.throws(() => o({ __reserved: 1, option_id: 0 }), is('EOPNOTSUPP'));
  assert.throws(() => o({ option_id: 2 }), is('EOPNOTSUPP'));
  assert.throws(() => o({ option_id: OPTION.RLIMIT_MODE, object_id: 1, op: OPTION.OP_GET }), is('EOPNOTSUPP'));
  assert.equal(option(e, OPTION.RLIMIT_MODE, OPTION.OP_GET, 0, 5n), 0n);
  assert.throws(() => option(e, OPTION.RLIMIT_MODE, OPTION.OP_SET, 0, 1n), is('EPERM'));
  assert.throws(() => option(e, OPTION.RLIMIT_MODE, 2, 0), is('EOPNOTSUPP'));
  const r = env();
  assert.throws(() => option(r, OPTION.RLIMIT_MODE, OPTION.OP_SET, 0, 2n), is('EINVAL'));
  assert.equal(option(r, OPTION.RLIMIT_MODE, OPTION.OP_SET, 0, 1n), 1n);
  assert.equal(option(r, OPTION.RLIMIT_MODE, OPTION.OP_GET, 0), 1n);
  ioasAlloc(r);
  assert.throws(() => option(r, OPTION.RLIMIT_MODE, OPTION.OP_SET, 0, 0n), is('EBUSY'));
});

test('OPTION: copies back only val64', () => {
  const e = env();
  // The struct straddles a page boundary: its first 16 bytes are on a read-only page.
  const base = e.mem.mmap(0x2000);
  const addr = base + 0x1000n - 16n;
  e.mem.write(addr, encode(S.iommu_option, { size: 24, option_id: OPTION.RLIMIT_MODE, op: OPTION.OP_GET, val64: 7n }));
  e.mem.mprotect(base, 0x1000n, PROT_READ);
  e.ctx.ioctl(IO(0x87), addr, e.caller);
  assert.equal(new DataView(e.mem.read(addr + 16n, 8).buffer).getBigUint64(0, true), 0n);
});

test('OPTION HUGE_PAGES: lookup, GET/SET, EINVAL with domains and areas, EADDRINUSE on unaligned areas', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    assert.throws(() => option(e, OPTION.HUGE_PAGES, OPTION.OP_GET, 99), is('ENOENT'));
    assert.throws(() => option(e, OPTION.HUGE_PAGES, 5, 99), is('ENOENT'));
    assert.throws(() => option(e, OPTION.HUGE_PAGES, 5, id), is('EOPNOTSUPP'));
    assert.equal(option(e, OPTION.HUGE_PAGES, OPTION.OP_GET, id), 1n);
    assert.throws(() => option(e, OPTION.HUGE_PAGES, OPTION.OP_SET, id, 2n), is('EINVAL'));
    const va = buffer(e, 0x10000);
    map(e, id, va + 0x800n, 0x800n, { iova: 0x10800n });
    assert.throws(() => option(e, OPTION.HUGE_PAGES, OPTION.OP_SET, id, 0n), is('EADDRINUSE'));
    assert.equal(option(e, OPTION.HUGE_PAGES, OPTION.OP_GET, id), 1n);
    assert.equal(iovaRanges(e, id).align, 1n);
    unmap(e, id, 0n, U64_MAX);
    assert.equal(option(e, OPTION.HUGE_PAGES, OPTION.OP_SET, id, 0n), 0n);
    assert.equal(option(e, OPTION.HUGE_PAGES, OPTION.OP_GET, id), 0n);
    assert.equal(iovaRanges(e, id).align, PS);
    option(e, OPTION.HUGE_PAGES, OPTION.OP_SET, id, 1n);
    assert.equal(iovaRanges(e, id).align, 1n);
    mockDomain(e, id);
    map(e, id, va, 0x1000n, { iova: 0x1000000n });
    assert.throws(() => option(e, OPTION.HUGE_PAGES, OPTION.OP_SET, id, 0n), is('EINVAL'));
  }
});

// ---- VFIO_IOAS ------------------------------------------------------------------------------------------

test('VFIO_IOAS: GET/SET/CLEAR, ENODEV without a compat IOAS, destroying it clears the setting', () => {
  const e = env();
  const v = (x: Record<string, unknown>) => raw(e, 'VFIO_IOAS', S.iommu_vfio_ioas, x);
  assert.throws(() => v({ __reserved: 1 }), is('EOPNOTSUPP'));
  assert.throws(() => v({ op: VFIO_IOAS_OP.GET }), is('ENODEV'));
  assert.throws(() => v({ op: VFIO_IOAS_OP.SET, ioas_id: 5 }), is('ENOENT'));
  assert.throws(() => v({ op: 3 }), is('EOPNOTSUPP'));
  const id = ioasAlloc(e);
  const r = v({ op: VFIO_IOAS_OP.SET, ioas_id: id });
  assert.equal(r.out.ioas_id, id);
  assert.equal(v({ op: VFIO_IOAS_OP.GET }).out.ioas_id, id);
  v({ op: VFIO_IOAS_OP.CLEAR });
  assert.throws(() => v({ op: VFIO_IOAS_OP.GET }), is('ENODEV'));
  v({ op: VFIO_IOAS_OP.SET, ioas_id: id });
  destroy(e, id);
  assert.throws(() => v({ op: VFIO_IOAS_OP.GET }), is('ENODEV'));
});

// ---- lifetime ------------------------------------------------------------------------------------------

test('IOAS destroy: EBUSY while a domain or access holds it; destroying unmaps everything', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x10000);
  map(e, id, va, 0x4000n, { iova: 0x1000000n });
  const md = mockDomain(e, id);
  assert.throws(() => destroy(e, id), is('EBUSY'));
  destroy(e, md.stdev);
  const fd = testCmd(e, TEST_OP.CREATE_ACCESS, id, { flags: 1 }).out_access_fd;
  assert.throws(() => destroy(e, id), is('EBUSY'));
  e.fds.close(fd);
  destroy(e, id);
  assert.equal(e.ctx.objects.size, 0);
});

test('Closing the context drops every pin before returning', () => {
  const e = env();
  const id = ioasAlloc(e);
  mockDomain(e, id);
  const va = buffer(e, 0x10000);
  map(e, id, va, 0x10000n);
  const id2 = ioasAlloc(e);
  copy(e, id2, id, 0x1000000n, 0x10000n, { dstIova: 0x1000000n });
  mockDomain(e, id2);
  checkRefs(e, va, 0x10000n, 1);
  e.ctx.put();
  assert.deepEqual(pins(e, va, 0x10000n), new Array(16).fill(0));
  const again = env(undefined, {}, e.emu);
  void again;
});

test('Typed API path: the same handlers answer through IommufdCtx.call (no raw copy-back)', async () => {
  const { openIommufd } = await import('../api.js');
  const fd = openIommufd({ profile: 'mainline' });
  const id = fd.ioasAlloc();
  const mem = fd.mem as SimMemory;
  const va = mem.mmap(0x10000);
  assert.equal(fd.ioasMap({ ioasId: id, userVa: va, length: 0x1000n, iova: 0x4000n }), 0x4000n);
  for (let i = 0; i < 20; i++) fd.testCmd(TEST_OP.ADD_RESERVED, id, { start: 0x100000n * BigInt(i + 1), length: 0x1000n });
  assert.equal(fd.ioasIovaRanges(id).ranges.length, 21);
  assert.equal(fd.option(OPTION.HUGE_PAGES, OPTION.OP_GET, id), 1n);
  assert.equal(fd.ioasCopy({ dstIoasId: id, srcIoasId: id, srcIova: 0x4000n, length: 0x1000n, dstIova: 0x8000n }), 0x8000n);
  assert.equal(fd.ioasUnmap(id, 0n, U64_MAX), 0x2000n);
  fd.close();
});

test('IOAS_MAP of a user range that wraps with an absurd length: 6.12 says EINVAL (length first), 7.3 EOVERFLOW (range first)', () => {
  // Found by the 7.3.4 golden traces: length 2^64 - 4096 at a user address above one page.
  for (const [profile, want] of [['6.12', 'EINVAL'], ['7.3', 'EOVERFLOW']] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    const va = e.mem.mmap(0x1000);
    assert.throws(() => map(e, id, va, (1n << 64n) - 4096n), is(want), profile);
    // a length that is only absurd, or a range that only wraps, fails the same way in both
    assert.throws(() => map(e, id, 0n, (1n << 64n) - 4096n), is('EINVAL'), profile);
    assert.throws(() => map(e, id, (1n << 64n) - 4096n, 0x2000n), is('EOVERFLOW'), profile);
  }
});
