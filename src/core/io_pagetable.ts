// The IOVA address space of one IOAS (the kernel's io_pagetable): areas,
// reserved and allowed ranges, IOVA alignment, automatic IOVA allocation, the
// attached paging domains and in-kernel accesses (01 §6, 05 §4).
//
// Areas live in a B+ tree keyed by their first IOVA (areas never overlap), so
// lookups, inserts and removals are O(log n). Reserved ranges may overlap each
// other and are few (per device/domain/test); they are kept in a small array.
// Allowed ranges never overlap and sit in their own B+ tree.
import { XaShape } from './fault_inject.js';
import { fail, type ErrnoName } from '../uapi/errno.js';
import { IOMMU_READ, IOMMU_WRITE, type PagingDomain, type PhysRun } from '../drivers/driver.js';
import { BTree } from './btree.js';
import type { Emulator } from './emulator.js';
import type { IommufdObject } from './object.js';
import type { Pages } from './pages.js';
import { HPAGE_SIZE, PAGE_SIZE, type PhysPage, type UserMemory } from './usermem.js';

export const U64_MAX = (1n << 64n) - 1n;
const PS = BigInt(PAGE_SIZE);
/** Cap of the automatic-IOVA alignment (THP host: the PMD size). */
const MAX_AUTO_ALIGN = BigInt(HPAGE_SIZE);
/** The unmap walk gives up on accessors that do not unpin after this many notifications. */
const UNMAP_NOTIFY_TRIES = 100;

/**
 * Area tree nodes of up to 64 entries (the library default is 32): a leaf
 * splits into two 32-entry arrays, and V8 grows a 32-element array to exactly
 * 64, so the leaves of an ascending fill carry no spare capacity (measured:
 * ~19 bytes per area instead of ~26, with lookups and updates as fast).
 */
const AREA_NODE_SIZE = 64;

const cmp = (a: bigint, b: bigint): number => (a < b ? -1 : a > b ? 1 : 0);
const lowBit = (x: bigint): bigint => x & -x;
function roundupPow2(x: bigint): bigint {
  let p = 1n;
  while (p < x) p <<= 1n;
  return p;
}
const maxB = (a: bigint, b: bigint): bigint => (a > b ? a : b);
const minB = (a: bigint, b: bigint): bigint => (a < b ? a : b);

/** What the address space needs of an in-kernel access (access.ts). */
export interface IoptAccess {
  /** PAGE_SIZE for accesses that pin pages, 1 otherwise. */
  readonly iovaAlignment: bigint;
  /** The IOAS is unmapping [iova, iova+length): drop every pin inside it. */
  notifyUnmap(iova: bigint, length: bigint): void;
}

/** BigInt(0..PAGE_SIZE-1), shared: every MAP area's start byte is one of these. */
const SMALL = Array.from({ length: PAGE_SIZE }, (_, i) => BigInt(i));
/** A bigint equal to `v`, shared when small (saves an allocation per area). */
export function shareSmall(v: bigint): bigint {
  return v >= 0n && v < PS ? SMALL[Number(v)]! : v;
}

// Area.bits: the state flags in the low bits, the IOMMU prot above them.
const BUSY = 1;
const FILLED = 2;
const PREVENT_ACCESS = 4;
const PROT_SHIFT = 3;

/**
 * One IOVA interval bound to a slice of a pages object (01 §6.5). There may be
 * millions of areas, so an area is kept to five fields: `iova` is the very
 * bigint the area tree uses as key, a MAP area's `startByte` is a shared small
 * bigint (shareSmall), flags and prot share one integer, and the rarely
 * non-zero access/lock counts live in the IoPagetable (pinCounts).
 */
export class Area {
  /** busy / filled / preventAccess bits and prot (layout above). */
  private bits: number;

  /** Still being established by MAP/COPY: UNMAP sees EBUSY, accesses and COPY see a hole. */
  get busy(): boolean {
    return (this.bits & BUSY) !== 0;
  }
  set busy(v: boolean) {
    this.bits = v ? this.bits | BUSY : this.bits & ~BUSY;
  }
  /** Stored in the attached domains: holds one user on its page range of `pages`. */
  get filled(): boolean {
    return (this.bits & FILLED) !== 0;
  }
  set filled(v: boolean) {
    this.bits = v ? this.bits | FILLED : this.bits & ~FILLED;
  }
  /** Set while an unmap waits for accessors to let go: new accesses → EINVAL. */
  get preventAccess(): boolean {
    return (this.bits & PREVENT_ACCESS) !== 0;
  }
  set preventAccess(v: boolean) {
    this.bits = v ? this.bits | PREVENT_ACCESS : this.bits & ~PREVENT_ACCESS;
  }
  /** IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE. */
  get prot(): number {
    return this.bits >>> PROT_SHIFT;
  }

  constructor(
    readonly iova: bigint,
    readonly last: bigint,
    readonly pages: Pages,
    /** Byte of `pages` (from its first page's start) that `iova` maps. */
    readonly startByte: bigint,
    prot: number,
  ) {
    this.bits = BUSY | (prot << PROT_SHIFT);
  }

  get length(): bigint {
    return this.last - this.iova + 1n;
  }
  get pageOffset(): bigint {
    return this.startByte % PS;
  }
  byteAt(iova: bigint): bigint {
    return this.startByte + (iova - this.iova);
  }
  indexAt(iova: bigint): number {
    return Number(this.byteAt(iova) / PS);
  }
  get firstIndex(): number {
    return Number(this.startByte / PS);
  }
  get lastIndex(): number {
    return this.indexAt(this.last);
  }
}

