// vIOMMU and vDEVICE objects (02 §3, §5), and the original series' v1 ABI
// (02 §2): the analogue of the kernel's viommu.c.
import type { DriverDevice, PagingDomain, ViommuCore, ViommuOps } from '../drivers/driver.js';
import { fail } from '../uapi/errno.js';
import type { Decoded } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { IommufdCtx, Ucmd } from './context.js';
import type { Veventq } from './eventq.js';
import { attachedHwpt, UNBIND_HOOKS, type Device } from './device.js';
import {
  HwptNested, hwptNestedAllocOnViommu, invalidateEvent, registerHwptAllocTarget, registerInvalidateTarget, type HwptPaging,
} from './hwpt.js';
import { IommufdObject, ObjType, refget, refput } from './object.js';
import { registerMmap, unregisterMmaps } from './mmap.js';
import type { PhysPage } from './usermem.js';

const ULONG_MAX = (1n << 64n) - 1n;

type ParentHwpt = HwptPaging;
type IdevLike = Device;

export class Viommu extends IommufdObject implements ViommuCore {
  readonly type = ObjType.VIOMMU;
  ops: ViommuOps = {};
  /** virt_id -> vDEVICE. */
  readonly vdevs = new Map<bigint, Vdevice>();
  /** vEVENTQ by event type (at most one per type). */
  readonly veventqs = new Map<number, Veventq>();
  /** v1 ABI: vdev_id -> device table entries (no objects). */
  readonly v1VdevIds = new Map<bigint, IdevLike>();
  private hwptRef = false;

  constructor(
    readonly ctx: IommufdCtx,
    readonly viommuType: number,
    readonly hwpt: ParentHwpt,
    readonly iommuInstance: object,
    readonly driverDev: DriverDevice,
  ) {
    super();
  }

  get parent(): PagingDomain {
    return this.hwpt.domain;
  }

  holdParent(): void {
    refget(this.hwpt, this, 'parent');
    this.hwptRef = true;
  }

  vdevDevice(virtId: bigint): DriverDevice | undefined {
    return this.vdevs.get(virtId)?.idev.dev ?? this.v1VdevIds.get(virtId)?.dev;
  }

  /** The lowest virt_id `dev` has here (the kernel walks its vDEVICE xarray in index order). */
  virtIdOf(dev: DriverDevice): bigint | undefined {
    let best: bigint | undefined;
    for (const [id, v] of this.vdevs) if (v.idev.dev === dev && (best === undefined || id < best)) best = id;
    if (best !== undefined) return best;
    for (const [id, idev] of this.v1VdevIds) if (idev.dev === dev && (best === undefined || id < best)) best = id;
    return best;
  }

  reportEvent(type: number, payload: Uint8Array): void {
    const q = this.veventqs.get(type);
    if (!q) fail('EOPNOTSUPP', 'the vIOMMU has no vEVENTQ of this type');
    q.report(payload);
  }

  registerMmap(pages: PhysPage[]): bigint {
    return registerMmap(this.ctx, this, pages);
  }

  destroy(): void {
    this.ops.destroy?.();
    unregisterMmaps(this.ctx, this);
    this.v1VdevIds.clear();
    if (this.hwptRef) refput(this.hwpt, this, 'parent');
  }
}

export class Vdevice extends IommufdObject {
  readonly type = ObjType.VDEVICE;
  private linked = false;
  private holdsIdev = false;
  constructor(readonly viommu: Viommu, readonly idev: IdevLike, readonly virtId: bigint) {
    super();
  }
  /** +1 on the vIOMMU; 6.17+ also keeps the DEVICE lookup reference and marks the device. */
  link(perDevice: boolean): void {
    refget(this.viommu, this, 'viommu');
    this.linked = true;
    if (perDevice) {
      refget(this.idev, this, 'device');
      this.holdsIdev = true;
      this.idev.vdev = this;
    }
  }
  destroy(): void {
    if (!this.linked) return;
    if (this.viommu.vdevs.get(this.virtId) === this) this.viommu.vdevs.delete(this.virtId);
    if (this.idev.vdev === this) this.idev.vdev = null;
    refput(this.viommu, this, 'viommu');
    if (this.holdsIdev) refput(this.idev, this, 'device');
    this.holdsIdev = false;
    this.linked = false;
  }
}

function lookupParent(ctx: IommufdCtx, hwptId: number): ParentHwpt {
  const hwpt = ctx.get<ParentHwpt>(hwptId, ObjType.HWPT_PAGING);
  if (!hwpt.nestParent) fail('EINVAL', 'hwpt_id is not a nest parent');
  return hwpt;
}

