// In-kernel accesses and the selftest ops around them (03 §4.3, §4.5,
// §4.8-4.13), through IOMMU_TEST_CMD on the raw entry, plus the access API
// that HW queues use (internal accesses, locked areas).
import { FAIL_NTH_SELFTEST } from './fault_inject.js';
import assert from 'node:assert/strict';
import test from 'node:test';
import { isErrno, type ErrnoName } from '../uapi/errno.js';
import { MOCK, TEST_OP } from '../uapi/enums.js';
import { IO } from '../uapi/ioctls.js';
import { encode } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import { SimpleFdTable } from './file.js';
import { Access } from './access.js';
import {
  checkRefs, destroy, env, ioasAlloc, iovaRanges, map, mockDomain, pins, PS, testCmd, U64_MAX, unmap,
  type Env,
} from './ioas_test_helpers.js';
import { getIoas } from './ioas.js';
import { ObjType } from './object.js';
import { PROT_READ } from './simmem.js';
import { StaccessFile } from './selftest_access.js';

const is = (code: ErrnoName) => (e: unknown): boolean => isErrno(e, code);
const NEEDS_PIN = MOCK.FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES;

function buffer(e: Env, len: number): bigint {
  return e.mem.mmap(len);
}

function createAccess(e: Env, ioasId: number, flags: number = NEEDS_PIN): number {
  return testCmd(e, TEST_OP.CREATE_ACCESS, ioasId, { flags }).out_access_fd;
}

function accessPages(e: Env, fd: number, iova: bigint, length: bigint, o: { flags?: number; uptr?: bigint } = {}): number {
  return testCmd(e, TEST_OP.ACCESS_PAGES, fd, { flags: o.flags ?? 0, iova, length, uptr: o.uptr ?? 0n }).out_access_pages_id;
}

function accessRw(e: Env, fd: number, iova: bigint, uptr: bigint, length: number, flags = 0): void {
  testCmd(e, TEST_OP.ACCESS_RW, fd, { iova, length: BigInt(length), uptr, flags });
}

// ---- ADD_RESERVED / MD_CHECK_REFS ------------------------------------------------------------

test('ADD_RESERVED: EINVAL, EOVERFLOW before the lookup; EADDRINUSE over areas; narrows IOVA_RANGES', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    assert.throws(() => testCmd(e, TEST_OP.ADD_RESERVED, 99, { start: 0n, length: 0n }), is('EINVAL'));
    assert.throws(() => testCmd(e, TEST_OP.ADD_RESERVED, 99, { start: U64_MAX, length: 2n }), is('EOVERFLOW'));
    assert.throws(() => testCmd(e, TEST_OP.ADD_RESERVED, 99, { start: 0n, length: 1n }), is('ENOENT'));
    map(e, id, buffer(e, 0x1000), 0x1000n, { iova: 0x10000n });
    assert.throws(() => testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x10fffn, length: 1n }), is('EADDRINUSE'));
    testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x20000n, length: 0x1000n });
    testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x20800n, length: 0x1000n });
    assert.deepEqual(iovaRanges(e, id).ranges, [[0n, 0x1ffffn], [0x21800n, U64_MAX]]);
    // Reserved ranges refuse fixed maps with EINVAL, and auto IOVA skips them.
    assert.throws(() => map(e, id, buffer(e, 0x1000), 0x1000n, { iova: 0x21000n }), is('EINVAL'));
  }
});

test('MD_CHECK_REFS: alignment EINVAL, EFAULT on unmapped memory, EIO on a mismatch, huge pages skipped', () => {
  const e = env();
  const va = buffer(e, 0x4000);
  checkRefs(e, va, 0x4000n, 0);
  assert.throws(() => checkRefs(e, va + 1n, 0x1000n, 0), is('EINVAL'));
  assert.throws(() => checkRefs(e, va, 0x800n, 0), is('EINVAL'));
  assert.throws(() => checkRefs(e, va, 0x4000n, 1), is('EIO'));
  assert.throws(() => checkRefs(e, 0x1000n, 0x1000n, 0), is('EFAULT'));
  const huge = e.mem.mmap(2 << 20, { hugetlb: true, shared: true });
  const id = ioasAlloc(e);
  mockDomain(e, id);
  map(e, id, huge, 0x200000n, { iova: 0x1000000n });
  checkRefs(e, huge, 0x200000n, 0);
  checkRefs(e, huge, 0x200000n, 7);
  assert.equal(pins(e, huge, 0x1000n)[0], 1);
});

