// The address-space engine on its own (01 §6): domains (with a recording fake
// driver domain), alignment, reservations, automatic IOVA, splitting, runs
// handed to drivers, and scale (10^6 areas).
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { fail, isErrno, type ErrnoName } from '../uapi/errno.js';
import type { PagingDomain, PhysRun } from '../drivers/driver.js';
import { Emulator } from './emulator.js';
import { IoPagetable, U64_MAX } from './io_pagetable.js';
import { Pages } from './pages.js';
import { SimMemory } from './simmem.js';
import { PAGE_SIZE } from './usermem.js';

const is = (code: ErrnoName) => (e: unknown): boolean => isErrno(e, code);
const PS = BigInt(PAGE_SIZE);
const PROT = 1 | 2 | 4;

/** A driver domain that records what it is asked to map. */
class FakeDomain implements PagingDomain {
  readonly kind = 'paging' as const;
  readonly driver = {} as PagingDomain['driver'];
  readonly dirtyOps = false;
  readonly enforceCacheCoherency = true;
  /** map calls still in place: iova -> runs. */
  readonly calls = new Map<bigint, { length: bigint; runs: PhysRun[] }>();
  mapCalls = 0;
  /** Fail the n-th next map call with ENOMEM (-1 = never). */
  failIn = -1;
  constructor(readonly pgsizeBitmap = PS, readonly apertureStart = 0n, readonly apertureLast = U64_MAX) {}
  map(iova: bigint, runs: readonly PhysRun[], _prot: number): void {
    if (this.failIn >= 0 && this.failIn-- === 0) fail('ENOMEM');
    this.mapCalls++;
    const length = BigInt(runs.reduce((n, r) => n + r.length, 0));
    this.calls.set(iova, { length, runs: [...runs] });
  }
  unmap(iova: bigint, length: bigint): bigint {
    let n = 0n;
    for (const [k, v] of [...this.calls]) {
      if (k >= iova && k + v.length <= iova + length) {
        this.calls.delete(k);
        n += v.length;
      }
    }
    return n;
  }
  iovaToPhys(iova: bigint): number | undefined {
    for (const [k, v] of this.calls) {
      if (iova < k || iova >= k + v.length) continue;
      let off = Number(iova - k);
      for (const r of v.runs) {
        if (off < r.length) return r.phys + off;
        off -= r.length;
      }
    }
    return undefined;
  }
  get mappedBytes(): bigint {
    let n = 0n;
    for (const v of this.calls.values()) n += v.length;
    return n;
  }
  setDirtyTracking(): void {}
  readAndClearDirty(): void {}
  free(): void {}
}

function setup(): { emu: Emulator; mem: SimMemory; iopt: IoPagetable; pages: (va: bigint, len: bigint, w?: boolean) => Pages } {
  const emu = new Emulator();
  const mem = new SimMemory();
  const iopt = new IoPagetable(emu);
  return { emu, mem, iopt, pages: (va, len, w = true) => Pages.user(emu, mem, va, len, w) };
}

function mapVa(t: ReturnType<typeof setup>, va: bigint, len: bigint, iova: bigint | null, w = true): bigint {
  const p = t.pages(va, len, w);
  return t.iopt.mapPages([{ pages: p, startByte: BigInt(p.startByte), length: len }], len, iova, w ? PROT : 1 | 4);
}

test('addDomain: page size above PAGE_SIZE is EINVAL; raising alignment over unaligned areas is EADDRINUSE; EEXIST twice', () => {
  const t = setup();
  assert.throws(() => t.iopt.addDomain(new FakeDomain(PS * 2n)), is('EINVAL'));
  const va = t.mem.mmap(0x4000);
  mapVa(t, va + 0x400n, 0x400n, 0x10400n);
  assert.throws(() => t.iopt.addDomain(new FakeDomain(0x800n | PS)), is('EADDRINUSE'));
  assert.equal(t.iopt.iovaAlignment, 1n);
  assert.deepEqual(t.iopt.reservedRanges(), []);
  t.iopt.unmapAll();
  const d = new FakeDomain(0x800n | PS);
  t.iopt.addDomain(d);
  assert.throws(() => t.iopt.addDomain(d), is('EEXIST'));
  assert.equal(t.iopt.iovaAlignment, 0x800n);
  t.iopt.removeDomain(d);
  assert.equal(t.iopt.iovaAlignment, 1n);
});

