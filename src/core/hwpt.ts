// HW page tables: HWPT_PAGING (a kernel-managed IO page table filled from an
// IOAS) and HWPT_NESTED (a user-managed stage-1 table on a nesting parent), and
// the ioctls on them: HWPT_ALLOC, SET_DIRTY_TRACKING, GET_DIRTY_BITMAP,
// HWPT_INVALIDATE (01 §4.12, §4.14-4.16). The analogue of hw_pagetable.c.
import {
  type InvalidateArray, type IommuDomain, type NestedDomain, type PagingDomain, type UserData,
} from '../drivers/driver.js';
import { fail, isErrno, type IommufdError } from '../uapi/errno.js';
import { acceptedMask, HWPT_ALLOC } from '../uapi/enums.js';
import type { Profile } from '../uapi/profiles.js';
import type { Decoded } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { IommufdCtx, Ucmd } from './context.js';
import { hwptAttach, hwptDetach, NO_PASID, type Device } from './device.js';
import type { FaultObj } from './fault.js';
import type { IoPagetable } from './io_pagetable.js';
import { IommufdObject, ObjType, refget, refput } from './object.js';
import { IovaBitmap } from './iova_bitmap.js';
import { PAGE_SIZE } from './usermem.js';

export const U64_MAX = (1n << 64n) - 1n;

/** What this module needs of an IOAS (ioas.ts): its address space and its HWPT list. */
export interface IoasLike extends IommufdObject {
  readonly iopt: IoPagetable;
  /** HWPT_PAGINGs on this IOAS, in creation order (auto-domain search order). */
  readonly hwptList: unknown[];
}

/** Common part of HWPT_PAGING and HWPT_NESTED. */
export abstract class Hwpt extends IommufdObject {
  abstract override readonly type: ObjType.HWPT_PAGING | ObjType.HWPT_NESTED;
  abstract readonly domain: IommuDomain;
  /** FAULT object I/O page faults are routed to (HWPT_ALLOC with FAULT_ID_VALID). */
  fault: FaultObj | null = null;
  /** Allocated with IOMMU_HWPT_ALLOC_PASID: may be attached to PASIDs. */
  pasidCompat = false;

  protected releaseCommon(): void {
    if (this.domain) this.domain.free();
    if (this.fault) {
      refput(this.fault, this, 'fault');
      this.fault = null;
    }
  }
}

export class HwptPaging extends Hwpt {
  readonly type = ObjType.HWPT_PAGING;
  domain!: PagingDomain;
  /** Created by an attach to an IOAS: found by later attaches, destroyed with its last attachment. */
  autoDomain = false;
  nestParent = false;
  enforceCacheCoherency = false;
  /** The domain has been added to the IOAS's iopt and this HWPT is on its hwptList. */
  inIoas = false;
  private holdsIoas = false;

  constructor(readonly ioas: IoasLike) {
    super();
  }

  holdIoas(): void {
    refget(this.ioas, this, 'ioas');
    this.holdsIoas = true;
  }

  destroy(): void {
    if (this.inIoas) {
      this.inIoas = false;
      const i = this.ioas.hwptList.indexOf(this);
      if (i >= 0) this.ioas.hwptList.splice(i, 1);
      this.ioas.iopt.removeDomain(this.domain);
    }
    this.releaseCommon();
    if (this.holdsIoas) {
      this.holdsIoas = false;
      refput(this.ioas, this, 'ioas');
    }
  }
}

export class HwptNested extends Hwpt {
  readonly type = ObjType.HWPT_NESTED;
  domain!: NestedDomain;
  private holds: IommufdObject | null = null;

  /**
   * `viommu` set: allocated on that vIOMMU (the HWPT holds the vIOMMU, whose
   * nesting parent is `parent`); otherwise it holds `parent` directly.
   */
  constructor(readonly parent: HwptPaging, readonly viommu: IommufdObject | null = null) {
    super();
  }

  /** Take the reference this HWPT keeps (on the vIOMMU or the parent). */
  hold(): void {
    this.holds = this.viommu ?? this.parent;
    refget(this.holds, this, this.viommu ? 'viommu' : 'parent');
  }