interface Reserved {
  readonly start: bigint;
  readonly last: bigint;
  readonly owner: object;
}

/** One piece of memory to place: a slice of a pages object. */
export interface PagesSeg {
  readonly pages: Pages;
  readonly startByte: bigint;
  readonly length: bigint;
}

/** In-kernel access pins inside one area (each pin call counts once), and how many of them lock it. */
interface AreaPins {
  accesses: number;
  /** Pins that also lock the area (HW queue memory): UNMAP → EBUSY. */
  locks: number;
}

/** Result of an unmap walk: bytes removed, and the error that stopped it (after those bytes were gone). */
export interface UnmapResult {
  unmapped: bigint;
  error?: ErrnoName;
  /** Which check stopped the walk. */
  reason?: string;
}

export class IoPagetable {
  /** Domains (HWPT_PAGING) currently attached to this address space, in attach order. */
  readonly domains: PagingDomain[] = [];
  /** In-kernel accesses attached to this address space. */
  readonly accesses = new Set<IoptAccess>();
  /** Their indices in the kernel's access_list xarray, and its shape. */
  private readonly accessIdx = new Map<IoptAccess, number>();
  private readonly accessXa = new XaShape();
  private readonly areas = new BTree<bigint, Area>(undefined, cmp, AREA_NODE_SIZE);
  private reserved: Reserved[] = [];
  private allowed = new BTree<bigint, bigint>(undefined, cmp);
  private align = 1n;
  /** IOMMU_OPTION_HUGE_PAGES = 0 / VFIO type1 v1: map page by page, alignment ≥ PAGE_SIZE. */
  private largePagesDisabled = false;
  /**
   * Access pins per area, only for areas that have some (most never do, so
   * this is kept out of the areas). Created on first use; an area's entry goes
   * when both counts are back to 0, and an area with pins is never removed or split.
   */
  private pinCounts: Map<Area, AreaPins> | null = null;

  /** The IOAS this address space belongs to (names it in trace events). */
  owner: IommufdObject | null = null;

  constructor(readonly emu: Emulator) {}

  private areaEvent(op: 'add' | 'remove' | 'split', iova: bigint, last: bigint, at?: bigint): void {
    const o = this.owner;
    if (o) this.emu.bus.emit({ t: 'area', op, ctx: o.table?.ctxSeq ?? 0, ioas: o.id, iova, last, at });
  }

  private pinEvent(op: 'pin' | 'unpin', iova: bigint, last: bigint, by: 'domain' | 'access', lock?: boolean): void {
    const o = this.owner;
    if (o) this.emu.bus.emit({ t: 'pin', op, ctx: o.table?.ctxSeq ?? 0, ioas: o.id, iova, last, by, lock });
  }

  /** In-kernel access pins inside `area`. */
  numAccesses(area: Area): number {
    return this.pinCounts?.get(area)?.accesses ?? 0;
  }

  /** Access pins that also lock `area` against UNMAP. */
  numLocks(area: Area): number {
    return this.pinCounts?.get(area)?.locks ?? 0;
  }

  /** Count one access pin of `area` more (delta 1) or less (-1); `lock`: a locking one. */
  private countPin(area: Area, delta: 1 | -1, lock: boolean): void {
    const counts = (this.pinCounts ??= new Map());
    let c = counts.get(area);
    if (!c) counts.set(area, (c = { accesses: 0, locks: 0 }));
    c.accesses += delta;
    if (lock) c.locks += delta;
    if (c.accesses === 0 && c.locks === 0) counts.delete(area);
  }

  /** Current IOVA alignment (01 §6.1). */
  get iovaAlignment(): bigint {
    return this.align;
  }

  get hugePagesDisabled(): boolean {
    return this.largePagesDisabled;
  }

  /** Number of areas (established or not). */
  get areaCount(): number {
    return this.areas.size;
  }

  // ---- area lookups -------------------------------------------------------------

  /** The first area (lowest IOVA) intersecting [start, last]. */
  private areaFirst(start: bigint, last: bigint): Area | undefined {
    const lower = this.areas.getPairOrNextLower(start);
    if (lower && lower[1].last >= start) return lower[1];
    const higher = this.areas.nextHigherPair(start);
    if (higher && higher[0] <= last) return higher[1];
    return undefined;
  }

  private areaNext(area: Area, last: bigint): Area | undefined {
    const n = this.areas.nextHigherPair(area.iova);
    return n && n[0] <= last ? n[1] : undefined;
  }

  /** Every area intersecting [start, last], ascending (a snapshot). */
  private areasOverlapping(start: bigint, last: bigint): Area[] {
    const out: Area[] = [];
    for (let a = this.areaFirst(start, last); a; a = this.areaNext(a, last)) out.push(a);
    return out;
  }

  /** Areas (fully established) overlapping [start, last], ascending. */
  areasIn(start: bigint, last: bigint): Area[] {
    return this.areasOverlapping(start, last).filter((a) => !a.busy);
  }

  /** All areas, ascending (established ones only). */
  allAreas(): Area[] {
    const out: Area[] = [];
    for (const [, a] of this.areas.entries()) if (!a.busy) out.push(a);
    return out;
  }

