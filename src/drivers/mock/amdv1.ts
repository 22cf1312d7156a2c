// The selftest mock's paging domain from 6.19 on: the generic page table code's AMDv1
// format in its "mock" variant (granule 2 KiB, 512 eight-byte entries per 4 KiB table,
// three levels from a fixed top: 2 KiB / 1 MiB / 512 MiB items, 256 GiB of IOVA).
//
// What a user can observe, and so what is modelled:
// - page sizes: every power of two from 2 KiB up to 64 GiB (a level holds sizes of its
//   item up to 256 items, as "contiguous" entries replicated over the items they cover;
//   the whole table size and 512 GiB are never offered). The HUGE variant advertises
//   PAGE_SIZE | 1 MiB only, with the table's natural aperture [0, 2^38 - 1];
// - map: the largest size that IOVA, physical address and remaining length allow;
// - dirty: one D bit per replicated item; SET_DIRTY marks the item holding the IOVA,
//   a read reports (and, unless NO_CLEAR, clears) the whole entry when any of its items
//   is marked, so an entry is dirty as a whole;
// - unmap: whole entries (one starting before the range is refused: nothing unmapped);
// - table pages: allocated on demand when an entry needs a lower level (a fault-injection
//   point, as the kernel's page allocation), freed when an unmap covers a table entirely
//   or a large entry is installed over an empty one.
import type { Emulator } from '../../core/emulator.js';
import { PAGE_SIZE } from '../../core/usermem.js';
import { fail } from '../../uapi/errno.js';
import { MOCK } from '../../uapi/enums.js';
import { IOMMU_READ, IOMMU_WRITE, type PagingDomain, type PhysRun } from '../driver.js';
import type { MockDriver } from './mock.js';

/** log2 of the item size at each level (the top level, 2, holds no leaves above 2^37). */
const GRANULE_LG2 = 11;
const ITEMS_LG2 = 9;
const TOP_LEVEL = 2;
/** IOVA bits the fixed three-level table translates. */
export const AMDV1_MOCK_VA_LG2 = GRANULE_LG2 + ITEMS_LG2 * (TOP_LEVEL + 1);

const itemLg2 = (level: number): number => GRANULE_LG2 + ITEMS_LG2 * level;

/** The DEFAULT table's page sizes: 2^11 .. 2^36 (the largest, a whole top table, is not offered). */
export const AMDV1_MOCK_PGSIZES: bigint = (() => {
  let m = 0n;
  for (let level = 0; level <= TOP_LEVEL; level++) {
    const lo = itemLg2(level);
    for (let b = lo; b <= lo + ITEMS_LG2 - 1 && b <= 51; b++) m |= 1n << BigInt(b);
  }
  // Sizes of AMDV1_MOCK_VA_LG2 - 1 bits and more are hidden.
  return m & ((1n << BigInt(AMDV1_MOCK_VA_LG2 - 1)) - 1n);
})();

/** A leaf: `1 << lg2` bytes at the IOVA of its key, physically contiguous from `phys`. */
interface Entry {
  readonly iova: bigint;
  readonly lg2: number;
  readonly phys: number;
  readonly prot: number;
  /** Some replicated item has its D bit set. */
  dirty: boolean;
}

/** Level of the items an entry of 2^lg2 bytes is made of. */
function levelOf(lg2: number): number {
  let level = 0;
  while (level < TOP_LEVEL && lg2 >= itemLg2(level + 1)) level++;
  return level;
}

export class MockAmdv1Domain implements PagingDomain {
  readonly kind = 'paging';
  faultCapable?: boolean;
  readonly enforceCacheCoherency = false;
  /** Leaves by their first IOVA. */
  private readonly entries = new Map<bigint, Entry>();
  /** Allocated lower tables per level (0 and 1), by the IOVA they start at. */
  private readonly tables: [Set<bigint>, Set<bigint>] = [new Set(), new Set()];
  /** Sizes (lg2) offered, descending. */
  private readonly sizes: number[];
  /** Dirty tracking switched on (SET_DIRTY_TRACKING). */
  tracking = false;

  constructor(readonly driver: MockDriver, readonly pgsizeBitmap: bigint, readonly apertureStart: bigint,
    readonly apertureLast: bigint, readonly dirtyOps: boolean) {
    const sizes: number[] = [];
    for (let b = 63; b >= 0; b--) if (pgsizeBitmap & (1n << BigInt(b))) sizes.push(b);
    this.sizes = sizes;
  }