  destroy(): void {
    this.releaseCommon();
    if (this.holds) {
      refput(this.holds, this, this.viommu ? 'viommu' : 'parent');
      this.holds = null;
    }
  }
}

/** The paging HWPT whose IOAS an attachment of `hwpt` reserves regions in. */
export function findHwptPaging(hwpt: Hwpt): HwptPaging | null {
  if (hwpt instanceof HwptPaging) return hwpt;
  if (hwpt instanceof HwptNested) return hwpt.parent;
  return null;
}

/** HWPT_ALLOC flags the kernel of this profile accepts. */
function knownAllocFlags(profile: Profile): number {
  return acceptedMask(profile, 'iommufd_hwpt_alloc_flags');
}

/** HWPT_ALLOC flags valid for a paging HWPT (6.12: FAULT_ID_VALID only for nested ones). */
function pagingAllocFlags(profile: Profile): number {
  const m = knownAllocFlags(profile);
  return profile.pagingFaultId ? m : m & ~HWPT_ALLOC.FAULT_ID_VALID;
}

/**
 * Drop an attachment's user reference on a HWPT (`idev` is the attached
 * device). An auto-domain that only the table still holds is destroyed.
 */
export function hwptPut(ctx: IommufdCtx, hwpt: Hwpt, idev: Device): void {
  refput(hwpt, idev, 'attach');
  if (hwpt instanceof HwptPaging && hwpt.autoDomain && hwpt.users === 1 &&
    ctx.objects.find(hwpt.id, ObjType.ANY) === hwpt) {
    ctx.objects.removeOwned(hwpt);
  }
}

/**
 * Allocate a HWPT_PAGING on `ioas` for `idev` (iommufd_hwpt_paging_alloc).
 * Returns the unpublished object; the caller finalizes or aborts it. With
 * `immediateAttach` the device is attached at `pasid` before the domain is
 * filled (the auto-domain path).
 */
export function hwptPagingAlloc(ctx: IommufdCtx, ioas: IoasLike, idev: Device, pasid: number, flags: number,
  immediateAttach: boolean, data: UserData | null): HwptPaging {
  const dev = idev.dev;
  if (flags & ~pagingAllocFlags(ctx.profile)) fail('EOPNOTSUPP', 'HWPT_ALLOC paging: flag not valid for a paging HWPT');
  if (flags & HWPT_ALLOC.DIRTY_TRACKING && !dev.driver.capDirtyTracking(dev)) {
    fail('EOPNOTSUPP', 'HWPT_ALLOC paging: DIRTY_TRACKING on a device without dirty tracking');
  }
  if (flags & HWPT_ALLOC.FAULT_ID_VALID && flags & HWPT_ALLOC.NEST_PARENT) {
    fail('EOPNOTSUPP', 'HWPT_ALLOC paging: FAULT_ID_VALID with NEST_PARENT');
  }

  return ctx.buildObj(ctx.allocObj(new HwptPaging(ioas)), (hwpt) => {
    hwpt.pasidCompat = !!(flags & HWPT_ALLOC.PASID);
    hwpt.holdIoas();
    hwpt.nestParent = !!(flags & HWPT_ALLOC.NEST_PARENT);
    hwpt.domain = dev.driver.domainAllocPaging(dev, flags & ~HWPT_ALLOC.FAULT_ID_VALID, data);
    // The coherency mode is fixed before anything is mapped.
    if (idev.enforceCacheCoherency) {
      if (!hwpt.domain.enforceCacheCoherency) fail('EINVAL', 'the device enforces cache coherency and the domain cannot');
      hwpt.enforceCacheCoherency = true;
    }
    if (immediateAttach) hwptAttach(hwpt, idev, pasid);
    try {
      ioas.iopt.addDomain(hwpt.domain);
    } catch (e) {
      if (immediateAttach) hwptDetach(idev, pasid);
      throw e;
    }
    ioas.hwptList.push(hwpt);
    hwpt.inIoas = true;
  });
}