// ---- CREATE_ACCESS ----------------------------------------------------------------------------

test('CREATE_ACCESS: flags, IOAS lookup (no ID left behind), fd returned, hidden ACCESS object', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    assert.throws(() => createAccess(e, id, 2), is('EOPNOTSUPP'));
    assert.throws(() => createAccess(e, 42), is('ENOENT'));
    assert.equal(e.fds.open, 0);
    assert.equal(ioasAlloc(e), 2);
    destroy(e, 2);
    const fd = createAccess(e, id);
    const file = e.fds.lookup(fd);
    assert.ok(file instanceof StaccessFile);
    assert.equal(file.name, '[iommufd_test_staccess]');
    // The access took ID 2; user space cannot destroy it, and it holds the IOAS.
    assert.equal(e.ctx.objects.get(2, ObjType.ACCESS).type, ObjType.ACCESS);
    assert.throws(() => destroy(e, 2), is('EBUSY'));
    assert.throws(() => destroy(e, id), is('EBUSY'));
    assert.equal(ioasAlloc(e), 3);
    e.fds.close(fd);
    assert.equal(ioasAlloc(e), 2);
    destroy(e, id);
  }
});

test('CREATE_ACCESS: pinning accesses force PAGE_SIZE alignment (EADDRINUSE on unaligned areas), others do not', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x2000);
  const fd0 = createAccess(e, id, 0);
  assert.equal(iovaRanges(e, id).align, 1n);
  map(e, id, va + 0x800n, 0x800n, { iova: 0x10800n });
  assert.throws(() => createAccess(e, id), is('EADDRINUSE'));
  unmap(e, id, 0x10800n, 0x800n);
  const fd = createAccess(e, id);
  assert.equal(iovaRanges(e, id).align, PS);
  assert.throws(() => map(e, id, va, 0x800n, { iova: 0x10000n }), is('EINVAL'));
  e.fds.close(fd);
  assert.equal(iovaRanges(e, id).align, 1n);
  e.fds.close(fd0);
});

test('An open access fd keeps the context alive; closing it finishes the teardown', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x4000);
  map(e, id, va, 0x4000n, { iova: 0x10000n });
  const fd = createAccess(e, id);
  accessPages(e, fd, 0x10000n, 0x4000n);
  e.ctx.put();
  assert.equal(e.ctx.closed, false);
  assert.deepEqual(pins(e, va, 0x4000n), [1, 1, 1, 1]);
  e.fds.close(fd);
  assert.equal(e.ctx.closed, true);
  assert.deepEqual(pins(e, va, 0x4000n), [0, 0, 0, 0]);
});

// ---- ACCESS_PAGES / DESTROY_ACCESS_PAGES --------------------------------------------------------