  private get emu(): Emulator {
    return this.driver.emu;
  }

  get minPageSize(): bigint {
    return 1n << BigInt(this.sizes[this.sizes.length - 1]!);
  }

  /** Number of leaves and of lower table pages (tests, inspection). */
  get stats(): { entries: number; tables: number } {
    return { entries: this.entries.size, tables: this.tables[0].size + this.tables[1].size };
  }

  /** The leaves, ascending (tests, inspection). */
  leaves(): { iova: bigint; size: bigint; phys: number; dirty: boolean }[] {
    return [...this.entries.values()].sort((a, b) => (a.iova < b.iova ? -1 : 1))
      .map((e) => ({ iova: e.iova, size: 1n << BigInt(e.lg2), phys: e.phys, dirty: e.dirty }));
  }

  /** The leaf holding `iova`: entries are aligned to their size, so try each size. */
  private find(iova: bigint): Entry | undefined {
    for (const lg2 of this.sizes) {
      const e = this.entries.get(iova & ~((1n << BigInt(lg2)) - 1n));
      if (e && e.lg2 === lg2) return e;
    }
    // Sizes the domain no longer offers cannot exist; but be exact about any size.
    for (let lg2 = GRANULE_LG2; lg2 < AMDV1_MOCK_VA_LG2; lg2++) {
      const e = this.entries.get(iova & ~((1n << BigInt(lg2)) - 1n));
      if (e && e.lg2 === lg2) return e;
    }
    return undefined;
  }

  /** Leaves overlapping [start, end), ascending. */
  private overlapping(start: bigint, end: bigint): Entry[] {
    const out: Entry[] = [];
    const first = this.find(start);
    if (first) out.push(first);
    // The remaining leaves start inside the range; walk it by the smallest step that can hold one.
    if (end - start <= BigInt(this.entries.size) << BigInt(GRANULE_LG2)) {
      for (let cur = first ? first.iova + (1n << BigInt(first.lg2)) : start + (1n << BigInt(GRANULE_LG2));
        cur < end;) {
        const e = this.entries.get(cur);
        if (e) {
          out.push(e);
          cur += 1n << BigInt(e.lg2);
        } else {
          cur += 1n << BigInt(GRANULE_LG2);
        }
      }
    } else {
      for (const e of this.entries.values()) if (e !== first && e.iova >= start && e.iova < end) out.push(e);
      out.sort((a, b) => (a.iova < b.iova ? -1 : 1));
    }
    return out;
  }

  /** The lower tables an entry of `lg2` at `iova` needs, allocating missing ones (ENOMEM point). */
  private ensureTables(iova: bigint, lg2: number, added: [number, bigint][]): void {
    const level = levelOf(lg2);
    for (let l = TOP_LEVEL - 1; l >= level; l--) {
      const key = iova & ~((1n << BigInt(itemLg2(l + 1))) - 1n);
      if (this.tables[l]!.has(key)) continue;
      this.emu.faults.allocPages(0); // a 4 KiB table: a page allocation (no point at min-order 1)
      this.tables[l]!.add(key);
      added.push([l, key]);
    }
    // A large entry replaces empty lower tables under it (they are freed).
    if (level > 0) {
      const span = 1n << BigInt(lg2);
      for (let l = level - 1; l >= 0; l--) {
        const tsz = 1n << BigInt(itemLg2(l + 1));
        for (let k = iova; k < iova + span; k += tsz) this.tables[l]!.delete(k);
      }
    }
  }