test('addDomain: the aperture is reserved (EADDRINUSE against areas and allowed ranges); removal drops it', () => {
  const t = setup();
  const va = t.mem.mmap(0x1000);
  mapVa(t, va, 0x1000n, 0x1000n);
  const d = new FakeDomain(PS, 0x100000n, 0xffffffffn);
  assert.throws(() => t.iopt.addDomain(d), is('EADDRINUSE'));
  t.iopt.unmapAll();
  const b = IoPagetable.allowedBuilder(t.emu);
  b.add(0x100000000n, 0x1ffffffffn);
  t.iopt.setAllowed(b.tree);
  assert.throws(() => t.iopt.addDomain(d), is('EADDRINUSE'));
  assert.deepEqual(t.iopt.reservedRanges(d), []);
  t.iopt.setAllowed(IoPagetable.allowedBuilder(t.emu).tree);
  t.iopt.addDomain(d);
  assert.deepEqual(t.iopt.usableRanges(), [[0x100000n, 0xffffffffn]]);
  t.iopt.removeDomain(d);
  assert.deepEqual(t.iopt.usableRanges(), [[0n, U64_MAX]]);
});

test('Filling a domain pins once per pages object and unwinds completely on a driver failure', () => {
  const t = setup();
  const va = t.mem.mmap(0x8000);
  mapVa(t, va, 0x4000n, 0x10000n);
  mapVa(t, va, 0x4000n, 0x20000n);
  const d1 = new FakeDomain();
  d1.failIn = 1;
  assert.throws(() => t.iopt.addDomain(d1), is('ENOMEM'));
  const pinsOf = (): number[] => t.mem.getPages(va, 4, false).map((p) => p.pins);
  assert.deepEqual(pinsOf(), [0, 0, 0, 0]);
  assert.equal(d1.mappedBytes, 0n);
  assert.equal(t.iopt.domains.length, 0);
  const d2 = new FakeDomain();
  t.iopt.addDomain(d2);
  assert.deepEqual(pinsOf(), [2, 2, 2, 2]);
  const d3 = new FakeDomain();
  d3.failIn = 0;
  assert.throws(() => t.iopt.addDomain(d3), is('ENOMEM'));
  t.iopt.addDomain(new FakeDomain());
  assert.deepEqual(pinsOf(), [2, 2, 2, 2]);
  // A new map into two domains failing in the second: nothing left.
  t.iopt.domains[1]!.map = () => fail('ENOMEM');
  assert.throws(() => mapVa(t, va + 0x4000n, 0x1000n, 0x30000n), is('ENOMEM'));
  assert.equal(t.mem.getPages(va + 0x4000n, 1, false)[0]!.pins, 0);
  assert.deepEqual(t.iopt.areasIn(0x30000n, 0x30fffn), []);
  assert.equal(d2.calls.has(0x30000n), false);
  t.iopt.checkInvariants();
});

test('Runs handed to the driver merge consecutive frames and keep the sub-page offset', () => {
  const t = setup();
  const huge = t.mem.mmap(2 << 20, { hugetlb: true });
  const d = new FakeDomain(0x800n | PS);
  t.iopt.addDomain(d);
  mapVa(t, huge + 0x800n, 0x10000n, 0x100800n);
  const call = d.calls.get(0x100800n)!;
  assert.equal(call.runs.length, 1);
  const first = t.mem.getPages(huge, 1, false)[0]!;
  assert.equal(call.runs[0]!.phys, first.pfn * PAGE_SIZE + 0x800);
  assert.equal(d.iovaToPhys(0x100800n + 0x1234n), first.pfn * PAGE_SIZE + 0x800 + 0x1234);
  // Separately faulted pages are not adjacent: one map call per page, as batch_to_domain()
  // maps each entry of its pfn batch with its own iommu_map().
  const small = t.mem.mmap(0x3000);
  mapVa(t, small, 0x3000n, 0x200000n);
  for (const at of [0x200000n, 0x201000n, 0x202000n]) assert.equal(d.calls.get(at)!.runs.reduce((n, r) => n + r.length, 0), 0x1000);
});