  /** Every area, including ones still being established, ascending. */
  allAreasIncludingBusy(): Area[] {
    return [...this.areas.entries()].map(([, a]) => a);
  }

  /** Up to `limit` areas (established or not) from the lowest IOVA, ascending (inspection). */
  firstAreas(limit: number): Area[] {
    const out: Area[] = [];
    for (const [, a] of this.areas.entries()) {
      if (out.length >= limit) break;
      out.push(a);
    }
    return out;
  }

  /** The n-th established area in ascending order (selftest SYZ IOVA conversion). */
  nthArea(n: number): Area | undefined {
    for (const [, a] of this.areas.entries()) {
      if (n === 0) return a;
      n--;
    }
    return undefined;
  }

  private reservedHit(start: bigint, last: bigint): boolean {
    return this.reserved.some((r) => r.start <= last && r.last >= start);
  }

  private allowedHit(start: bigint, last: bigint): boolean {
    const p = this.allowed.getPairOrNextLower(last);
    return !!p && p[1] >= start;
  }

  // ---- reserved and allowed ranges ------------------------------------------------

  /** Reserve [start, last] for `owner`: EADDRINUSE if it intersects an area or an allowed range. */
  reserve(start: bigint, last: bigint, owner: object): void {
    if (this.areaFirst(start, last) || this.allowedHit(start, last)) fail('EADDRINUSE', 'reserved range overlaps an area or an allowed range');
    this.emu.allocPoint();
    this.reserved.push({ start, last, owner });
  }

  /** Drop every reserved range of `owner`. */
  unreserve(owner: object): void {
    this.freeGen++;
    this.reserved = this.reserved.filter((r) => r.owner !== owner);
  }

  /** Every reserved range with its owner (a device, a domain, the selftest), for inspection. */
  reservedWithOwners(): { start: bigint; last: bigint; owner: object }[] {
    return this.reserved.map((r) => ({ start: r.start, last: r.last, owner: r.owner }));
  }

  /** Reserved ranges of `owner` (or all), for diagnostics. */
  reservedRanges(owner?: object): [bigint, bigint][] {
    return this.reserved.filter((r) => owner === undefined || r.owner === owner).map((r) => [r.start, r.last]);
  }

  /** The union of the reserved ranges, ascending, overlapping/adjacent ones merged. */
  private reservedUnion(): [bigint, bigint][] {
    const sorted = [...this.reserved].sort((a, b) => cmp(a.start, b.start));
    const out: [bigint, bigint][] = [];
    for (const r of sorted) {
      const top = out[out.length - 1];
      if (top && (top[1] === U64_MAX || r.start <= top[1] + 1n)) top[1] = maxB(top[1], r.last);
      else out.push([r.start, r.last]);
    }
    return out;
  }

  /** IOAS_IOVA_RANGES: the gaps between reserved ranges over [0, U64_MAX], ascending. */
  usableRanges(): [bigint, bigint][] {
    const out: [bigint, bigint][] = [];
    let cur = 0n;
    let done = false;
    for (const [s, l] of this.reservedUnion()) {
      if (s > cur) out.push([cur, s - 1n]);
      if (l === U64_MAX) {
        done = true;
        break;
      }
      cur = maxB(cur, l + 1n);
    }
    if (!done) out.push([cur, U64_MAX]);
    return out;
  }

  /** The allowed ranges, ascending. */
  allowedRanges(): [bigint, bigint][] {
    return [...this.allowed.entries()].map(([s, l]) => [s, l]);
  }

  /**
   * Build an allowed-range set, entry by entry as IOAS_ALLOW_IOVAS reads them:
   * `start >= last` or an overlap with an earlier entry → EINVAL.
   */
  static allowedBuilder(emu: Emulator): { add(start: bigint, last: bigint): void; tree: BTree<bigint, bigint> } {
    const tree = new BTree<bigint, bigint>(undefined, cmp);
    return {
      tree,
      add(start: bigint, last: bigint): void {
        if (start >= last) fail('EINVAL', 'allowed range start >= last');
        const p = tree.getPairOrNextLower(last);
        if (p && p[1] >= start) fail('EINVAL', 'allowed ranges overlap');
        emu.allocPoint();
        tree.set(start, last);
      },
    };
  }

  /** Replace the allowed ranges atomically: EADDRINUSE (old set kept) if one intersects a reserved range. */
  setAllowed(tree: BTree<bigint, bigint>): void {
    for (const [s, l] of tree.entries()) if (this.reservedHit(s, l)) fail('EADDRINUSE', 'an allowed range overlaps a reserved range');
    this.freeGen++;
    this.allowed = tree;
  }

  // ---- alignment --------------------------------------------------------------------

  /** EADDRINUSE unless every area's IOVA, length and page offset respect `align`. */
  private checkAlignment(align: bigint): void {
    const mask = align - 1n;
    for (const [, a] of this.areas.entries()) {
      if ((a.iova & mask) || (a.length & mask) || (a.pageOffset & mask)) fail('EADDRINUSE', 'an area is not aligned to the new IOVA alignment');
    }
  }

  /** Recompute the alignment from huge-page setting, domains and accesses; raising it may fail (EADDRINUSE). */
  private recalcAlignment(): void {
    let a = this.largePagesDisabled ? PS : 1n;
    for (const d of this.domains) a = maxB(a, lowBit(d.pgsizeBitmap));
    for (const acc of this.accesses) a = maxB(a, acc.iovaAlignment);
    if (a > this.align) this.checkAlignment(a);
    this.align = a;
  }