test('ACCESS_PAGES: checks in order (ENOMEM cap, flags, EBADFD, pin capability, core errors)', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    const va = buffer(e, 0x8000);
    map(e, id, va, 0x4000n, { iova: 0x10000n });
    map(e, id, va + 0x4000n, 0x1000n, { iova: 0x14000n, flags: 4 });
    const fd = createAccess(e, id);
    const nopin = createAccess(e, id, 0);
    const ap = (f: number, v: Record<string, unknown>) => testCmd(e, TEST_OP.ACCESS_PAGES, f, { iova: 0x10000n, length: 0x1000n, ...v });
    assert.throws(() => ap(12345, { length: (16n << 20n) + 1n, flags: 2 }), is('ENOMEM'));
    assert.throws(() => ap(12345, { flags: 2 }), is('EOPNOTSUPP'));
    assert.throws(() => ap(12345, {}), is('EBADFD'));
    assert.throws(() => ap(nopin, {}), is('EOPNOTSUPP'));
    assert.throws(() => ap(fd, { length: 0n }), is('EINVAL'));
    assert.throws(() => ap(fd, { iova: U64_MAX, length: 2n }), is('EOVERFLOW'));
    assert.throws(() => ap(fd, { iova: 0x20000n }), is('ENOENT'));
    assert.throws(() => ap(fd, { length: 0x6000n }), is('ENOENT'));
    assert.throws(() => ap(fd, { iova: 0x14000n, flags: MOCK.FLAGS_ACCESS_WRITE }), is('EPERM'));
    // The pages behind uptr must be the pinned ones (EBADE, and nothing stays pinned).
    assert.throws(() => ap(fd, { uptr: va + 0x1000n }), is('EBADE'));
    assert.deepEqual(pins(e, va, 0x2000n), [0, 0]);
    assert.equal(ap(fd, { uptr: va, length: 0x5000n }).out_access_pages_id, 0);
    // Pins are of whole pages: the IOVA must sit on a page boundary of the mapping.
    assert.throws(() => ap(fd, { iova: 0x10800n, uptr: va + 0x800n }), is('EINVAL'));
    assert.equal(ap(fd, { iova: 0x11000n, uptr: va + 0x1000n, flags: MOCK.FLAGS_ACCESS_WRITE }).out_access_pages_id, 1);
    assert.deepEqual(pins(e, va, 0x5000n), [1, 1, 1, 1, 1]);
    e.fds.close(fd);
    e.fds.close(nopin);
    assert.deepEqual(pins(e, va, 0x5000n), [0, 0, 0, 0, 0]);
  }
});

test('ACCESS_PAGES: SYZ flag addresses the n-th area; DESTROY_ACCESS_PAGES unpins by item id', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x4000);
  map(e, id, va, 0x2000n, { iova: 0x10000n });
  map(e, id, va + 0x2000n, 0x2000n, { iova: 0x20000n });
  const fd = createAccess(e, id);
  const item = accessPages(e, fd, (0x1000n << 32n) | 1n, 0x1000n, { flags: MOCK.FLAGS_ACCESS_SYZ, uptr: va + 0x3000n });
  assert.deepEqual(pins(e, va, 0x4000n), [0, 0, 0, 1]);
  assert.throws(() => testCmd(e, TEST_OP.DESTROY_ACCESS_PAGES, 777, { access_pages_id: item }), is('EBADFD'));
  assert.throws(() => testCmd(e, TEST_OP.DESTROY_ACCESS_PAGES, fd, { access_pages_id: item + 1 }), is('ENOENT'));
  testCmd(e, TEST_OP.DESTROY_ACCESS_PAGES, fd, { access_pages_id: item });
  assert.deepEqual(pins(e, va, 0x4000n), [0, 0, 0, 0]);
  assert.throws(() => testCmd(e, TEST_OP.DESTROY_ACCESS_PAGES, fd, { access_pages_id: item }), is('ENOENT'));
  e.fds.close(fd);
});

test('ACCESS_PAGES shares pins with a domain: one pin per pages object', () => {
  const e = env();
  const id = ioasAlloc(e);
  const md = mockDomain(e, id);
  const va = buffer(e, 0x4000);
  map(e, id, va, 0x4000n, { iova: 0x1000000n });
  const fd = createAccess(e, id);
  accessPages(e, fd, 0x1000000n, 0x4000n, { uptr: va });
  assert.deepEqual(pins(e, va, 0x4000n), [1, 1, 1, 1]);
  destroy(e, md.stdev);
  assert.deepEqual(pins(e, va, 0x4000n), [1, 1, 1, 1]);
  e.fds.close(fd);
  assert.deepEqual(pins(e, va, 0x4000n), [0, 0, 0, 0]);
});

// ---- ACCESS_RW ----------------------------------------------------------------------------------------