/** Allocate a HWPT_NESTED on a paging parent (iommufd_hwpt_nested_alloc); unpublished. */
export function hwptNestedAlloc(ctx: IommufdCtx, parent: HwptPaging, idev: Device, flags: number,
  data: UserData): HwptNested {
  const dev = idev.dev;
  const valid = HWPT_ALLOC.FAULT_ID_VALID | (knownAllocFlags(ctx.profile) & HWPT_ALLOC.PASID);
  if (flags & ~valid || !data.len || !dev.driver.domainAllocNested) fail('EOPNOTSUPP', 'flags not valid for a nested HWPT, no driver data, or the driver has no nesting');
  if (parent.autoDomain) fail('EINVAL', 'pt_id is an auto-domain');
  if (!parent.nestParent) fail('EINVAL', 'pt_id is not a nest parent');
  if (parent.domain.driver !== dev.driver) fail('EINVAL', 'pt_id belongs to another IOMMU driver');
  return buildNested(ctx, new HwptNested(parent), flags,
    (f) => dev.driver.domainAllocNested!(dev, parent.domain, f, data));
}

/** The common tail of both nested allocations: reserve, hold, let the driver allocate (FAULT_ID_VALID stripped). */
function buildNested(ctx: IommufdCtx, obj: HwptNested, flags: number, allocDomain: (flags: number) => NestedDomain): HwptNested {
  return ctx.buildObj(ctx.allocObj(obj), (hwpt) => {
    hwpt.pasidCompat = !!(flags & HWPT_ALLOC.PASID);
    hwpt.hold();
    hwpt.domain = allocDomain(flags & ~HWPT_ALLOC.FAULT_ID_VALID);
    if (hwpt.domain.kind !== 'nested') fail('EOPNOTSUPP', 'the driver did not return a nested domain');
  });
}

/**
 * Allocate a HWPT_NESTED owned by a vIOMMU (iommufd_viommu_alloc_hwpt_nested):
 * the core's flag/data checks, then `allocDomain` (the vIOMMU driver op) with
 * FAULT_ID_VALID stripped. The HWPT holds the vIOMMU; `parent` is the vIOMMU's
 * nesting parent. Returns the unpublished object.
 */
export function hwptNestedAllocOnViommu(ctx: IommufdCtx, viommu: IommufdObject, parent: HwptPaging, flags: number,
  data: UserData, allocDomain: ((flags: number, data: UserData) => NestedDomain) | undefined): HwptNested {
  const valid = HWPT_ALLOC.FAULT_ID_VALID | (knownAllocFlags(ctx.profile) & HWPT_ALLOC.PASID);
  if (flags & ~valid) fail('EOPNOTSUPP', 'flags not valid for a nested HWPT');
  if (!data.len) fail('EOPNOTSUPP', 'a nested HWPT needs driver data (data_len is 0)');
  if (!allocDomain) fail('EOPNOTSUPP', 'the vIOMMU cannot allocate nested HWPTs');
  return buildNested(ctx, new HwptNested(parent, viommu), flags, (f) => allocDomain(f, data));
}

// ---- pt_id / hwpt_id type switches, open for the vIOMMU branch -------------------

/** HWPT_ALLOC with pt_id of another type (vIOMMU): returns an unpublished HWPT. */
export type PtAllocFn = (ctx: IommufdCtx, idev: Device, pt: IommufdObject, flags: number, data: UserData) => Hwpt;
const PT_ALLOC = new Map<ObjType, PtAllocFn>();
export function registerHwptAllocTarget(type: ObjType, fn: PtAllocFn): void {
  PT_ALLOC.set(type, fn);
}

/** HWPT_INVALIDATE with hwpt_id of another type (vIOMMU): sets req.handled; throws on error. */
export type InvalidateFn = (ctx: IommufdCtx, obj: IommufdObject, req: InvalidateArray) => void;
const INVALIDATE = new Map<ObjType, InvalidateFn>();
export function registerInvalidateTarget(type: ObjType, fn: InvalidateFn): void {
  INVALIDATE.set(type, fn);
}

// ---- ioctl handlers ------------------------------------------------------------------