  /** IOMMU_OPTION_HUGE_PAGES = 0: EINVAL with domains and areas present; EADDRINUSE if an area is not page aligned. */
  disableLargePages(): void {
    if (this.largePagesDisabled) return;
    if (this.domains.length > 0 && this.areas.size > 0) fail('EINVAL', 'huge pages cannot be disabled while domains are attached and areas mapped');
    this.largePagesDisabled = true;
    try {
      this.recalcAlignment();
    } catch (e) {
      this.largePagesDisabled = false;
      throw e;
    }
  }

  enableLargePages(): void {
    this.largePagesDisabled = false;
    this.recalcAlignment();
  }

  /** Attach an in-kernel access: its alignment joins the IOAS's (EADDRINUSE). */
  addAccess(access: IoptAccess): void {
    // xa_alloc() of the access list (lowest free index from 0): its node allocations.
    let idx = 0;
    while (this.accessXa.has(idx)) idx++;
    this.emu.faults.xaStore(this.accessXa, idx);
    this.accessIdx.set(access, idx);
    this.accesses.add(access);
    try {
      this.recalcAlignment();
    } catch (e) {
      this.dropAccessIdx(access);
      this.accesses.delete(access);
      throw e;
    }
  }

  private dropAccessIdx(access: IoptAccess): void {
    const idx = this.accessIdx.get(access);
    if (idx === undefined) return;
    this.accessXa.erase(idx);
    this.accessIdx.delete(access);
  }

  removeAccess(access: IoptAccess): void {
    this.dropAccessIdx(access);
    this.accesses.delete(access);
    this.recalcAlignment();
  }

  // ---- automatic IOVA allocation (01 §6.4) ---------------------------------------------

  /** Used intervals (reserved ∪ areas) meeting [start, last], ascending, possibly overlapping. */
  private *usedIn(start: bigint, last: bigint, reserved: [bigint, bigint][]): Generator<[bigint, bigint]> {
    let ri = 0;
    while (ri < reserved.length && reserved[ri]![1] < start) ri++;
    let area = this.areaFirst(start, last);
    for (;;) {
      const r = ri < reserved.length && reserved[ri]![0] <= last ? reserved[ri] : undefined;
      if (!r && !area) return;
      if (r && (!area || r[0] <= area.iova)) {
        ri++;
        yield r;
      } else {
        const a = area!;
        area = this.areaNext(a, last);
        yield [a.iova, a.last];
      }
    }
  }

  /** Align `start` up to `align` and add the page offset; accept if the result leaves `length` bytes before `last`. */
  private static fit(start: bigint, last: bigint, length: bigint, align: bigint, pageOffset: bigint): bigint | undefined {
    const up = start + align - 1n;
    if (up > U64_MAX) return undefined;
    const cand = (up & ~(align - 1n)) | pageOffset;
    if (cand >= last || last - cand < length - 1n) return undefined;
    return cand;
  }

  /** Pick an IOVA for `length` bytes whose source starts at `addr` (VA, file offset): EOVERFLOW, EINVAL, ENOSPC. */
  allocIova(addr: bigint, length: bigint, useHints = true): bigint {
    const pageOffset = addr % PS;
    if (length === 0n || length >= U64_MAX >> 1n) fail('EOVERFLOW', 'length is 0 or too large for automatic IOVA allocation');
    let align = roundupPow2(length);
    if (addr !== 0n) align = minB(align, lowBit(addr));
    if (align >= MAX_AUTO_ALIGN) align = MAX_AUTO_ALIGN;
    if (align < this.align) fail('EINVAL', `the source's alignment is below the IOAS's IOVA alignment`);

    const lo = PS;
    const hi = U64_MAX - PS;
    const windows: [bigint, bigint][] = [];
    if (this.allowed.size === 0) {
      windows.push([lo, hi]);
    } else {
      for (const [s, l] of this.allowed.entries()) {
        const ws = maxB(s, lo);
        const we = minB(l, hi);
        if (ws > we) continue;
        const top = windows[windows.length - 1];
        if (top && ws <= top[1] + 1n) top[1] = maxB(top[1], we);
        else windows.push([ws, we]);
      }
    }
    const reserved = this.reservedUnion();
    // Resume where the last identical request ended if nothing was freed since:
    // every hole below that point was too small then and can only have shrunk.
    const key = `${length}:${align}:${pageOffset}`;
    const hint = this.allocHints.get(key);
    const resume = useHints && hint && hint.gen === this.freeGen ? hint : undefined;
    for (let wi = resume ? resume.window : 0; wi < windows.length; wi++) {
      const [ws0, we] = windows[wi]!;
      if (we - ws0 < length - 1n) continue;
      let ws = IoPagetable.fit(ws0, we, length, align, pageOffset);
      if (ws === undefined) continue;
      if (resume && wi === resume.window && resume.pos > ws) ws = resume.pos;
      let cur = ws;
      let open = true;
      let found: bigint | undefined;
      for (const [us, ul] of this.usedIn(ws, we, reserved)) {
        if (us > cur) {
          found = IoPagetable.fitHole(cur, us - 1n, length, align, pageOffset);
          if (found !== undefined) break;
        }
        if (ul >= we) {
          open = false;
          break;
        }
        cur = maxB(cur, ul + 1n);
      }
      if (found === undefined && open && cur <= we) found = IoPagetable.fitHole(cur, we, length, align, pageOffset);
      if (found !== undefined) {
        if (this.allocHints.size > 64) this.allocHints.clear();
        this.allocHints.set(key, { gen: this.freeGen, window: wi, pos: found });
        return found;
      }
    }
    fail('ENOSPC', 'no free IOVA range is large enough');
  }