test('With large pages disabled, areas go to the driver one page per call', () => {
  const t = setup();
  t.iopt.disableLargePages();
  assert.equal(t.iopt.iovaAlignment, PS);
  const d = new FakeDomain();
  t.iopt.addDomain(d);
  const va = t.mem.mmap(0x4000, { hugetlb: true });
  mapVa(t, va, 0x4000n, 0x10000n);
  assert.equal(d.mapCalls, 4);
  t.iopt.disableLargePages(); // already disabled: a no-op even with a domain and an area
});

test('Automatic IOVA: alignment from length and address, 2 MiB cap, windows, holes between reserved and areas', () => {
  const t = setup();
  const { iopt } = t;
  assert.throws(() => iopt.allocIova(0n, 0n), is('EOVERFLOW'));
  assert.throws(() => iopt.allocIova(0n, (1n << 63n) - 1n), is('EOVERFLOW'));
  assert.equal(iopt.allocIova(0n, (1n << 63n) - 2n), 2n << 20n);
  assert.equal(iopt.allocIova(0n, 0x3000n), 0x4000n);
  assert.equal(iopt.allocIova(0x1000n, 0x3000n), 0x1000n);
  assert.equal(iopt.allocIova(0x123n, 0x100n), 0x1123n);
  assert.equal(iopt.allocIova(0n, 64n << 20n), 2n << 20n);
  iopt.reserve(0x1000n, 0x4fffn, iopt);
  assert.equal(iopt.allocIova(0x1000n, 0x1000n), 0x5000n);
  const va = t.mem.mmap(0x1000);
  mapVa(t, va, 0x1000n, 0x5000n);
  assert.equal(iopt.allocIova(0x1000n, 0x1000n), 0x6000n);
  // Adjacent allowed ranges form one window.
  const b = IoPagetable.allowedBuilder(t.emu);
  b.add(0x10000n, 0x10fffn);
  b.add(0x11000n, 0x11fffn);
  iopt.setAllowed(b.tree);
  assert.equal(iopt.allocIova(0n, 0x2000n), 0x10000n);
  assert.throws(() => iopt.allocIova(0n, 0x4000n), is('ENOSPC'));
  iopt.addDomain(new FakeDomain(0x800n | PS));
  assert.throws(() => iopt.allocIova(0x400n, 0x1000n), is('EINVAL'));
});

test('Reservations: owners, overlap allowed between reservations, unreserve by owner', () => {
  const t = setup();
  const a = {};
  const b = {};
  t.iopt.reserve(0x1000n, 0x1fffn, a);
  t.iopt.reserve(0x1800n, 0x2fffn, b);
  assert.deepEqual(t.iopt.usableRanges(), [[0n, 0xfffn], [0x3000n, U64_MAX]]);
  t.iopt.unreserve(a);
  assert.deepEqual(t.iopt.usableRanges(), [[0n, 0x17ffn], [0x3000n, U64_MAX]]);
  t.iopt.reserve(0n, U64_MAX, a);
  assert.deepEqual(t.iopt.usableRanges(), []);
});

test('cut(): splits areas at the given IOVAs; refused with accesses or large IOPTEs possible', () => {
  const t = setup();
  const d = new FakeDomain();
  t.iopt.addDomain(d);
  const va = t.mem.mmap(0x8000);
  mapVa(t, va, 0x8000n, 0x10000n);
  assert.throws(() => t.iopt.cut([0x11fffn]), is('EINVAL'));
  t.iopt.removeDomain(d);
  t.iopt.cut([0x11fffn, 0x13fffn, 0x17fffn, 0x10000n]);
  assert.deepEqual(t.iopt.areasIn(0n, U64_MAX).map((a) => [a.iova, a.last]),
    [[0x10000n, 0x11fffn], [0x12000n, 0x13fffn], [0x14000n, 0x17fffn]]);
  t.iopt.disableLargePages();
  t.iopt.addDomain(d);
  t.iopt.cut([0x14fffn]);
  assert.throws(() => t.iopt.cut([0x14800n]), is('EINVAL'));
  assert.equal(t.iopt.unmapRange(0x15000n, 0x17fffn).unmapped, 0x3000n);
  assert.deepEqual(t.mem.getPages(va, 8, false).map((p) => p.pins), [1, 1, 1, 1, 1, 0, 0, 0]);
  t.iopt.checkInvariants();
});

