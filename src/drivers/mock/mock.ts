// The selftest mock IOMMU driver (03 §5): one mock IOMMU instance, mock
// devices (NO_DIRTY / HUGE_IOVA / PASID), paging domains that record one entry
// per MOCK_PAGE_SIZE slot, nested domains with a 4-entry IOTLB, dirty tracking,
// the PASID-1024 one-shot failure and a 4 x u32 per-device cache.
// Gen A (xarray mock, <= 6.18) and gen B (generic page table, 6.19+) differ in
// flags, driver data and the HUGE variant; the profile picks one.
import { mockDeviceAddPoints } from './device_core_points.js';
import { XaShape } from '../../core/fault_inject.js';
import { MockViommuDriver } from './viommu.js';
import { amdv1MockDomain, MockAmdv1Domain } from './amdv1.js';
import type { ViommuCore } from '../driver.js';
import type { Emulator } from '../../core/emulator.js';
import { PAGE_SIZE } from '../../core/usermem.js';
import { fail } from '../../uapi/errno.js';
import { acceptedMask, accepts, HWPT_ALLOC, MOCK } from '../../uapi/enums.js';
import { decode, encode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import {
  copyUserArrayEntry, copyUserData, type DriverDevice, type HwInfo, type InvalidateArray, type IommuDomain,
  type IommuDriver, type NestedDomain, type PagingDomain, type PhysRun, type UserData,
} from '../driver.js';

export const MOCK_PAGE_SIZE = PAGE_SIZE / 2;
export const MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE;
const SLOT = BigInt(MOCK_PAGE_SIZE);

/** pagetable_type of gen B paging data. */
export const MOCK_IOMMUPT = { DEFAULT: 0, HUGE: 1 } as const;

/** Per-slot metadata bits (the xarray entry's high bits in the kernel). */
export const SLOT_FLAGS = { START: 1, LAST: 2, DIRTY: 4, HUGE: 8 } as const;

interface Slot {
  /** Physical byte address of the slot. */
  phys: number;
  flags: number;
}

export class MockDevice implements DriverDevice {
  readonly coherent = true;
  /** Per-device cache (vIOMMU invalidation target). */
  readonly cache = new Uint32Array(MOCK.DEV_CACHE_NUM).fill(MOCK.DEV_CACHE_DEFAULT);
  /** PASID 1024: the next non-blocking attach fails once. */
  pasid1024FakeError = false;
  /** Page responses the "hardware" received, oldest first. */
  readonly responses: { grpid: number; pasid: number; code: number }[] = [];
  /** vIOMMU the device is attached through (nested domain on a vIOMMU) and its virtual ID. */
  viommu: unknown = null;
  vdevId = 0n;
  destroyed = false;

  constructor(readonly driver: MockDriver, readonly flags: number) {}

  get iommuInstance(): object {
    return this.driver.instance;
  }
  get maxPasids(): number {
    return this.flags & MOCK.FLAGS_DEVICE_PASID ? 1 << MOCK.PASID_WIDTH : 0;
  }
  get noDirty(): boolean {
    return !!(this.flags & MOCK.FLAGS_DEVICE_NO_DIRTY);
  }
  reservedRegions(): readonly [bigint, bigint][] {
    return [];
  }
}

export class MockPagingDomain implements PagingDomain {
  readonly kind = 'paging';
  faultCapable?: boolean;
  readonly enforceCacheCoherency = false;
  /** slot index (iova / MOCK_PAGE_SIZE) -> entry. */
  readonly slots = new Map<number, Slot>();
  /** The shape of the kernel mock's pfns xarray holding those slots. */
  private readonly xa = new XaShape();
  /** Dirty tracking switched on (SET_DIRTY_TRACKING). */
  tracking = false;
  /** Supported IOPTE sizes, descending. */
  private readonly sizes: bigint[];

  constructor(readonly driver: MockDriver, readonly pgsizeBitmap: bigint, readonly apertureStart: bigint,
    readonly apertureLast: bigint, readonly dirtyOps: boolean) {
    const sizes: bigint[] = [];
    for (let b = 63n; b >= 0n; b--) if (pgsizeBitmap & (1n << b)) sizes.push(1n << b);
    this.sizes = sizes;
  }

  get minPageSize(): bigint {
    return this.sizes[this.sizes.length - 1]!;
  }

  map(iova: bigint, runs: readonly PhysRun[], _prot: number): void {
    this.driver.emu.iommufdPoint('ENOENT'); // the mock's own map failure point (iommufd_should_fail)
    const added: number[] = [];
    let cur = iova;
    try {
      runs.forEach((run, ri) => {
        let phys = BigInt(run.phys);
        let left = BigInt(run.length);
        if (cur % SLOT || phys % SLOT || left % SLOT) fail('EINVAL', 'mock domain: map not aligned to the 2 KiB mock page');
        while (left > 0n) {
          const pg = this.sizes.find((s) => cur % s === 0n && phys % s === 0n && left >= s);
          if (pg === undefined) fail('EINVAL', 'mock domain: no page size fits the run');
          for (let off = 0n; off < pg; off += SLOT) {
            let flags = pg !== SLOT ? SLOT_FLAGS.HUGE : 0;
            if (added.length === 0) flags |= SLOT_FLAGS.START;
            if (ri === runs.length - 1 && left - off === SLOT) flags |= SLOT_FLAGS.LAST;
            const key = Number((cur + off) / SLOT);
            // xa_store() into the mock's pfns xarray: its node allocations are fault points.
            this.driver.emu.faults.xaStore(this.xa, key);
            this.slots.set(key, { phys: Number(phys + off), flags });
            added.push(key);
          }
          cur += pg;
          phys += pg;
          left -= pg;
        }
      });
    } catch (e) {
      for (const k of added) {
        this.slots.delete(k);
        this.xa.erase(k);
      }
      throw e;
    }
  }

  unmap(iova: bigint, length: bigint): bigint {
    for (let off = 0n; off < length; off += SLOT) {
      const k = Number((iova + off) / SLOT);
      this.slots.delete(k);
      this.xa.erase(k);
    }
    return length;
  }

  iovaToPhys(iova: bigint): number | undefined {
    const s = this.slots.get(Number(iova / SLOT));
    return s ? s.phys + Number(iova % SLOT) : undefined;
  }

  setDirtyTracking(enable: boolean): void {
    if (enable && !this.dirtyOps) fail('EINVAL', 'mock domain: allocated without dirty tracking');
    this.tracking = enable;
  }

  /** Any slot of the IOPTE at `head` marked dirty? Clears the marks unless noClear. */
  private testAndClearDirty(head: bigint, pgsize: bigint, noClear: boolean): boolean {
    let dirty = false;
    for (let cur = head; cur < head + pgsize; cur += SLOT) {
      const s = this.slots.get(Number(cur / SLOT));
      if (!s || !(s.flags & SLOT_FLAGS.DIRTY)) continue;
      dirty = true;
      if (!noClear) s.flags &= ~SLOT_FLAGS.DIRTY;
    }
    return dirty;
  }

  readAndClearDirty(iova: bigint, length: bigint, noClear: boolean,
    mark: ((iova: bigint, length: bigint) => void) | null): void {
    if (!this.tracking && mark) fail('EINVAL', 'mock domain: dirty tracking is off');
    const end = iova + length;
    let cur = iova;
    do {
      const s = this.slots.get(Number(cur / SLOT));
      if (!s) {
        cur += SLOT;
        continue;
      }
      const pgsize = s.flags & SLOT_FLAGS.HUGE ? BigInt(MOCK_HUGE_PAGE_SIZE) : SLOT;
      const head = cur & ~(pgsize - 1n);
      if (this.testAndClearDirty(head, pgsize, noClear)) mark?.(cur, pgsize);
      cur += pgsize;
    } while (cur < end);
  }

  /** DIRTY test op: mark the entry holding `iova`; false if nothing is mapped there. */
  markDirty(iova: bigint): boolean {
    return this.markDirtySlot(Number(iova / SLOT));
  }

  /** Mark the entry of slot `index` (iova / MOCK_PAGE_SIZE); false if nothing is mapped there. */
  markDirtySlot(index: number): boolean {
    const s = this.slots.get(index);
    if (!s) return false;
    s.flags |= SLOT_FLAGS.DIRTY;
    return true;
  }

  free(): void {
    this.slots.clear();
  }
}

export class MockNestedDomain implements NestedDomain {
  readonly kind = 'nested';
  faultCapable?: boolean;
  readonly iotlb = new Uint32Array(MOCK.NESTED_DOMAIN_IOTLB_NUM);

  constructor(readonly driver: MockDriver, readonly parent: PagingDomain, iotlb: number, readonly viommu?: unknown) {
    this.iotlb.fill(iotlb);
  }

  /** HWPT_INVALIDATE with IOMMU_HWPT_INVALIDATE_DATA_SELFTEST entries (03 §5.6). */
  cacheInvalidateUser(req: InvalidateArray): void {
    req.handled = 0;
    if (req.type !== MOCK.HWPT_INVALIDATE_DATA_SELFTEST) fail('EINVAL', 'data_type is not the selftest invalidation type');
    for (let i = 0; i < req.entryNum; i++) {
      const inv = decode(S.iommu_hwpt_invalidate_selftest,
        copyUserArrayEntry(req, MOCK.HWPT_INVALIDATE_DATA_SELFTEST, i, 8, 8));
      if (inv.flags & ~MOCK.INVALIDATE_FLAG_ALL) fail('EOPNOTSUPP', 'mock invalidation entry: flags has bits other than ALL');
      if (inv.iotlb_id > MOCK.NESTED_DOMAIN_IOTLB_NUM - 1) fail('EINVAL', 'mock invalidation entry: iotlb_id beyond the mock IOTLB');
      if (inv.flags & MOCK.INVALIDATE_FLAG_ALL) this.iotlb.fill(0);
      else this.iotlb[inv.iotlb_id] = 0;
      req.handled++;
    }
  }

  free(): void {}
}

/** Looks up the virtual ID of `dev` on a vIOMMU (set by the vIOMMU layer); undefined = none. */
export type VdevIdLookup = (viommu: unknown, dev: DriverDevice) => bigint | undefined;

export class MockDriver implements IommuDriver {
  readonly name = 'mock';
  /** The single mock physical IOMMU. */
  readonly instance = { name: 'iommufd_selftest_iommu' };
  readonly userPasidTable = true;
  /** vIOMMU hook: virtual ID of a device on a vIOMMU (attach to a vIOMMU-owned nested domain needs one). */
  vdevIdOf: VdevIdLookup | null = (viommu, dev) => (viommu as ViommuCore).virtIdOf(dev);
  readonly viommu: MockViommuDriver = new MockViommuDriver(this);

  constructor(readonly emu: Emulator) {}

  get gen(): 'A' | 'B' {
    return this.emu.profile.mockGen;
  }

  private get triggerVevent(): boolean {
    return accepts(this.emu.profile, 'iommu_test_op', 'IOMMU_TEST_OP_TRIGGER_VEVENT');
  }

  /** Device flags MOCK_DOMAIN_FLAGS accepts on this profile (6.12.117: NO_DIRTY and HUGE_IOVA only). */
  get validDeviceFlags(): number {
    return acceptedMask(this.emu.profile, 'mock_device_flags');
  }

  /** mock_dev_create: unknown flags -> EINVAL. */
  createDevice(flags: number): MockDevice {
    if (flags & ~this.validDeviceFlags) fail('EINVAL', 'MOCK_DOMAIN_FLAGS: unknown device flag');
    mockDeviceAddPoints(this.emu);
    return new MockDevice(this, flags);
  }

  hwInfo(_dev: DriverDevice, type: number): HwInfo {
    if (type !== 0 && type !== MOCK.HW_INFO_TYPE_SELFTEST) fail('EOPNOTSUPP', 'the mock has no hw_info of this type');
    this.emu.allocPoint();
    return {
      type: MOCK.HW_INFO_TYPE_SELFTEST,
      data: encode(S.iommu_test_hw_info, { flags: 0, test_reg: MOCK.HW_INFO_SELFTEST_REGVAL }),
    };
  }

  capDirtyTracking(dev: DriverDevice): boolean {
    return !(dev as MockDevice).noDirty;
  }

  capEnforceCacheCoherency(): boolean {
    return false;
  }

  domainAllocPaging(dev: DriverDevice, flags: number, data: UserData | null): PagingDomain {
    const mdev = dev as MockDevice;
    const PAGING_FLAGS = acceptedMask(this.emu.profile, 'iommufd_hwpt_alloc_flags') &
      (HWPT_ALLOC.DIRTY_TRACKING | HWPT_ALLOC.NEST_PARENT | HWPT_ALLOC.PASID);
    const dirty = !!(flags & HWPT_ALLOC.DIRTY_TRACKING);
    let pagetableType: number = MOCK_IOMMUPT.DEFAULT;
    if (this.gen === 'A') {
      if (data) fail('EOPNOTSUPP', 'the mock paging domain of this kernel takes no driver data');
      if (flags & ~PAGING_FLAGS || (dirty && mdev.noDirty)) fail('EOPNOTSUPP', 'mock paging alloc: unsupported flags, or DIRTY_TRACKING on a no-dirty device');
    } else {
      if (flags & ~PAGING_FLAGS || (dirty && mdev.noDirty)) fail('EOPNOTSUPP', 'mock paging alloc: unsupported flags, or DIRTY_TRACKING on a no-dirty device');
      if (data && data.type !== MOCK.HWPT_DATA_SELFTEST && data.type !== 0) fail('EOPNOTSUPP', 'mock paging alloc: data_type is not the selftest type');
      if (data) pagetableType = decode(S.iommu_hwpt_selftest, copyUserData(data, MOCK.HWPT_DATA_SELFTEST, 4, 8)).pagetable_type;
    }
    this.emu.allocPoint();
    if (this.gen === 'A') {
      let pgsize = BigInt(MOCK_PAGE_SIZE);
      if (mdev.flags & MOCK.FLAGS_DEVICE_HUGE_IOVA) pgsize |= BigInt(MOCK_HUGE_PAGE_SIZE);
      return new MockPagingDomain(this, pgsize, MOCK.APERTURE_START, MOCK.APERTURE_LAST, dirty);
    }
    switch (pagetableType) {
      case MOCK_IOMMUPT.DEFAULT:
      case MOCK_IOMMUPT.HUGE:
        // The generic page table's AMDv1 format with a 2 KiB granule (drivers/mock/amdv1.ts).
        return amdv1MockDomain(this, pagetableType === MOCK_IOMMUPT.HUGE, dirty);
      default:
        fail('EOPNOTSUPP', 'mock paging alloc: unknown pagetable_type');
    }
  }

  domainAllocNested(_dev: DriverDevice, parent: PagingDomain, flags: number, data: UserData): NestedDomain {
    const allowed = acceptedMask(this.emu.profile, 'iommufd_hwpt_alloc_flags') & HWPT_ALLOC.PASID;
    if (flags & ~allowed) fail('EOPNOTSUPP', 'mock nested alloc: flags other than ALLOC_PASID');
    if (!isMockPaging(parent)) fail('EINVAL', 'the parent is not a mock paging domain');
    return this.allocNested(parent, data);
  }

  /** The common part of nested allocation (direct parent or vIOMMU). */
  allocNested(parent: PagingDomain, data: UserData, viommu?: unknown): MockNestedDomain {
    if (data.type !== MOCK.HWPT_DATA_SELFTEST) fail('EOPNOTSUPP', 'data_type is not IOMMU_HWPT_DATA_SELFTEST');
    const kernelLen = this.gen === 'A' ? 4 : 8;
    const cfg = decode(S.iommu_hwpt_selftest, copyUserData(data, MOCK.HWPT_DATA_SELFTEST, 4, kernelLen));
    this.emu.allocPoint();
    return new MockNestedDomain(this, parent, cfg.iotlb, viommu);
  }

  attach(dev: DriverDevice, domain: IommuDomain | null, pasid: number | undefined): void {
    const mdev = dev as MockDevice;
    if (pasid === undefined) {
      if (domain && domain.kind === 'paging' && domain.dirtyOps && mdev.noDirty) fail('EINVAL', 'mock attach: a dirty-tracking domain on a no-dirty device');
      let viommu: unknown = null;
      let vdevId = 0n;
      // The mock records the device's virtual ID for TRIGGER_VEVENT: kernels with that op
      // refuse a vIOMMU-owned nested domain for a device without a vDEVICE there.
      if (domain && domain.kind === 'nested' && domain.viommu && this.triggerVevent) {
        viommu = domain.viommu;
        const id = this.vdevIdOf?.(viommu, dev);
        if (id === undefined) fail('ENOENT', `mock attach: the device has no vDEVICE on the domain's vIOMMU`);
        vdevId = id;
      }
      // The captured (vIOMMU, virt_id) only changes when the vIOMMU does.
      if (viommu !== mdev.viommu) {
        mdev.viommu = viommu;
        mdev.vdevId = vdevId;
      }
      return;
    }
    // PASID 1024: the first non-blocking attach arms a one-shot failure of the next one.
    if (pasid === MOCK.TEST_PASID_RESERVED) {
      if (!domain) {
        mdev.pasid1024FakeError = false;
      } else if (mdev.pasid1024FakeError) {
        mdev.pasid1024FakeError = false;
        fail('ENOMEM', 'mock attach: the one-shot PASID 1024 failure');
      } else {
        mdev.pasid1024FakeError = true;
      }
    }
  }

  pageResponse(dev: DriverDevice, grpid: number, pasid: number, code: number): void {
    (dev as MockDevice).responses.push({ grpid, pasid, code });
  }
}

/** A paging domain of the mock driver: gen A's slot table or gen B's AMDv1 table. */
export type MockPaging = MockPagingDomain | MockAmdv1Domain;

export function isMockPaging(d: unknown): d is MockPaging {
  return d instanceof MockPagingDomain || d instanceof MockAmdv1Domain;
}

const EXT_KEY = 'mock.driver';

/** The emulator's single mock driver / mock IOMMU. */
export function mockDriverOf(emu: Emulator): MockDriver {
  let d = emu.ext.get(EXT_KEY) as MockDriver | undefined;
  if (!d) {
    d = new MockDriver(emu);
    emu.ext.set(EXT_KEY, d);
  }
  return d;
}