test('ACCESS_RW: checks in order and data movement on both paths', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const id = ioasAlloc(e);
    const va = buffer(e, 0x4000);
    map(e, id, va, 0x2000n, { iova: 0x10000n });
    map(e, id, va + 0x2000n, 0x1000n, { iova: 0x12000n, flags: 4 });
    map(e, id, va + 0x3000n, 0x1000n, { iova: 0x13000n, flags: 2 });
    const fd = createAccess(e, id, 0);
    const ubuf = e.mem.mmap(0x4000);
    assert.throws(() => accessRw(e, 999, 0x10000n, ubuf, (16 << 20) + 1, 0x80), is('ENOMEM'));
    assert.throws(() => accessRw(e, 999, 0x10000n, ubuf, 8, 2), is('EOPNOTSUPP'));
    assert.throws(() => accessRw(e, 999, 0x10000n, ubuf, 8), is('EBADFD'));
    assert.throws(() => accessRw(e, fd, 0x10000n, 0x10n, 8, MOCK.ACCESS_RW_WRITE), is('EFAULT'));
    assert.throws(() => accessRw(e, fd, 0x10000n, ubuf, 0), is('EINVAL'));
    assert.throws(() => accessRw(e, fd, 0x20000n, ubuf, 8), is('ENOENT'));
    assert.throws(() => accessRw(e, fd, 0x12000n, ubuf, 8, MOCK.ACCESS_RW_WRITE), is('EPERM'));
    assert.throws(() => accessRw(e, fd, 0x13000n, ubuf, 8), is('EPERM'));
    for (const slow of [0, MOCK.ACCESS_RW_SLOW_PATH]) {
      e.mem.write(ubuf, new Uint8Array([1, 2, 3, 4, 5, 6, 7, slow]));
      accessRw(e, fd, 0x10ffcn, ubuf, 8, MOCK.ACCESS_RW_WRITE | slow);
      assert.deepEqual([...e.mem.read(va + 0xffcn, 8)], [1, 2, 3, 4, 5, 6, 7, slow]);
      e.mem.write(va + 0x1000n, new Uint8Array([9, 8, 7]));
      accessRw(e, fd, 0x11000n, ubuf + 0x100n, 3, slow);
      assert.deepEqual([...e.mem.read(ubuf + 0x100n, 3)], [9, 8, 7]);
    }
    // Reading across two areas, and into an unwritable user buffer.
    accessRw(e, fd, 0x11800n, ubuf, 0x1000);
    e.mem.mprotect(ubuf, 0x1000n, PROT_READ);
    assert.throws(() => accessRw(e, fd, 0x10000n, ubuf, 8), is('EFAULT'));
    e.fds.close(fd);
  }
});

test('ACCESS_RW after the source unmapped its memory: several pages use the ones pinned by a domain, one page is looked up again', () => {
  const e = env();
  const id = ioasAlloc(e);
  mockDomain(e, id);
  const va = e.mem.mmap(0x2000, { shared: true });
  e.mem.write(va + 0xffen, new Uint8Array([0xaa, 0xbb, 0xcc, 0xdd]));
  map(e, id, va, 0x2000n, { iova: 0x1000000n });
  const fd = createAccess(e, id, 0);
  e.mem.munmap(va, 0x2000);
  const ubuf = e.mem.mmap(0x1000);
  // Across two pages: the pinned pages (the slow path reads the pfns the domain holds).
  accessRw(e, fd, 0x1000ffen, ubuf, 4, MOCK.ACCESS_RW_SLOW_PATH);
  assert.deepEqual([...e.mem.read(ubuf, 4)], [0xaa, 0xbb, 0xcc, 0xdd]);
  // Within one page: the page now mapped at the VA is pinned for the copy, and there is none.
  assert.throws(() => accessRw(e, fd, 0x1000ffen, ubuf, 2, MOCK.ACCESS_RW_SLOW_PATH), is('EFAULT'));
  // The fast path goes through the (now unmapped) source address space.
  assert.throws(() => accessRw(e, fd, 0x1000000n, ubuf, 2), is('EFAULT'));
  e.fds.close(fd);
});

