// The selftest mock's vIOMMU (03 §5.7), HW queues (03 §5.8) and TRIGGER_VEVENT
// (03 §4.16).
import { fail } from '../../uapi/errno.js';
import { acceptedMask, HWPT_ALLOC, MOCK, TEST_OP } from '../../uapi/enums.js';
import { decode, encode, structSize } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import { registerTestOp } from '../../core/selftest.js';
import { ObjType } from '../../core/object.js';
import { PhysAllocator } from '../../core/simmem.js';
import { PAGE_SIZE } from '../../core/usermem.js';
import type { Device } from '../../core/device.js';
import type { Viommu } from '../../core/viommu.js';
import {
  copyUserData, type DriverDevice, type HwQueueCore, type InvalidateArray, type UserData, type ViommuCore,
  type ViommuDriver, type ViommuOps,
} from '../driver.js';
import type { MockDevice, MockDriver } from './mock.js';

/** Region pages of mock vIOMMUs: their own frames, far from user memory's. */
const regionFrames = new PhysAllocator();

const ENTRY_LEN = 12; // iommu_viommu_invalidate_selftest

export class MockViommuDriver implements ViommuDriver {
  constructor(readonly drv: MockDriver) {}

  viommuSupported(_dev: DriverDevice, type: number): boolean {
    return type === MOCK.VIOMMU_TYPE_SELFTEST;
  }

  viommuInit(viommu: ViommuCore, data: UserData | null): ViommuOps {
    const queues = new Map<number, HwQueueCore>();
    if (data) this.initData(viommu, data);
    return {
      allocDomainNested: (v, _dev, flags, d) => {
        const allowed = acceptedMask(this.drv.emu.profile, 'iommufd_hwpt_alloc_flags') & HWPT_ALLOC.PASID;
        if (flags & ~allowed) fail('EOPNOTSUPP', 'mock vIOMMU nested alloc: flags other than ALLOC_PASID');
        return this.drv.allocNested(v.parent, d, v);
      },
      cacheInvalidate: (v, req) => this.cacheInvalidate(v, req),
      hwQueueSupported: (type) => type === MOCK.HW_QUEUE_TYPE_SELFTEST,
      hwQueueInit: (q, index, physBase) => {
        if (index >= MOCK.HW_QUEUE_MAX) fail('EINVAL', `mock HW queue: index beyond the mock's queues`);
        if (queues.has(index)) fail('EEXIST', 'mock HW queue: index already allocated');
        const prev = index > 0 ? queues.get(index - 1) : undefined;
        if (index > 0 && !prev) fail('EIO', 'mock HW queue: the previous index is not allocated');
        // Self-check of the core: the base must be what the parent translates the IOVA to.
        const expect = viommu.parent.iovaToPhys(q.baseIova);
        if (expect !== undefined && expect !== physBase) fail('EFAULT', `mock HW queue: the core's physical base differs from the parent's translation`);
        if (prev) q.dependOn(prev);
        queues.set(index, q);
      },
      hwQueueDestroy: (q) => {
        if (queues.get(q.index) === q) queues.delete(q.index);
      },
    };
  }

  /** v6.17+ driver data: loopback plus a 2-page mmap region holding in_data. */
  private initData(viommu: ViommuCore, data: UserData): void {
    const K = structSize(S.iommu_viommu_selftest);
    const buf = copyUserData(data, viommu.viommuType, 8, K);
    const d = decode(S.iommu_viommu_selftest, buf);
    this.drv.emu.allocPoint();
    const pages = [regionFrames.alloc(), regionFrames.alloc()];
    pages[0]!.write(0, encode(S.iommu_viommu_event_selftest, { virt_id: d.in_data }));
    const offset = viommu.registerMmap(pages);
    const out = encode(S.iommu_viommu_selftest, {
      in_data: d.in_data, out_data: d.in_data, out_mmap_offset: offset, out_mmap_length: BigInt(2 * PAGE_SIZE),
    });
    data.mem.write(data.uptr, out.subarray(0, Math.min(data.len, K)));
  }

  /**
   * Mainline mock: the whole array is copied first (short entries zero-extended,
   * longer ones need a zero tail: E2BIG), then entries run in order.
   */
  private cacheInvalidate(viommu: ViommuCore, req: InvalidateArray): void {
    if (req.type !== MOCK.VIOMMU_INVALIDATE_DATA_SELFTEST) fail('EINVAL', 'data_type is not the selftest vIOMMU invalidation type');
    if (req.entryNum === 0) return;
    if (this.drv.emu.profile.invalidateCoreLoop) {
      // One entry per call (for-next): each is copied with the per-entry rules and executed before the next.
      for (let i = 0; i < req.entryNum; i++) {
        if (req.entryLen !== ENTRY_LEN) fail('EINVAL', `entry_len is not the selftest entry's size`);
        this.invalidateOne(viommu, req.mem.read(req.uptr + BigInt(i) * BigInt(req.entryLen), ENTRY_LEN));
        req.handled++;
      }
      return;
    }
    const entries: Uint8Array[] = [];
    this.drv.emu.allocPoint();
    for (let i = 0; i < req.entryNum; i++) {
      const raw = req.mem.read(req.uptr + BigInt(i) * BigInt(req.entryLen), req.entryLen);
      if (raw.length > ENTRY_LEN && raw.subarray(ENTRY_LEN).some((b) => b !== 0)) fail('E2BIG', `an entry's bytes past the kernel's struct are not zero`);
      const e = new Uint8Array(ENTRY_LEN);
      e.set(raw.subarray(0, ENTRY_LEN));
      entries.push(e);
    }
    for (const bytes of entries) {
      this.invalidateOne(viommu, bytes);
      req.handled++;
    }
  }

  /** One iommu_viommu_invalidate_selftest entry: flags, cache_id, vdev_id checks, then the clear. */
  private invalidateOne(viommu: ViommuCore, bytes: Uint8Array): void {
    const inv = decode(S.iommu_viommu_invalidate_selftest, bytes);
    if (inv.flags & ~MOCK.INVALIDATE_FLAG_ALL) fail('EOPNOTSUPP', 'mock vIOMMU invalidation entry: flags has bits other than ALL');
    if (inv.cache_id > MOCK.DEV_CACHE_NUM - 1) fail('EINVAL', 'mock vIOMMU invalidation entry: cache_id out of range');
    const dev = viommu.vdevDevice(BigInt(inv.vdev_id)) as MockDevice | undefined;
    if (!dev) fail('EINVAL', 'mock vIOMMU invalidation entry: no vDEVICE with vdev_id');
    if (inv.flags & MOCK.INVALIDATE_FLAG_ALL) dev.cache.fill(0);
    else dev.cache[inv.cache_id] = 0;
  }
}

/** TRIGGER_VEVENT (03 §4.16): report a selftest event for the device's current vIOMMU attachment. */
registerTestOp(TEST_OP.TRIGGER_VEVENT, (ucmd) => {
  const idev = ucmd.ctx.get<Device>(ucmd.cmd.u.dev_id, ObjType.DEVICE);
  const mdev = idev.dev as MockDevice;
  if (!mdev.viommu || mdev.vdevId === 0n) fail('ENOENT', 'the device is not attached through a vIOMMU with a virt_id');
  const payload = encode(S.iommu_viommu_event_selftest, { virt_id: Number(mdev.vdevId & 0xffffffffn) });
  (mdev.viommu as Viommu).reportEvent(MOCK.VEVENTQ_TYPE_SELFTEST, payload);
});