/** IOMMU_HWPT_ALLOC (01 §4.12). */
export function iommufdHwptAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_hwpt_alloc>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
  if ((cmd.data_type === 0 && cmd.data_len) || (cmd.data_type !== 0 && !cmd.data_len)) fail('EINVAL', 'data_type and data_len disagree (one is 0, the other not)');
  const idev = ctx.get<Device>(cmd.dev_id, ObjType.DEVICE);
  // iommufd_get_object() of pt_id: its own point fails the lookup, answered EINVAL as a miss is.
  ctx.emu.iommufdPoint('EINVAL');
  const pt = ctx.objects.find(cmd.pt_id, ObjType.ANY);
  if (!pt) fail('EINVAL', 'pt_id is not an object of this context');
  const data: UserData = { type: cmd.data_type, uptr: cmd.data_uptr, len: cmd.data_len, mem: ucmd.mem };

  let hwpt: Hwpt;
  switch (pt.type) {
    case ObjType.IOAS:
      hwpt = hwptPagingAlloc(ctx, pt as IoasLike, idev, NO_PASID, cmd.flags, false, cmd.data_len ? data : null);
      break;
    case ObjType.HWPT_PAGING:
      hwpt = hwptNestedAlloc(ctx, pt as HwptPaging, idev, cmd.flags, data);
      break;
    default: {
      const fn = PT_ALLOC.get(pt.type);
      if (!fn) fail('EINVAL', 'pt_id is neither an IOAS, a HWPT_PAGING nor a vIOMMU');
      hwpt = fn(ctx, idev, pt, cmd.flags, data);
    }
  }

  ctx.buildObj(hwpt, () => {
    if (cmd.flags & HWPT_ALLOC.FAULT_ID_VALID) {
      const fault = ctx.get<FaultObj>(cmd.fault_id, ObjType.FAULT);
      hwpt.fault = fault;
      refget(fault, hwpt, 'fault');
      hwpt.domain.faultCapable = true;
    }
    cmd.out_hwpt_id = hwpt.id;
    ucmd.respond();
  });
  ctx.objects.finalize(hwpt);
}

/** IOMMU_HWPT_SET_DIRTY_TRACKING (01 §4.14). `__reserved` is not checked. */
export function iommufdHwptSetDirtyTracking(ucmd: Ucmd<Decoded<typeof S.iommu_hwpt_set_dirty_tracking>>): void {
  const { cmd, ctx } = ucmd;
  const ENABLE = 1;
  if (cmd.flags & ~ENABLE) fail('EOPNOTSUPP', 'flags has bits other than ENABLE');
  const hwpt = ctx.get<HwptPaging>(cmd.hwpt_id, ObjType.HWPT_PAGING);
  const domain = hwpt.domain;
  if (!domain.dirtyOps) fail('EOPNOTSUPP', 'the HWPT was not allocated with DIRTY_TRACKING');
  const enable = !!(cmd.flags & ENABLE);
  if (enable) {
    // A clean snapshot: clear what the IO page table already has marked.
    for (const a of hwpt.ioas.iopt.areasIn(0n, U64_MAX)) domain.readAndClearDirty(a.iova, a.last - a.iova + 1n, false, null);
  }
  domain.setDirtyTracking(enable);
}