/** IOMMU_VIOMMU_ALLOC (02 §3.3; pre-6.17 order behind profile.viommuTypeCheckFirst). */
export function iommufdViommuAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_alloc>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.flags || cmd.type === 0) fail('EOPNOTSUPP', 'flags must be 0 and type not 0');
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  const vdrv = idev.dev.driver.viommu;
  if (!vdrv) fail('EOPNOTSUPP', `the device's IOMMU driver has no vIOMMU support`);
  const typeFirst = ctx.profile.viommuTypeCheckFirst;
  if (typeFirst && !vdrv.viommuSupported(idev.dev, cmd.type)) fail('EOPNOTSUPP', 'the driver does not support this vIOMMU type');
  const hwpt = lookupParent(ctx, cmd.hwpt_id);
  // Before 6.17 the driver's allocation callback rejected unknown types after the HWPT checks.
  if (!typeFirst && !vdrv.viommuSupported(idev.dev, cmd.type)) fail('EOPNOTSUPP', 'the driver does not support this vIOMMU type');
  const data = cmd.data_len ? { type: cmd.type, uptr: cmd.data_uptr, len: cmd.data_len, mem: ucmd.mem } : null;
  createViommu(ucmd, cmd.type, idev, hwpt, (viommu) => vdrv.viommuInit(viommu, data));
}

/** Reserve, hold the parent, let `init` install the ops, copy back out_viommu_id, publish. */
function createViommu<T extends { out_viommu_id: number }>(ucmd: Ucmd<T>, type: number, idev: IdevLike, hwpt: ParentHwpt,
  init: (viommu: Viommu) => ViommuOps): void {
  ucmd.ctx.createObj(new Viommu(ucmd.ctx, type, hwpt, idev.dev.iommuInstance, idev.dev), (viommu) => {
    viommu.holdParent();
    viommu.ops = init(viommu);
    ucmd.cmd.out_viommu_id = viommu.id;
    ucmd.respond();
  });
}

/** IOMMU_VDEVICE_ALLOC (02 §5.2; 6.13-6.16 rules without the one-per-device checks). */
export function iommufdVdeviceAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_vdevice_alloc>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.virt_id > ULONG_MAX) fail('EINVAL', 'virt_id does not fit an unsigned long');
  const viommu = ctx.get<Viommu>(cmd.viommu_id, ObjType.VIOMMU);
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  if (idev.dev.iommuInstance !== viommu.iommuInstance) fail('EINVAL', 'dev_id is behind another IOMMU instance than the vIOMMU');
  const perDevice = ctx.profile.vdeviceTombstone;
  if (perDevice) {
    if (idev.unbinding) fail('ENOENT', 'the device is being unbound');
    if (idev.vdev) fail('EEXIST', 'the device already has a vDEVICE');
  }
  ctx.createObj(new Vdevice(viommu, idev, cmd.virt_id), (vdev) => {
    vdev.link(perDevice);
    if (viommu.vdevs.has(cmd.virt_id)) fail('EEXIST', 'virt_id is already used on this vIOMMU');
    viommu.vdevs.set(cmd.virt_id, vdev);
    // 6.17+: the driver's vDEVICE init (errors unwind through destroy()).
    if (perDevice) viommu.ops.vdeviceInit?.(viommu, idev.dev, cmd.virt_id);
    cmd.out_vdevice_id = vdev.id;
    ucmd.respond();
  });
}

/**
 * Device unbind: 6.17+ destroys the device's vDEVICE and keeps its ID as a
 * tombstone; earlier kernels left the vDEVICE alive (it did not pin the DEVICE object).
 */
export function vdeviceOnUnbind(ctx: IommufdCtx, idev: IdevLike): void {
  const vdev = idev.vdev;
  if (!vdev || !ctx.profile.vdeviceTombstone) return;
  if (vdev.users !== 1) throw new Error(`vDEVICE ${vdev.id} has unexpected users at unbind`);
  if (vdev.published) ctx.objects.tombstone(vdev);
}

// ---- The original vIOMMU series (profile viommu-v1) -----------------------------

/** v1 IOMMU_VIOMMU_ALLOC (0x8f): only the core-managed DEFAULT type; type checked after the lookups. */
export function iommufdViommuAllocV1(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_alloc_v1>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.flags) fail('EOPNOTSUPP', 'flags must be 0');
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  const hwpt = lookupParent(ctx, cmd.hwpt_id);
  if (cmd.type !== 0) fail('EOPNOTSUPP', 'only the core-managed DEFAULT type (0) exists in this ABI');
  // Core-managed: nested domains come from the parent's driver; invalidation from its default hook.
  const drv = idev.dev.driver;
  createViommu(ucmd, 0, idev, hwpt, (viommu) => ({
    allocDomainNested: drv.domainAllocNested
      ? (v, dev, flags, data) => drv.domainAllocNested!(dev, v.parent, flags, data)
      : undefined,
    cacheInvalidate: drv.viommu ? drv.viommu.viommuInit(viommu, null).cacheInvalidate : undefined,
  }));
}