  /** Bumped whenever IOVA space is freed (area removed, reservation dropped, allowed set replaced). */
  private freeGen = 0;
  private readonly allocHints = new Map<string, { gen: number; window: number; pos: bigint }>();

  private static fitHole(s: bigint, e: bigint, length: bigint, align: bigint, pageOffset: bigint): bigint | undefined {
    if (e - s < length - 1n) return undefined;
    return IoPagetable.fit(s, e, length, align, pageOffset);
  }

  /** Fixed-IOVA checks: EINVAL (alignment / reserved), EOVERFLOW, EEXIST (existing area). */
  private checkIova(iova: bigint, length: bigint): void {
    if (iova & (this.align - 1n)) fail('EINVAL', `iova is not aligned to the IOAS's IOVA alignment`);
    const last = iova + length - 1n;
    if (last > U64_MAX) fail('EOVERFLOW', 'iova + length wraps past 2^64');
    if (this.reservedHit(iova, last)) fail('EINVAL', '[iova, iova + length) hits a reserved range');
    if (this.areaFirst(iova, last)) fail('EEXIST', '[iova, iova + length) overlaps an existing area');
  }

  // ---- mapping -------------------------------------------------------------------------

  /**
   * Place `segs` (total `length` bytes) back to back at `iova` (fixed) or at
   * an automatically chosen IOVA (iova === null), then pin and map them into
   * every attached domain. Returns the IOVA. On error nothing is left behind.
   */
  mapPages(segs: readonly PagesSeg[], length: bigint, iova: bigint | null, prot: number): bigint {
    for (let i = 0; i < segs.length; i++) this.emu.allocPoint();
    if (length === 0n || (length & (this.align - 1n))) fail('EINVAL', 'length is 0 or not a multiple of the IOVA alignment');
    let dst: bigint;
    if (iova === null) {
      const first = segs[0]!;
      dst = this.allocIova(first.pages.base + first.startByte, length);
    } else {
      this.checkIova(iova, length);
      dst = iova;
    }
    const created: Area[] = [];
    try {
      let cur = dst;
      for (const seg of segs) {
        if ((prot & IOMMU_WRITE) && !seg.pages.writable) fail('EPERM', 'writable mapping of read-only memory');
        if ((seg.startByte % PS) & (this.align - 1n)) fail('EINVAL', `the source's page offset is not aligned to the IOVA alignment`);
        const last = cur + seg.length - 1n;
        if (last > U64_MAX) fail('EOVERFLOW', 'the mapping wraps past 2^64');
        const area = new Area(cur, last, seg.pages, shareSmall(seg.startByte), prot);
        this.areas.set(cur, area);
        created.push(area);
        cur = last + 1n;
      }
      this.fillAreas(created);
    } catch (e) {
      for (const a of created) this.dropArea(a);
      throw e;
    }
    for (const a of created) a.busy = false;
    if (this.emu.bus.on) for (const a of created) this.areaEvent('add', a.iova, a.last);
    return dst;
  }

  /** Pin and map new areas into every domain; all or nothing. */
  private fillAreas(areas: Area[]): void {
    if (this.domains.length === 0) return;
    const done: Area[] = [];
    try {
      for (const a of areas) {
        this.fillArea(a);
        done.push(a);
      }
    } catch (e) {
      for (const a of done) this.unfillArea(a);
      throw e;
    }
  }

  private fillArea(area: Area): void {
    if (area.pages.revoked) return; // a revoked dma-buf maps nothing
    area.pages.pin(this.emu, area.firstIndex, area.lastIndex);
    area.filled = true;
    if (this.emu.bus.on) this.pinEvent('pin', area.iova, area.last, 'domain');
    const mapped: PagingDomain[] = [];
    try {
      for (const d of this.domains) {
        this.mapArea(d, area);
        mapped.push(d);
      }
    } catch (e) {
      for (const d of mapped) d.unmap(area.iova, area.length);
      area.pages.unpin(this.emu, area.firstIndex, area.lastIndex);
      area.filled = false;
      if (this.emu.bus.on) this.pinEvent('unpin', area.iova, area.last, 'domain');
      throw e;
    }
  }

  private unfillArea(area: Area): void {
    if (!area.filled) return;
    for (const d of this.domains) d.unmap(area.iova, area.length);
    area.pages.unpin(this.emu, area.firstIndex, area.lastIndex);
    area.filled = false;
    if (this.emu.bus.on) this.pinEvent('unpin', area.iova, area.last, 'domain');
  }

  /** Remove an area from the tree (no domain work). */
  private dropArea(area: Area): void {
    this.freeGen++;
    if (this.areas.get(area.iova) === area) this.areas.delete(area.iova);
  }