test('ACCESS_RW over several pages on the slow path gets every page before copying: one it cannot get fails the call with nothing written', () => {
  // Found by the 6.12.117 golden traces (seed 34): WRITE|SLOW_PATH over pages of which one was unmapped.
  const e = env('6.12');
  const id = ioasAlloc(e);
  const va = buffer(e, 0x3000);
  e.mem.write(va, new Uint8Array(0x3000).fill(0x11));
  map(e, id, va, 0x3000n, { iova: 0x10000n });
  const fd = createAccess(e, id, 0);
  e.mem.munmap(va + 0x2000n, 0x1000);
  const ubuf = e.mem.mmap(0x3000);
  e.mem.write(ubuf, new Uint8Array(0x3000).fill(0x22));
  assert.throws(() => accessRw(e, fd, 0x10000n, ubuf, 0x3000, MOCK.ACCESS_RW_WRITE | MOCK.ACCESS_RW_SLOW_PATH), is('EFAULT'));
  assert.deepEqual([...new Set(e.mem.read(va, 0x2000))], [0x11]);
  // the same two pages that can be had are written
  accessRw(e, fd, 0x10000n, ubuf, 0x2000, MOCK.ACCESS_RW_WRITE | MOCK.ACCESS_RW_SLOW_PATH);
  assert.deepEqual([...new Set(e.mem.read(va, 0x2000))], [0x22]);
  e.fds.close(fd);
});

test('ACCESS_RW of one page after the source process exited reads the pages its domain pinned (the mm is gone)', () => {
  const e = env('6.12');
  const id = ioasAlloc(e);
  mockDomain(e, id);
  const va = e.mem.mmap(0x2000, { shared: true });
  e.mem.write(va, new Uint8Array(0x2000)); // populated before the fork, so both see the same pages
  const fd = createAccess(e, id, 0);
  // The child maps the shared buffer (pinned by the domain at once), then exits.
  const child = e.mem.fork();
  const addr = child.alloc(64);
  child.write(addr, encode(S.iommu_ioas_map, { size: 40, flags: 7, ioas_id: id, user_va: va, length: 0x2000n, iova: 0x1000000n }));
  e.ctx.ioctl(IO(0x85), addr, { mem: child, fds: new SimpleFdTable() });
  child.exit();
  // The parent writes the shared pages; a one-page read sees them through the pins.
  e.mem.write(va + 0x10n, new Uint8Array([1, 2, 3, 4]));
  const ubuf = e.mem.mmap(0x1000);
  accessRw(e, fd, 0x1000010n, ubuf, 4);
  assert.deepEqual([...e.mem.read(ubuf, 4)], [1, 2, 3, 4]);
  e.fds.close(fd);
});

// ---- SET_TEMP_MEMORY_LIMIT / ACCESS_REPLACE_IOAS ----------------------------------------------------

test('SET_TEMP_MEMORY_LIMIT: below 12 is EINVAL, otherwise global', () => {
  const e = env();
  assert.throws(() => testCmd(e, TEST_OP.SET_TEMP_MEMORY_LIMIT, 0, { limit: 11 }), is('EINVAL'));
  testCmd(e, TEST_OP.SET_TEMP_MEMORY_LIMIT, 0, { limit: 16 });
  assert.equal(e.emu.tempMemoryLimit, 16);
});