/** IOMMU_HWPT_GET_DIRTY_BITMAP (01 §4.15). No copy-back. */
export function iommufdHwptGetDirtyBitmap(ucmd: Ucmd<Decoded<typeof S.iommu_hwpt_get_dirty_bitmap>>): void {
  const { cmd, ctx } = ucmd;
  const NO_CLEAR = 1;
  if (cmd.flags & ~NO_CLEAR || cmd.__reserved) fail('EOPNOTSUPP', 'flags has bits other than NO_CLEAR or __reserved is not 0');
  const hwpt = ctx.get<HwptPaging>(cmd.hwpt_id, ObjType.HWPT_PAGING);
  const iopt = hwpt.ioas.iopt;

  // iommufd_check_iova_range(), in its order.
  if (!cmd.length) fail('EINVAL', 'length is 0 (checked before the overflow)');
  const last = cmd.iova + cmd.length - 1n;
  if (last > U64_MAX) fail('EOVERFLOW', 'iova + length wraps past 2^64');
  const end = (last + 1n) & U64_MAX;
  const align = iopt.iovaAlignment;
  if (cmd.iova % align || end % align) fail('EINVAL', 'iova or iova + length is not aligned to the IOVA alignment');
  const ps = cmd.page_size;
  if (!ps) fail('EINVAL', 'page_size is 0');
  if (cmd.iova & (ps - 1n) || end & (ps - 1n)) fail('EINVAL', 'iova or iova + length is not a multiple of page_size');

  const domain = hwpt.domain;
  if (!domain.dirtyOps) fail('EOPNOTSUPP', 'the HWPT was not allocated with DIRTY_TRACKING');

  // The user bitmap is pinned lazily, where bits are set (iova_bitmap.ts).
  const bitmap = new IovaBitmap(ucmd.emu, ucmd.mem, cmd.iova, cmd.length, ps, cmd.data);
  const mark = (iova: bigint, length: bigint): void => bitmap.set(iova, length);
  // Walk the areas contiguous from `iova`; the walk stops at the first hole and
  // its errors are not reported (kernel behaviour: the call still returns 0).
  let cur = cmd.iova;
  try {
    for (const a of iopt.areasIn(cmd.iova, last)) {
      if (a.iova > cur) break;
      const stop = a.last < last ? a.last : last;
      domain.readAndClearDirty(cur, stop - cur + 1n, !!(cmd.flags & NO_CLEAR), mark);
      if (stop === last) break;
      cur = stop + 1n;
    }
  } catch (e) {
    if (!isErrno(e)) throw e;
  } finally {
    bitmap.flush();
  }
}

/** The `invalidate` trace event of a cache invalidation on a nested HWPT or a vIOMMU. */
export function invalidateEvent(ctx: IommufdCtx, target: IommufdObject, dataType: number, entries: number,
  handled: number, err: unknown): void {
  const bus = ctx.emu.bus;
  if (!bus.on) return;
  bus.emit({
    t: 'invalidate', ctx: ctx.seq, target: target.type === ObjType.HWPT_NESTED ? 'hwpt' : 'viommu', id: target.id,
    dataType, entries, handled, errno: isErrno(err) ? err.code : undefined,
  });
}

/** Upper bound on HWPT_INVALIDATE entry_num (01 §4.16). */
const INVALIDATE_MAX_ENTRIES = 1 << 19;

/** IOMMU_HWPT_INVALIDATE (01 §4.16): always copies back entry_num. */
export function iommufdHwptInvalidate(ucmd: Ucmd<Decoded<typeof S.iommu_hwpt_invalidate>>): void {
  const { cmd, ctx } = ucmd;
  let done = 0;
  let err: IommufdError | null = null;
  let target: IommufdObject | undefined;
  const requested = cmd.entry_num;
  try {
    if (cmd.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
    if (cmd.entry_num && (!cmd.data_uptr || !cmd.entry_len || cmd.entry_len > PAGE_SIZE ||
      cmd.entry_num > INVALIDATE_MAX_ENTRIES)) fail('EINVAL', 'entry_num set but data_uptr or entry_len is 0, entry_len above PAGE_SIZE, or entry_num too large');
    const req: InvalidateArray = {
      mem: ucmd.mem, type: cmd.data_type, uptr: cmd.data_uptr, entryLen: cmd.entry_len, entryNum: cmd.entry_num,
      handled: 0,
    };
    const obj = ctx.profile.invalidateNestedLookupOnly
      ? ctx.get<IommufdObject>(cmd.hwpt_id, ObjType.HWPT_NESTED)
      : ctx.get<IommufdObject>(cmd.hwpt_id, ObjType.ANY);
    target = obj;
    try {
      if (obj.type === ObjType.HWPT_NESTED) {
        const domain = (obj as HwptNested).domain;
        if (!domain.cacheInvalidateUser) fail('EOPNOTSUPP', 'the nested domain cannot be invalidated');
        domain.cacheInvalidateUser(req);
      } else {
        const fn = INVALIDATE.get(obj.type);
        if (!fn) fail('EINVAL', 'hwpt_id is neither a nested HWPT nor a vIOMMU');
        fn(ctx, obj, req);
      }
    } finally {
      done = req.handled;
    }
  } catch (e) {
    if (!isErrno(e)) throw e;
    err = e;
  }
  cmd.entry_num = done;
  if (target) invalidateEvent(ctx, target, cmd.data_type, requested, done, err);
  ucmd.respond();
  if (err) throw err;
}