  /** Physically contiguous runs behind an area (its pages must be pinned). */
  runsOf(area: Area): PhysRun[] {
    const runs: { phys: number; length: number }[] = [];
    let byte = area.startByte;
    let remaining = area.length;
    while (remaining > 0n) {
      const index = Number(byte / PS);
      const off = Number(byte % PS);
      const n = Math.min(PAGE_SIZE - off, Number(minB(remaining, PS)));
      const page = area.pages.pinned(index);
      if (!page) throw new Error(`io_pagetable: page ${index} of a filled area is not pinned`);
      const phys = page.pfn * PAGE_SIZE + off;
      const top = runs[runs.length - 1];
      if (top && top.phys + top.length === phys) top.length += n;
      else runs.push({ phys, length: n });
      byte += BigInt(n);
      remaining -= BigInt(n);
    }
    return runs;
  }

  /** Map one (pinned) area into `d`: in one call, or page by page with huge pages disabled. */
  private mapArea(d: PagingDomain, area: Area): void {
    let iova = area.iova;
    try {
      // batch_to_domain(): one iommu_map() per physically contiguous run (its entry in the
      // pfn batch), or per page with large pages disabled.
      if (!this.largePagesDisabled) {
        for (const run of this.runsOf(area)) {
          d.map(iova, [run], area.prot);
          iova += BigInt(run.length);
        }
        return;
      }
      for (const run of this.runsOf(area)) {
        let phys = run.phys;
        let left = run.length;
        while (left > 0) {
          const n = Math.min(left, PAGE_SIZE - (phys % PAGE_SIZE));
          d.map(iova, [{ phys, length: n }], area.prot);
          iova += BigInt(n);
          phys += n;
          left -= n;
        }
      }
    } catch (e) {
      if (iova > area.iova) d.unmap(area.iova, iova - area.iova);
      throw e;
    }
  }

  // ---- domains ----------------------------------------------------------------------------

  /**
   * Add a domain: check its smallest page size (EINVAL), raise the alignment
   * (EADDRINUSE), reserve everything outside its aperture (owner = the domain;
   * EADDRINUSE), then map every existing area into it (pins pages; ENOMEM /
   * EFAULT). Fully unwound on failure.
   */
  addDomain(domain: PagingDomain): void {
    if (this.domains.includes(domain)) fail('EEXIST', 'domain already in this IOAS');
    const newAlign = maxB(lowBit(domain.pgsizeBitmap), this.align);
    if (newAlign > PS) fail('EINVAL', `the domain's smallest page size is larger than PAGE_SIZE`);
    if (newAlign !== this.align) this.checkAlignment(newAlign);
    try {
      if (domain.apertureStart !== 0n) this.reserve(0n, domain.apertureStart - 1n, domain);
      if (domain.apertureLast !== U64_MAX) this.reserve(domain.apertureLast + 1n, U64_MAX, domain);
      this.emu.allocPoint();
      this.fillDomain(domain);
    } catch (e) {
      this.unreserve(domain);
      throw e;
    }
    this.align = newAlign;
    this.domains.push(domain);
  }

  /** Map every established area into a new domain, pinning what no other domain holds yet. */
  private fillDomain(d: PagingDomain): void {
    const done: { area: Area; pinned: boolean }[] = [];
    try {
      for (const [, area] of this.areas.entries()) {
        if (area.busy || area.pages.revoked) continue;
        let pinned = false;
        if (!area.filled) {
          area.pages.pin(this.emu, area.firstIndex, area.lastIndex);
          area.filled = true;
          pinned = true;
          if (this.emu.bus.on) this.pinEvent('pin', area.iova, area.last, 'domain');
        }
        try {
          this.mapArea(d, area);
        } catch (e) {
          if (pinned) {
            area.pages.unpin(this.emu, area.firstIndex, area.lastIndex);
            area.filled = false;
            if (this.emu.bus.on) this.pinEvent('unpin', area.iova, area.last, 'domain');
          }
          throw e;
        }
        done.push({ area, pinned });
      }
    } catch (e) {
      for (const { area, pinned } of done) {
        d.unmap(area.iova, area.length);
        if (pinned) {
          area.pages.unpin(this.emu, area.firstIndex, area.lastIndex);
          area.filled = false;
          if (this.emu.bus.on) this.pinEvent('unpin', area.iova, area.last, 'domain');
        }
      }
      throw e;
    }
  }

  /** Remove a domain: unmap all areas from it, unpin what nothing else needs, drop its reservations, recompute alignment. */
  removeDomain(domain: PagingDomain): void {
    const i = this.domains.indexOf(domain);
    if (i < 0) return;
    this.domains.splice(i, 1);
    const last = this.domains.length === 0;
    for (const [, area] of this.areas.entries()) {
      if (!area.filled) continue;
      domain.unmap(area.iova, area.length);
      if (last) {
        area.pages.unpin(this.emu, area.firstIndex, area.lastIndex);
        area.filled = false;
        if (this.emu.bus.on) this.pinEvent('unpin', area.iova, area.last, 'domain');
      }
    }
    this.unreserve(domain);
    this.recalcAlignment();
  }

  // ---- unmapping -----------------------------------------------------------------------------