test('Scale: 10^6 areas, O(log n) lookups and removals', { timeout: 120_000 }, () => {
  const t = setup();
  const N = 1_000_000;
  const p = t.pages(0x10000000n, BigInt(N) * PS);
  const before = process.memoryUsage().heapUsed;
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    t.iopt.mapPages([{ pages: p, startByte: BigInt(i) * PS, length: PS }], PS, 0x100000000n + BigInt(i) * 2n * PS, PROT);
  }
  const t1 = performance.now();
  const perArea = (process.memoryUsage().heapUsed - before) / N;
  assert.equal(t.iopt.areaCount, N);
  // Lookups and single unmaps deep inside the tree stay fast.
  const t2 = performance.now();
  for (let i = 0; i < 10_000; i++) {
    const k = BigInt((i * 7919) % N);
    const iova = 0x100000000n + k * 2n * PS;
    assert.equal(t.iopt.areasIn(iova, iova).length, 1);
  }
  for (let i = 0; i < 10_000; i++) {
    const iova = 0x100000000n + BigInt(i * 97) * 2n * PS;
    assert.equal(t.iopt.unmapRange(iova, iova + PS - 1n).unmapped, PS);
  }
  const t3 = performance.now();
  assert.ok(t3 - t2 < 5_000, `20k lookups/unmaps took ${t3 - t2} ms`);
  assert.ok(t1 - t0 < 60_000, `1e6 maps took ${t1 - t0} ms`);
  assert.ok(perArea < 300, `~${perArea.toFixed(0)} bytes per area`);
  console.log(`# 1e6 areas: ${(t1 - t0).toFixed(0)} ms to map, ~${perArea.toFixed(0)} bytes/area`);
});

/** fn's value, or the errno name it failed with; any other exception fails the test. */
function outcome<T>(fn: () => T): T | ErrnoName {
  try {
    return fn();
  } catch (e) {
    if (!isErrno(e)) throw e;
    return e.code;
  }
}

test('Automatic IOVA resumes after the last fit only while nothing was freed (same result as a full search)', () => {
  fc.assert(fc.property(fc.array(fc.oneof(
    fc.record({ k: fc.constant('map' as const), pages: fc.integer({ min: 1, max: 6 }), off: fc.integer({ min: 0, max: 3 }) }),
    fc.record({ k: fc.constant('unmap' as const), nth: fc.nat(40) }),
    fc.record({ k: fc.constant('reserve' as const), at: fc.integer({ min: 1, max: 200 }), pages: fc.integer({ min: 1, max: 4 }) }),
    fc.record({ k: fc.constant('unreserve' as const) }),
  ), { maxLength: 60 }), (ops) => {
    const t = setup();
    const va = t.mem.mmap(0x10000);
    const owner = {};
    for (const op of ops) {
      if (op.k === 'map') {
        const addr = va + BigInt(op.off) * 0x400n;
        const length = BigInt(op.pages) * PS;
        // an IOVA, or the errno both ways (anything else is a bug, not a result)
        const want = outcome(() => t.iopt.allocIova(addr, length, false));
        const got = outcome(() => mapVa(t, addr, length, null));
        assert.equal(got, want);
      } else if (op.k === 'unmap') {
        const areas = t.iopt.allAreas();
        const a = areas[op.nth % Math.max(1, areas.length)];
        if (a) t.iopt.unmapRange(a.iova, a.last);
      } else if (op.k === 'reserve') {
        const s = BigInt(op.at) * PS;
        const r = outcome(() => t.iopt.reserve(s, s + BigInt(op.pages) * PS - 1n, owner));
        assert.ok(r === undefined || r === 'EADDRINUSE', `reserve: ${String(r)}`);
      } else {
        t.iopt.unreserve(owner);
      }
    }
  }), { numRuns: 300 });
});

test('Scale: 10^5 automatic placements packed from the bottom stay fast', { timeout: 60_000 }, () => {
  const t = setup();
  const va = t.mem.mmap(0x1000);
  const p = t.pages(va, PS);
  const t0 = performance.now();
  let prev = 0n;
  for (let i = 0; i < 100_000; i++) {
    const iova = t.iopt.mapPages([{ pages: p, startByte: 0n, length: PS }], PS, null, PROT);
    assert.ok(iova > prev);
    prev = iova;
  }
  assert.equal(prev, PS * 100_000n);
  assert.ok(performance.now() - t0 < 20_000, `${performance.now() - t0} ms`);
});
