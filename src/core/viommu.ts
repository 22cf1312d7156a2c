// vIOMMU and vDEVICE objects (02 §3, §5), and the original series' v1 ABI
// (02 §2): the analogue of the kernel's viommu.c.
import type { DriverDevice, PagingDomain, ViommuCore, ViommuOps } from '../drivers/driver.js';
import { fail } from '../uapi/errno.js';
import type { Decoded } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { IommufdCtx, Ucmd } from './context.js';
import type { Veventq } from './eventq.js';
import { IommufdObject, ObjType, refget, refput } from './object.js';
import { registerMmap, unregisterMmaps } from './mmap.js';
import type { PhysPage } from './usermem.js';

const ULONG_MAX = (1n << 64n) - 1n;

/** What this module needs of a HWPT_PAGING (hwpt.ts). */
export interface ParentHwpt extends IommufdObject {
  readonly domain: PagingDomain;
  readonly nestParent: boolean;
}

/** What this module needs of a DEVICE object (device.ts). */
export interface IdevLike extends IommufdObject {
  readonly dev: DriverDevice;
  /** The vDEVICE of this device (6.17+: at most one). */
  vdev: Vdevice | null;
  /** Set while the device is being unbound. */
  readonly unbinding?: boolean;
}

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
    refget(this.hwpt);
    this.hwptRef = true;
  }

  vdevDevice(virtId: bigint): DriverDevice | undefined {
    return this.vdevs.get(virtId)?.idev.dev ?? this.v1VdevIds.get(virtId)?.dev;
  }

  reportEvent(type: number, payload: Uint8Array): void {
    const q = this.veventqs.get(type);
    if (!q) fail('EOPNOTSUPP');
    q.report(payload);
  }

  registerMmap(pages: PhysPage[]): bigint {
    return registerMmap(this.ctx, this, pages);
  }

  destroy(): void {
    this.ops.destroy?.();
    unregisterMmaps(this.ctx, this);
    this.v1VdevIds.clear();
    if (this.hwptRef) refput(this.hwpt);
  }
}

export class Vdevice extends IommufdObject {
  readonly type = ObjType.VDEVICE;
  private linked = false;
  constructor(readonly viommu: Viommu, readonly idev: IdevLike, readonly virtId: bigint) {
    super();
  }
  link(): void {
    refget(this.viommu);
    this.linked = true;
  }
  destroy(): void {
    if (!this.linked) return;
    if (this.viommu.vdevs.get(this.virtId) === this) this.viommu.vdevs.delete(this.virtId);
    if (this.idev.vdev === this) this.idev.vdev = null;
    refput(this.viommu);
    this.linked = false;
  }
}

function lookupParent(ctx: IommufdCtx, hwptId: number): ParentHwpt {
  const hwpt = ctx.get<ParentHwpt>(hwptId, ObjType.HWPT_PAGING);
  if (!hwpt.nestParent) fail('EINVAL');
  return hwpt;
}

/** IOMMU_VIOMMU_ALLOC (02 §3.3; pre-6.17 order behind profile.viommuTypeCheckFirst). */
export function iommufdViommuAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_alloc>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.flags || cmd.type === 0) fail('EOPNOTSUPP');
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  const vdrv = idev.dev.driver.viommu;
  if (!vdrv) fail('EOPNOTSUPP');
  const typeFirst = ctx.profile.viommuTypeCheckFirst;
  if (typeFirst && !vdrv.viommuSupported(idev.dev, cmd.type)) fail('EOPNOTSUPP');
  const hwpt = lookupParent(ctx, cmd.hwpt_id);
  // Before 6.17 the driver's allocation callback rejected unknown types after the HWPT checks.
  if (!typeFirst && !vdrv.viommuSupported(idev.dev, cmd.type)) fail('EOPNOTSUPP');
  const viommu = ctx.allocObj(new Viommu(ctx, cmd.type, hwpt, idev.dev.iommuInstance, idev.dev));
  try {
    viommu.holdParent();
    const data = cmd.data_len ? { type: cmd.type, uptr: cmd.data_uptr, len: cmd.data_len, mem: ucmd.mem } : null;
    viommu.ops = vdrv.viommuInit(viommu, data);
    cmd.out_viommu_id = viommu.id;
    ucmd.respond();
  } catch (e) {
    ctx.objects.abort(viommu);
    throw e;
  }
  ctx.objects.finalize(viommu);
}