test('ACCESS_REPLACE_IOAS: EBADFD, ENOENT; pins on the old IOAS are dropped and references move', () => {
  const e = env();
  const a = ioasAlloc(e);
  const b = ioasAlloc(e);
  const va = buffer(e, 0x2000);
  map(e, a, va, 0x2000n, { iova: 0x10000n });
  map(e, b, va, 0x2000n, { iova: 0x10000n });
  const fd = createAccess(e, a);
  accessPages(e, fd, 0x10000n, 0x2000n);
  assert.throws(() => testCmd(e, TEST_OP.ACCESS_REPLACE_IOAS, 555, { ioas_id: b }), is('EBADFD'));
  assert.throws(() => testCmd(e, TEST_OP.ACCESS_REPLACE_IOAS, fd, { ioas_id: 55 }), is('ENOENT'));
  testCmd(e, TEST_OP.ACCESS_REPLACE_IOAS, fd, { ioas_id: b });
  assert.deepEqual(pins(e, va, 0x2000n), [0, 0]);
  assert.equal(iovaRanges(e, a).align, 1n);
  assert.equal(iovaRanges(e, b).align, PS);
  destroy(e, a);
  assert.throws(() => destroy(e, b), is('EBUSY'));
  accessPages(e, fd, 0x10000n, 0x1000n);
  assert.deepEqual(pins(e, va, 0x2000n), [1, 0]);
  e.fds.close(fd);
});

// ---- the access API (drivers, HW queues) ----------------------------------------------------------

test('An access that never unpins makes IOAS_UNMAP fail with EDEADLK after retrying', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x1000);
  map(e, id, va, 0x1000n, { iova: 0x10000n });
  let calls = 0;
  const acc = Access.create(e.ctx, { needsPinPages: true, unmap: () => { calls++; } });
  acc.attach(id);
  acc.pinPages(0x10000n, 0x1000n, false);
  assert.throws(() => unmap(e, id, 0x10000n, 0x1000n), is('EDEADLK'));
  assert.equal(calls, 101);
  // The area refuses new accesses while the unmap is pending.
  assert.throws(() => acc.pinPages(0x10000n, 0x1000n, false), is('EINVAL'));
  acc.unpinPages(0x10000n, 0x1000n);
  assert.equal(unmap(e, id, 0x10000n, 0x1000n), 0x1000n);
  acc.destroyByOwner();
  assert.equal(e.ctx.objects.size, 1);
});

test('Internal accesses lock areas: UNMAP gives EBUSY until unpinned', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = e.mem.mmap(0x4000, { hugetlb: true });
  map(e, id, va, 0x4000n, { iova: 0x10000n });
  const acc = Access.createInternal(e.ctx);
  assert.equal(acc.id, 2);
  acc.attachIoas(getIoas(e.ctx, id));
  assert.throws(() => acc.pinPages(0x10800n, 0x1000n, false, { lock: true }), is('EINVAL'));
  const pages = acc.pinPages(0x11000n, 0x2000n, false, { lock: true });
  assert.equal(pages.length, 2);
  assert.equal(pages[1]!.pfn, pages[0]!.pfn + 1);
  assert.throws(() => unmap(e, id, 0x10000n, 0x4000n), is('EBUSY'));
  assert.throws(() => unmap(e, id, 0n, U64_MAX), is('EBUSY'));
  acc.unpinPages(0x11000n, 0x2000n, { lock: true });
  assert.equal(unmap(e, id, 0n, U64_MAX), 0x4000n);
  assert.throws(() => acc.pinPages(0x10000n, 0x1000n, false), is('ENOENT'));
  acc.destroyByOwner();
  assert.equal(e.ctx.objects.size, 1);
});

test('Access errors: detached ENOENT, double attach EINVAL, pinning by a non-pinning access EINVAL; rw spans areas', () => {
  const e = env();
  const id = ioasAlloc(e);
  const va = buffer(e, 0x4000);
  const acc = Access.create(e.ctx, { needsPinPages: true, unmap: () => {} });
  assert.throws(() => acc.pinPages(0n, 1n, false), is('ENOENT'));
  assert.throws(() => acc.rw(0n, new Uint8Array(1), false), is('ENOENT'));
  assert.throws(() => acc.replace(id), is('ENOENT'));
  acc.attach(id);
  assert.throws(() => acc.attach(id), is('EINVAL'));
  acc.detach();
  map(e, id, va, 0x1800n, { iova: 0x10000n });
  map(e, id, va + 0x2000n, 0x800n, { iova: 0x11800n });
  const acc2 = Access.create(e.ctx, { needsPinPages: false });
  acc2.attach(id);
  assert.throws(() => acc2.pinPages(0x10000n, 0x1000n, false), is('EINVAL'));
  const data = new Uint8Array(0x2000);
  acc2.rw(0x10000n, data, false);
  acc2.destroyByOwner();
  acc.destroyByOwner();
  assert.equal(e.ctx.objects.size, 1);
});