  map(iova: bigint, runs: readonly PhysRun[], prot: number): void {
    // The generic page table refuses (with a WARN) a mapping that is neither readable nor
    // writable before anything else: VFIO_IOMMU_MAP_DMA without READ/WRITE flags reaches it.
    if (!(prot & (IOMMU_READ | IOMMU_WRITE))) fail('EINVAL', 'mock map: prot has neither IOMMU_READ nor IOMMU_WRITE');
    const added: Entry[] = [];
    const tables: [number, bigint][] = [];
    const grain = 1n << BigInt(GRANULE_LG2);
    let cur = iova;
    try {
      for (const run of runs) {
        let phys = BigInt(run.phys);
        let left = BigInt(run.length);
        if (cur % grain || phys % grain || left % grain) fail('EINVAL', 'mock map: not 2 KiB aligned');
        while (left > 0n) {
          const lg2 = this.sizes.find((b) => {
            const s = 1n << BigInt(b);
            return cur % s === 0n && phys % s === 0n && left >= s;
          });
          if (lg2 === undefined) fail('ENXIO', 'mock map: no page size fits');
          const size = 1n << BigInt(lg2);
          if (cur + size - 1n >= 1n << BigInt(AMDV1_MOCK_VA_LG2)) fail('ERANGE', 'mock map: beyond the table');
          if (this.overlapping(cur, cur + size).length) fail('EADDRINUSE', 'mock map: already mapped');
          this.ensureTables(cur, lg2, tables);
          const e: Entry = { iova: cur, lg2, phys: Number(phys), prot, dirty: false };
          this.entries.set(cur, e);
          added.push(e);
          cur += size;
          phys += size;
          left -= size;
        }
      }
    } catch (e) {
      for (const x of added) this.entries.delete(x.iova);
      for (const [l, k] of tables) this.tables[l]!.delete(k);
      throw e;
    }
  }

  unmap(iova: bigint, length: bigint): bigint {
    const end = iova + length;
    const hit = this.overlapping(iova, end);
    // A range starting inside a larger entry: the table walk refuses it.
    if (hit.length && hit[0]!.iova < iova) return 0n;
    let done = 0n;
    let last = iova;
    for (const e of hit) {
      this.entries.delete(e.iova);
      done += 1n << BigInt(e.lg2);
      const eEnd = e.iova + (1n << BigInt(e.lg2));
      if (eEnd > last) last = eEnd;
    }
    // Tables the range covers entirely are freed with it.
    const stop = end > last ? end : last;
    for (let l = 0; l < TOP_LEVEL; l++) {
      const tsz = 1n << BigInt(itemLg2(l + 1));
      for (const k of [...this.tables[l]!]) if (k >= iova && k + tsz <= stop) this.tables[l]!.delete(k);
    }
    return done;
  }

  iovaToPhys(iova: bigint): number | undefined {
    const e = this.find(iova);
    return e ? e.phys + Number(iova - e.iova) : undefined;
  }

  setDirtyTracking(enable: boolean): void {
    if (enable && !this.dirtyOps) fail('EINVAL', 'mock SET_DIRTY_TRACKING: domain has no dirty ops');
    this.tracking = enable;
  }

  /** The table's read: every leaf in range whose entry is dirty, as a whole (no tracking check here). */
  readAndClearDirty(iova: bigint, length: bigint, noClear: boolean,
    mark: ((iova: bigint, length: bigint) => void) | null): void {
    for (const e of this.overlapping(iova, iova + length)) {
      if (!e.dirty) continue;
      mark?.(e.iova, 1n << BigInt(e.lg2));
      if (!noClear) e.dirty = false;
    }
  }

  /** DIRTY test op: set the D bit of the item holding `iova`; false if nothing is mapped there. */
  markDirty(iova: bigint): boolean {
    const e = this.find(iova);
    if (!e) return false;
    e.dirty = true;
    return true;
  }

  /** Gen A's index quirk does not exist in this table: the slot is an address. */
  markDirtySlot(index: number): boolean {
    return this.markDirty(BigInt(index) << BigInt(GRANULE_LG2));
  }

  free(): void {
    this.entries.clear();
    this.tables[0].clear();
    this.tables[1].clear();
  }
}

/** The DEFAULT and HUGE page-table types of the 6.19+ mock (HWPT_DATA_SELFTEST pagetable_type). */
export function amdv1MockDomain(driver: MockDriver, huge: boolean, dirty: boolean): MockAmdv1Domain {
  if (huge) {
    // Huge mode: user space provides huge pages only; PAGE_SIZE is there for iommufd to accept the domain.
    return new MockAmdv1Domain(driver, BigInt(MOCK.HUGE_PAGE_SIZE) | BigInt(PAGE_SIZE), 0n,
      (1n << BigInt(AMDV1_MOCK_VA_LG2)) - 1n, dirty);
  }
  // The real aperture is overridden with the mock aperture.
  return new MockAmdv1Domain(driver, AMDV1_MOCK_PGSIZES, MOCK.APERTURE_START, MOCK.APERTURE_LAST, dirty);
}