/** IOMMU_VDEVICE_ALLOC (02 §5.2; 6.13-6.16 rules without the one-per-device checks). */
export function iommufdVdeviceAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_vdevice_alloc>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.virt_id > ULONG_MAX) fail('EINVAL');
  const viommu = ctx.get<Viommu>(cmd.viommu_id, ObjType.VIOMMU);
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  if (idev.dev.iommuInstance !== viommu.iommuInstance) fail('EINVAL');
  const perDevice = ctx.profile.vdeviceTombstone;
  if (perDevice) {
    if (idev.unbinding) fail('ENOENT');
    if (idev.vdev) fail('EEXIST');
  }
  const vdev = ctx.allocObj(new Vdevice(viommu, idev, cmd.virt_id));
  try {
    vdev.link();
    if (perDevice) idev.vdev = vdev;
    if (viommu.vdevs.has(cmd.virt_id)) fail('EEXIST');
    viommu.vdevs.set(cmd.virt_id, vdev);
    cmd.out_vdevice_id = vdev.id;
    ucmd.respond();
  } catch (e) {
    ctx.objects.abort(vdev);
    throw e;
  }
  ctx.objects.finalize(vdev);
}

/**
 * Device unbind: 6.17+ destroys the device's vDEVICE and keeps its ID as a
 * tombstone; earlier kernels left the vDEVICE alive (it did not pin the DEVICE object).
 */
export function vdeviceOnUnbind(ctx: IommufdCtx, idev: IdevLike): void {
  const vdev = idev.vdev;
  if (!vdev || !ctx.profile.vdeviceTombstone) return;
  if (vdev.users !== 1) throw new Error(`vDEVICE ${vdev.id} has unexpected users at unbind`);
  ctx.objects.tombstone(vdev);
}

// ---- The original vIOMMU series (profile viommu-v1) -----------------------------

/** v1 IOMMU_VIOMMU_ALLOC (0x8f): only the core-managed DEFAULT type; type checked after the lookups. */
export function iommufdViommuAllocV1(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_alloc_v1>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.flags) fail('EOPNOTSUPP');
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  const hwpt = lookupParent(ctx, cmd.hwpt_id);
  if (cmd.type !== 0) fail('EOPNOTSUPP');
  const viommu = ctx.allocObj(new Viommu(ctx, 0, hwpt, idev.dev.iommuInstance, idev.dev));
  try {
    viommu.holdParent();
    // Core-managed: nested domains come from the parent's driver; invalidation from its default hook.
    const drv = idev.dev.driver;
    viommu.ops = {
      allocDomainNested: drv.domainAllocNested
        ? (v, dev, flags, data) => drv.domainAllocNested!(dev, v.parent, flags, data)
        : undefined,
      cacheInvalidate: drv.viommu ? drv.viommu.viommuInit(viommu, null).cacheInvalidate : undefined,
    };
    cmd.out_viommu_id = viommu.id;
    ucmd.respond();
  } catch (e) {
    ctx.objects.abort(viommu);
    throw e;
  }
  ctx.objects.finalize(viommu);
}

/** What v1 SET_VDEV_ID needs of the device's current attachment (device.ts). */
export type AttachedHwptOf = (idev: IdevLike) => IommufdObject | null;
let attachedHwptOf: AttachedHwptOf = () => null;
export function setAttachedHwptLookup(f: AttachedHwptOf): void {
  attachedHwptOf = f;
}

/** v1 IOMMU_VIOMMU_SET_VDEV_ID (0x90): a table entry, not an object. */
export function iommufdViommuSetVdevIdV1(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_vdev_id_v1>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.vdev_id > ULONG_MAX) fail('EINVAL');
  const viommu = ctx.get<Viommu>(cmd.viommu_id, ObjType.VIOMMU);
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  const hwpt = attachedHwptOf(idev) as (IommufdObject & { viommu?: unknown }) | null;
  if (!hwpt || hwpt.type !== ObjType.HWPT_NESTED || hwpt.viommu !== viommu) fail('EINVAL');
  if (viommu.v1VdevIds.has(cmd.vdev_id)) fail('EBUSY');
  ucmd.emu.failPoint('ENOMEM');
  viommu.v1VdevIds.set(cmd.vdev_id, idev);
}

/** v1 IOMMU_VIOMMU_UNSET_VDEV_ID (0x91). */
export function iommufdViommuUnsetVdevIdV1(ucmd: Ucmd<Decoded<typeof S.iommu_viommu_vdev_id_v1>>): void {
  const { cmd, ctx } = ucmd;
  const viommu = ctx.get<Viommu>(cmd.viommu_id, ObjType.VIOMMU);
  const idev = ctx.get<IdevLike>(cmd.dev_id, ObjType.DEVICE);
  if (viommu.v1VdevIds.get(cmd.vdev_id) !== idev) fail('EINVAL');
  viommu.v1VdevIds.delete(cmd.vdev_id);
}

/** v1 device removal: its vdev-ID entries silently disappear. */
export function v1ForgetDevice(ctx: IommufdCtx, idev: IdevLike): void {
  for (const obj of ctx.objects.all()) {
    if (!(obj instanceof Viommu)) continue;
    for (const [k, v] of obj.v1VdevIds) if (v === idev) obj.v1VdevIds.delete(k);
  }
}