// ---- fault injection (05 §6): every failure point unwinds completely ------------------------------

/**
 * Run `armed` with the k-th failure point armed, for k = 1, 2, ... until a run
 * passes every point; after each run close everything and require no object,
 * pin or charge to be left. Returns the number of failure points seen.
 */
function failNthSweep(prep: (e: Env) => { va: bigint; fds: number[] }, armed: (e: Env, st: { va: bigint; fds: number[] }) => void): number {
  for (let k = 1; k < 400; k++) {
    const e = env('mainline', { capIpcLock: false, memlockLimit: Infinity, uid: 777 });
    const st = prep(e);
    e.emu.faults.settings = { ...FAIL_NTH_SELFTEST }; // as the fail_nth selftest: every allocation
    e.emu.failNth = k;
    armed(e, st);
    const fired = e.emu.failNth === 0;
    e.emu.failNth = 0;
    for (const fd of [...st.fds]) if (e.fds.lookup(fd)) e.fds.close(fd);
    for (let fd = 1000; fd < 1100; fd++) if (e.fds.lookup(fd)) e.fds.close(fd);
    e.ctx.put();
    assert.equal(e.ctx.closed, true, `k=${k}: context still open`);
    assert.equal(e.ctx.objects.size, 0);
    assert.ok(pins(e, st.va, 0x200000n).every((p) => p === 0), `k=${k}: pins left`);
    assert.equal(e.emu.userAccounting.get(777), 0, `k=${k}: charge left`);
    if (!fired) return k;
  }
  assert.fail('400 or more failure points');
}

/** Run an op whose failure is expected and ignored (only errnos may come out). */
function tryOp(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    if (!isErrno(e)) throw e;
  }
}

test('fail-nth: basic IOAS sequence (alloc, ranges, allow, map, copy, unmap) unwinds at every point', () => {
  const n = failNthSweep((e) => ({ va: e.mem.mmap(0x200000, { shared: true }), fds: [] }), (e, st) => {
    let id = 0;
    tryOp(() => { id = ioasAlloc(e); });
    tryOp(() => iovaRanges(e, id));
    tryOp(() => testCmd(e, TEST_OP.ADD_RESERVED, id, { start: 0x100000000n, length: 0x1000n }));
    tryOp(() => map(e, id, st.va, 0x200000n));
    tryOp(() => unmap(e, id, 0n, U64_MAX));
  });
  assert.ok(n > 3);
});

test('fail-nth: map with a domain, access pin and rw unwind at every point', () => {
  const n = failNthSweep((e) => ({ va: e.mem.mmap(0x200000, { shared: true }), fds: [] }), (e, st) => {
    let id = 0;
    tryOp(() => { id = ioasAlloc(e); });
    let stdev = 0;
    tryOp(() => { stdev = mockDomain(e, id).stdev; });
    tryOp(() => map(e, id, st.va, 0x40000n, { iova: 0x1000000n }));
    let fd = -1;
    tryOp(() => { fd = createAccess(e, id); st.fds.push(fd); });
    tryOp(() => accessPages(e, fd, 0x1000000n, 0x40000n, { uptr: st.va }));
    const ubuf = e.mem.mmap(0x1000);
    tryOp(() => accessRw(e, fd, 0x1000000n, ubuf, 64, MOCK.ACCESS_RW_WRITE));
    tryOp(() => accessRw(e, fd, 0x1000000n, ubuf, 64, MOCK.ACCESS_RW_SLOW_PATH));
    tryOp(() => testCmd(e, TEST_OP.DESTROY_ACCESS_PAGES, fd, { access_pages_id: 0 }));
    tryOp(() => destroy(e, stdev));
    tryOp(() => mockDomain(e, id));
  });
  assert.ok(n > 5);
});