  /**
   * Remove every area inside [start, last] (01 §4.8): each intersecting area
   * must lie entirely inside (ENOENT), not be in flight or locked (EBUSY);
   * accessors holding pins are told to unpin (EDEADLK if they never do).
   * Stops at the first error; areas removed before it stay removed.
   */
  unmapRange(start: bigint, last: bigint): UnmapResult {
    let unmapped = 0n;
    let tries = 0;
    for (;;) {
      const area = this.areaFirst(start, last);
      if (!area) break;
      if (area.busy) return { unmapped, error: 'EBUSY', reason: 'an area in the range is being mapped' };
      if (this.numLocks(area) > 0) return { unmapped, error: 'EBUSY', reason: 'an area in the range is locked (HW queue memory)' };
      if (area.iova < start || area.last > last) {
        return { unmapped, error: 'ENOENT', reason: 'an area crosses the edge of the range (areas are unmapped whole)' };
      }
      if (area.iova !== start) tries = 0;
      if (this.numAccesses(area) > 0) {
        start = area.iova;
        area.preventAccess = true;
        this.notifyUnmap(area.iova, area.length);
        if (++tries > UNMAP_NOTIFY_TRIES) return { unmapped, error: 'EDEADLK', reason: 'an in-kernel access does not unpin the area' };
        continue;
      }
      this.unfillArea(area);
      this.dropArea(area);
      if (this.emu.bus.on) this.areaEvent('remove', area.iova, area.last);
      unmapped += area.length;
    }
    return { unmapped };
  }

  /** Remove every area; an empty IOAS succeeds with 0. */
  unmapAll(): UnmapResult {
    return this.unmapRange(0n, U64_MAX);
  }

  private notifyUnmap(iova: bigint, length: bigint): void {
    for (const acc of [...this.accesses]) acc.notifyUnmap(iova, length);
  }

  /**
   * VFIO type1 v1: split the areas containing each IOVA so that the IOVA ends
   * an area (01 §6.5). EBUSY (in flight), EINVAL (misaligned, accessed, or
   * mapped with large pages possible).
   */
  cut(iovas: readonly bigint[]): void {
    for (const iova of iovas) {
      const area = this.areaFirst(iova, iova);
      if (area) this.split(area, iova);
    }
  }

  private split(area: Area, iova: bigint): void {
    if (iova === area.iova || iova === area.last) return;
    if (area.busy || area.preventAccess) fail('EBUSY', 'the area is being mapped or unmapped');
    if (area.pages.dmabuf) fail('EOPNOTSUPP', 'area split: dma-buf area');
    const newStart = iova + 1n;
    const mask = this.align - 1n;
    if ((newStart & mask) || (area.byteAt(newStart) & mask)) fail('EINVAL', 'the cut is not aligned to the IOVA alignment');
    this.emu.allocPoint();
    this.emu.allocPoint();
    if (this.numAccesses(area) > 0 || this.numLocks(area) > 0) fail('EINVAL', 'the area is pinned by an in-kernel access');
    if (area.filled && !this.largePagesDisabled) fail('EINVAL', 'the area may be mapped with large pages (enable VFIO v1 / disable huge pages to cut it)');
    const lhs = new Area(area.iova, iova, area.pages, area.startByte, area.prot);
    const rhs = new Area(newStart, area.last, area.pages, area.byteAt(newStart), area.prot);
    lhs.busy = rhs.busy = false;
    if (area.filled) {
      lhs.filled = rhs.filled = true;
      area.pages.addUsers(lhs.firstIndex, lhs.lastIndex);
      area.pages.addUsers(rhs.firstIndex, rhs.lastIndex);
      area.pages.unpin(this.emu, area.firstIndex, area.lastIndex);
    }
    this.areas.set(lhs.iova, lhs);
    this.areas.set(rhs.iova, rhs);
    if (this.emu.bus.on) this.areaEvent('split', area.iova, area.last, iova);
  }

  // ---- contiguous walks (COPY source, accesses) -----------------------------------------------

  /**
   * Walk the established areas covering [iova, last] back to back, calling
   * `fn(area, from, to)` for each piece; returns false if a hole (or an area in
   * flight) interrupted the walk before `last`.
   */
  private walkContig(iova: bigint, last: bigint, fn: (area: Area, from: bigint, to: bigint, first: boolean) => void): boolean {
    let cur = iova;
    let area = this.areaFirst(cur, cur);
    let first = true;
    while (area && !area.busy) {
      const to = minB(last, area.last);
      fn(area, cur, to, first);
      first = false;
      if (area.last >= last) return true;
      cur = area.last + 1n;
      area = this.areas.get(cur);
    }
    return false;
  }

  /** IOAS_COPY source: the slices covering [iova, iova+length) (EINVAL, EOVERFLOW, ENOENT on a hole). */
  getPages(iova: bigint, length: bigint): PagesSeg[] {
    if (length === 0n) fail('EINVAL', 'length is 0');
    const last = iova + length - 1n;
    if (last > U64_MAX) fail('EOVERFLOW', 'iova + length wraps past 2^64');
    const segs: PagesSeg[] = [];
    const ok = this.walkContig(iova, last, (area, from, to) => {
      this.emu.allocPoint();
      segs.push({ pages: area.pages, startByte: area.byteAt(from), length: to - from + 1n });
    });
    if (!ok) fail('ENOENT', '[iova, iova + length) is not fully mapped');
    return segs;
  }