/** v1 IOMMU_VIOMMU_SET_VDEV_ID (0x90): a table entry, not an object. */
export function iommufdViommuSetVdevIdV1(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_vdev_id_v1>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.vdev_id > ULONG_MAX) fail('EINVAL', 'vdev_id does not fit an unsigned long');
  // That series looked at the device's attachment before it looked up the vIOMMU.
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  const hwpt = attachedHwpt(idev);
  if (!(hwpt instanceof HwptNested)) fail('EINVAL', 'the device is not attached to a nested HWPT');
  const viommu = ctx.get<Viommu>(cmd.viommu_id, ObjType.VIOMMU);
  if (hwpt.viommu !== viommu) fail('EINVAL', `the device's nested HWPT is not on this vIOMMU`);
  if (viommu.v1VdevIds.has(cmd.vdev_id)) fail('EBUSY', 'vdev_id is already set on this vIOMMU');
  ucmd.emu.allocPoint();
  viommu.v1VdevIds.set(cmd.vdev_id, idev);
}

/** v1 IOMMU_VIOMMU_UNSET_VDEV_ID (0x91). */
export function iommufdViommuUnsetVdevIdV1(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_vdev_id_v1>>): void {
  const { cmd, ctx } = ucmd;
  const viommu = ctx.get<Viommu>(cmd.viommu_id, ObjType.VIOMMU);
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  if (viommu.v1VdevIds.get(cmd.vdev_id) !== idev) fail('EINVAL', 'vdev_id is not set for this device on this vIOMMU');
  viommu.v1VdevIds.delete(cmd.vdev_id);
}

/** v1 device removal: its vdev-ID entries silently disappear. */
export function v1ForgetDevice(ctx: IommufdCtx, idev: IdevLike): void {
  for (const obj of ctx.objects.all()) {
    if (!(obj instanceof Viommu)) continue;
    for (const [k, v] of obj.v1VdevIds) if (v === idev) obj.v1VdevIds.delete(k);
  }
}


// ---- HWPT_ALLOC / HWPT_INVALIDATE on a vIOMMU (02 §6, §7) -----------------------

registerHwptAllocTarget(ObjType.VIOMMU, (ctx, idev, pt, flags, data) => {
  const viommu = pt as Viommu;
  if (idev.dev.iommuInstance !== viommu.iommuInstance) fail('EINVAL', 'dev_id is behind another IOMMU instance than the vIOMMU');
  const alloc = viommu.ops.allocDomainNested;
  return hwptNestedAllocOnViommu(ctx, viommu, viommu.hwpt, flags, data,
    alloc && ((f, d) => alloc(viommu, idev.dev, f, d)));
});

registerInvalidateTarget(ObjType.VIOMMU, (_ctx, obj, req) => {
  const viommu = obj as Viommu;
  if (!viommu.ops.cacheInvalidate) fail('EOPNOTSUPP', 'the vIOMMU has no cache invalidation');
  viommu.ops.cacheInvalidate(viommu, req);
});

UNBIND_HOOKS.push(vdeviceOnUnbind, v1ForgetDevice);

/**
 * v1 IOMMU_VIOMMU_INVALIDATE (0x92): HWPT_INVALIDATE's shape, on a vIOMMU only.
 * entry_num is copied back on every path except a failed vIOMMU lookup, which returned at once.
 */
export function iommufdViommuInvalidateV1(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_invalidate_v1>>): void {
  const { cmd, ctx } = ucmd;
  const req = { mem: ucmd.mem, type: cmd.data_type, uptr: cmd.data_uptr, entryLen: cmd.entry_len,
    entryNum: cmd.entry_num, handled: 0 };
  let err: unknown = null;
  let viommu: Viommu | undefined;
  try {
    if (cmd.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
    if (cmd.entry_num && (!cmd.data_uptr || !cmd.entry_len)) fail('EINVAL', 'entry_num set but data_uptr or entry_len is 0');
    viommu = ctx.objects.find(cmd.viommu_id, ObjType.VIOMMU) as Viommu | undefined;
    if (viommu) {
      if (!viommu.ops.cacheInvalidate) fail('EOPNOTSUPP', 'the vIOMMU has no cache invalidation');
      viommu.ops.cacheInvalidate(viommu, req);
    }
  } catch (e) {
    err = e;
  }
  if (!err && !viommu) fail('ENOENT', 'viommu_id is not a vIOMMU'); // no copy-back on this path
  if (viommu) invalidateEvent(ctx, viommu, cmd.data_type, cmd.entry_num, req.handled, err);
  cmd.entry_num = req.handled;
  ucmd.respond();
  if (err) throw err;
}