  /**
   * Pin [iova, last] for an access (caller checked length/overflow): EINVAL
   * (unmap in progress, area boundaries inside a page), EPERM (write to a
   * read-only mapping), ENOENT (not fully mapped), EFAULT/ENOMEM from pinning.
   * `lock` also locks the areas against UNMAP. All or nothing.
   */
  accessPin(iova: bigint, last: bigint, write: boolean, lock: boolean): PhysPage[] {
    const done: { area: Area; first: number; lastIdx: number }[] = [];
    const out: PhysPage[] = [];
    try {
      const ok = this.walkContig(iova, last, (area, from, to, firstArea) => {
        if (area.preventAccess || !this.contigAligned(area, from, to, firstArea, last)) fail('EINVAL', 'an unmap is in progress or an area boundary falls inside a page');
        if (!IoPagetable.protAllows(area, write)) fail('EPERM', `the mapping's protection does not allow this access`);
        if (write && !area.pages.writable) fail('EPERM', 'write access to read-only pages');
        if (area.pages.dmabuf) fail('EINVAL', 'access pin: dma-buf area');
        const first = area.indexAt(from);
        const lastIdx = area.indexAt(to);
        for (const p of area.pages.pin(this.emu, first, lastIdx, 'access')) out.push(p);
        this.countPin(area, 1, lock);
        done.push({ area, first, lastIdx });
        if (this.emu.bus.on) this.pinEvent('pin', from, to, 'access', lock);
      });
      if (!ok) fail('ENOENT', '[iova, iova + length) is not fully mapped');
    } catch (e) {
      for (const d of done) {
        d.area.pages.accessUnpinned(d.first, d.lastIdx);
        d.area.pages.unpin(this.emu, d.first, d.lastIdx);
        this.countPin(d.area, -1, lock);
        if (this.emu.bus.on) this.pinEvent('unpin', d.area.iova, d.area.last, 'access', lock);
      }
      throw e;
    }
    return out;
  }

  /** Undo an accessPin of exactly the same range. */
  accessUnpin(iova: bigint, last: bigint, lock: boolean): void {
    const ok = this.walkContig(iova, last, (area, from, to) => {
      area.pages.accessUnpinned(area.indexAt(from), area.indexAt(to));
      area.pages.unpin(this.emu, area.indexAt(from), area.indexAt(to));
      this.countPin(area, -1, lock);
      if (this.emu.bus.on) this.pinEvent('unpin', from, to, 'access', lock);
    });
    if (!ok) throw new Error('io_pagetable: access unpin of a range that is not mapped');
  }

  /**
   * CPU read/write of [iova, iova+data.length) for an access: EINVAL (unmap in
   * progress), EPERM (protection), ENOENT (hole; bytes before it were moved),
   * EFAULT from the source memory.
   */
  accessRw(iova: bigint, data: Uint8Array, write: boolean, caller: UserMemory | null,
    slowPath: boolean): void {
    const last = iova + BigInt(data.length) - 1n;
    let pos = 0;
    const ok = this.walkContig(iova, last, (area, from, to) => {
      if (area.preventAccess) fail('EINVAL', 'an unmap is in progress');
      if (!IoPagetable.protAllows(area, write)) fail('EPERM', `the mapping's protection does not allow this access`);
      const n = Number(to - from + 1n);
      const chunk = data.subarray(pos, pos + n);
      area.pages.rw(this.emu, area.byteAt(from), chunk, write, caller, slowPath);
      pos += n;
    });
    if (!ok) fail('ENOENT', '[iova, iova + length) is not fully mapped');
  }

  private static protAllows(area: Area, write: boolean): boolean {
    return write ? (area.prot & IOMMU_WRITE) !== 0 : (area.prot & IOMMU_READ) !== 0;
  }

  /**
   * Every piece must start on a page boundary of its pages object (an access
   * pins whole pages: callers align the IOVA down), and a piece followed by
   * another area must end on one.
   */
  private contigAligned(area: Area, from: bigint, _to: bigint, _firstArea: boolean, last: bigint): boolean {
    if (area.byteAt(from) % PS !== 0n) return false;
    if (area.last < last && area.byteAt(area.last) % PS !== PS - 1n) return false;
    return true;
  }

  /**
   * The exporter invalidated a dma-buf: every area of a live attachment of it is unmapped
   * from every domain and emptied; the attachments are added to `hit` (the caller marks
   * them revoked once every IOAS has done this: kernel, the importer's revoke notification).
   */
  dmabufUnmap(dmabuf: object, hit: Set<Pages>): void {
    for (const [, area] of this.areas.entries()) {
      if (area.pages.dmabuf !== dmabuf || area.pages.revoked) continue;
      hit.add(area.pages);
      if (!area.filled) continue;
      for (const d of this.domains) d.unmap(area.iova, area.length);
      area.pages.unpin(this.emu, area.firstIndex, area.lastIndex);
      area.filled = false;
      if (this.emu.bus.on) this.pinEvent('unpin', area.iova, area.last, 'domain');
    }
  }

  // ---- lifetime ---------------------------------------------------------------------------------

  /** IOAS destruction: unmap everything and drop all ranges. */
  destroy(): void {
    // Nothing can lock or pin an area of an IOAS being destroyed (they hold the IOAS).
    this.unmapAll();
    this.reserved = [];
    this.allowed = new BTree<bigint, bigint>(undefined, cmp);
    this.freeGen++;
  }

  /** Invariant check for tests: areas ordered and disjoint, filled state consistent. */
  checkInvariants(): void {
    let prevLast: bigint | undefined;
    for (const [k, a] of this.areas.entries()) {
      if (k !== a.iova) throw new Error('area key mismatch');
      if (a.last < a.iova) throw new Error('area inverted');
      if (prevLast !== undefined && a.iova <= prevLast) throw new Error('areas overlap');
      prevLast = a.last;
      if (a.filled !== (this.domains.length > 0 && !a.busy)) throw new Error('area fill state inconsistent');
    }
  }
}
