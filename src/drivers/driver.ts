// The IOMMU driver interface: what the core asks of a driver (domains, attach,
// hw_info, vIOMMU ops). The selftest mock driver (drivers/mock) and, later,
// emulated hardware implement it.
import type { UserMemory } from '../core/usermem.js';
import { fail } from '../uapi/errno.js';

/** Driver data passed from user space (HWPT_ALLOC / VIOMMU_ALLOC data_uptr). */
export interface UserData {
  readonly type: number;
  readonly uptr: bigint;
  readonly len: number;
  readonly mem: UserMemory;
}

/** A physically contiguous run to map: phys is a byte address. */
export interface PhysRun {
  readonly phys: number;
  readonly length: number;
}

export const IOMMU_READ = 1;
export const IOMMU_WRITE = 2;
export const IOMMU_CACHE = 4;

export interface IommuDomainBase {
  readonly driver: IommuDriver;
  /** Set when the domain can deliver I/O page faults (HWPT allocated with a FAULT). */
  faultCapable?: boolean;
  /**
   * Translate one device access (the DMA path: device models call it through
   * their attachment, page by page). Tables the driver walks are read through
   * `PHYS` (core/physmem.ts). A fault is returned, not thrown: what happens
   * next (event record, fault queue, the device's error state) is the caller's
   * and the driver's business. Absent = the domain cannot translate for DMA.
   */
  translate?(req: DmaRequest): Translation;
}

/** One device access to translate: `length` bytes at `iova`, not crossing a 4 KiB page. */
export interface DmaRequest {
  readonly dev: DriverDevice;
  /** undefined = the RID (no PASID). */
  readonly pasid?: number;
  readonly iova: bigint;
  readonly length: number;
  readonly write: boolean;
  /** Privileged access (PCIe: only with a PASID prefix); absent = unprivileged. */
  readonly privileged?: boolean;
  /** Instruction fetch; absent = data. */
  readonly instruction?: boolean;
}

/** Why a translation failed: a driver-neutral class plus the driver's own record (e.g. an SMMU event). */
export interface DmaFault {
  readonly kind: 'translation' | 'permission' | 'address-size' | 'access' | 'config' | 'blocked';
  readonly iova: bigint;
  readonly write: boolean;
  /** Stage that faulted, where the hardware has stages. */
  readonly stage?: 1 | 2;
  /** Driver-specific detail (event record, reason text for traces). */
  readonly detail?: unknown;
}

/** A successful translation: the physical byte address of `iova` (valid for the request's length). */
export type Translation = { readonly phys: number } | { readonly fault: DmaFault };

/** A kernel-managed IO page table (HWPT_PAGING / auto-domain). */
export interface PagingDomain extends IommuDomainBase {
  readonly kind: 'paging';
  /** Supported IOPTE sizes, a bitmap of powers of two. */
  readonly pgsizeBitmap: bigint;
  readonly apertureStart: bigint;
  readonly apertureLast: bigint;
  /** Has dirty-tracking ops (allocated with DIRTY_TRACKING). */
  readonly dirtyOps: boolean;
  readonly enforceCacheCoherency: boolean;
  /** Map contiguous physical runs at iova..; throws an errno (ENOMEM...) leaving nothing mapped. */
  map(iova: bigint, runs: readonly PhysRun[], prot: number): void;
  /** Unmap exactly [iova, iova+length); returns bytes unmapped. */
  unmap(iova: bigint, length: bigint): bigint;
  /** Physical address held for iova (undefined if not mapped). */
  iovaToPhys(iova: bigint): number | undefined;
  setDirtyTracking(enable: boolean): void;
  /**
   * Report dirty IOVA ranges within [iova, iova+length) through `mark`, clearing
   * the hardware state unless noClear. `mark` null = clear only (the core's
   * clean snapshot when tracking is switched on; allowed while tracking is off).
   */
  readAndClearDirty(iova: bigint, length: bigint, noClear: boolean, mark: ((iova: bigint, length: bigint) => void) | null): void;
  free(): void;
}

/** A user-managed stage-1 table on a nesting parent (HWPT_NESTED). */
export interface NestedDomain extends IommuDomainBase {
  readonly kind: 'nested';
  readonly parent: PagingDomain;
  /** Set when allocated through a vIOMMU. */
  readonly viommu?: unknown;
  /** HWPT_INVALIDATE on this nested HWPT; returns entries handled, throws with handled count via InvalidateError. */
  cacheInvalidateUser?(req: InvalidateArray): void;
  free(): void;
}

export type IommuDomain = PagingDomain | NestedDomain;

/** The user array of an HWPT_INVALIDATE; the driver sets `handled`. */
export interface InvalidateArray {
  readonly mem: UserMemory;
  readonly type: number;
  readonly uptr: bigint;
  readonly entryLen: number;
  readonly entryNum: number;
  handled: number;
}

/** The "struct device" the core binds: a driver-side device. */
export interface DriverDevice {
  readonly driver: IommuDriver;
  /** Physical IOMMU instance the device sits behind (vIOMMU/vDEVICE checks compare these). */
  readonly iommuInstance: object;
  /** Number of PASIDs supported (0 = none). */
  readonly maxPasids: number;
  /** Reserved IOVA regions (direct-mapped, MSI...): [start, last] inclusive. */
  reservedRegions(): readonly [bigint, bigint][];
  /** Cache-coherent DMA (bind fails with EINVAL otherwise). */
  readonly coherent: boolean;
}

export interface HwInfo {
  readonly type: number;
  readonly data: Uint8Array;
}

export interface IommuDriver {
  readonly name: string;
  /** GET_HW_INFO: throws EOPNOTSUPP for a type it cannot provide; undefined when the driver has no hw_info. */
  hwInfo?(dev: DriverDevice, type: number): HwInfo;
  /** Device capabilities (IOMMU_CAP_DIRTY_TRACKING...). */
  capDirtyTracking(dev: DriverDevice): boolean;
  capEnforceCacheCoherency(dev: DriverDevice): boolean;
  /** Allocate a paging domain (flags = HWPT alloc flags; data = driver data or null). */
  domainAllocPaging(dev: DriverDevice, flags: number, data: UserData | null): PagingDomain;
  /** Allocate a nested domain on `parent`; undefined op = no nesting support. */
  domainAllocNested?(dev: DriverDevice, parent: PagingDomain, flags: number, data: UserData): NestedDomain;
  /**
   * Attach `dev` (at `pasid`, undefined = RID) to `domain` (null = blocked).
   * Driver rules throw (EINVAL / ENOENT ...).
   */
  attach(dev: DriverDevice, domain: IommuDomain | null, pasid: number | undefined): void;
  /** A PRI page-request group was answered (by user space or automatically). */
  pageResponse?(dev: DriverDevice, grpid: number, pasid: number, code: number): void;
  /** The driver keeps PASID tables in user-managed (nested) stage-1 tables: a PASID fault with no PASID attachment falls back to a nested RID attachment. */
  readonly userPasidTable?: boolean;
  /** IOMMU_CAP_PCI_ATS_SUPPORTED; absent = false. */
  capPciAtsSupported?(dev: DriverDevice): boolean;
  /** vIOMMU support (02); undefined = the driver has none (VIOMMU_ALLOC -> EOPNOTSUPP). */
  readonly viommu?: ViommuDriver;
}

// ---- vIOMMU (02) ----------------------------------------------------------------

/** What a driver sees of a vIOMMU object. */
export interface ViommuCore {
  readonly id: number;
  readonly viommuType: number;
  readonly parent: PagingDomain;
  readonly iommuInstance: object;
  /** The device VIOMMU_ALLOC named (drivers check it against their instance). */
  readonly driverDev?: DriverDevice;
  /** virt_id -> the DriverDevice of the vDEVICE holding it. */
  vdevDevice(virtId: bigint): DriverDevice | undefined;
  /** The virt_id `dev` has on this vIOMMU, if any. */
  virtIdOf(dev: DriverDevice): bigint | undefined;
  /** Report an event to the vEVENTQ of `type`: EOPNOTSUPP when there is none. */
  reportEvent(type: number, payload: Uint8Array): void;
  /** Register an mmap region of `pages` on the context; returns its offset. */
  registerMmap(pages: import('../core/usermem.js').PhysPage[]): bigint;
}

/** What a driver sees of a HW queue object. */
export interface HwQueueCore {
  readonly id: number;
  readonly viommu: ViommuCore;
  readonly queueType: number;
  readonly index: number;
  /** The queue's base as the guest gave it (an IOVA of the nesting parent). */
  readonly baseIova: bigint;
  /** Take a dependency reference on another queue of the same vIOMMU (released by the core on destroy). */
  dependOn(other: HwQueueCore): void;
}

export interface ViommuOps {
  /** HWPT_ALLOC with pt_id = this vIOMMU. */
  allocDomainNested?(viommu: ViommuCore, dev: DriverDevice, flags: number, data: UserData): NestedDomain;
  /** HWPT_INVALIDATE with hwpt_id = this vIOMMU; sets req.handled, throws on the first bad entry. */
  cacheInvalidate?(viommu: ViommuCore, req: InvalidateArray): void;
  /** VDEVICE_ALLOC's driver step (6.17+ vdevice_init): throws to refuse the device. */
  vdeviceInit?(viommu: ViommuCore, dev: DriverDevice, virtId: bigint): void;
  /** Non-zero when `type` of HW queue is supported. */
  hwQueueSupported?(type: number): boolean;
  hwQueueInit?(q: HwQueueCore, index: number, physBase: number, length: bigint): void;
  hwQueueDestroy?(q: HwQueueCore): void;
  destroy?(): void;
}

export interface ViommuDriver {
  /** Does the driver support vIOMMU `type` for this device ("viommu size" non-zero)? */
  viommuSupported(dev: DriverDevice, type: number): boolean;
  /** Initialise a vIOMMU of a supported type; data is null when data_len is 0. */
  viommuInit(viommu: ViommuCore, data: UserData | null): ViommuOps;
}

// ---- Driver-data copy helpers (the kernel's iommu_copy_struct_* family) ----------

/**
 * Copy a driver-data struct from user space: wrong type, shorter than `minLen`
 * or longer than the kernel's struct (`kernelLen`, whatever the extra bytes
 * hold) -> EINVAL; unreadable -> EFAULT. The result is zero-extended to kernelLen.
 */
export function copyUserData(data: UserData, type: number, minLen: number, kernelLen: number): Uint8Array {
  if (data.type !== type) fail('EINVAL', `driver data: data_type is not the driver's`);
  if (data.len < minLen || data.len > kernelLen) fail('EINVAL', `driver data: data_len outside the driver struct's sizes`);
  const out = new Uint8Array(kernelLen);
  out.set(data.mem.read(data.uptr, data.len));
  return out;
}

/** Copy entry `index` of an invalidation array with the per-entry rules (same errnos as copyUserData). */
export function copyUserArrayEntry(req: InvalidateArray, type: number, index: number, minLen: number, kernelLen: number): Uint8Array {
  if (req.type !== type) fail('EINVAL', `invalidation array: data_type is not the driver's`);
  if (index >= req.entryNum || !req.entryLen) fail('EINVAL', 'invalidation array: index past entry_num or entry_len is 0');
  if (req.entryLen < minLen || req.entryLen > kernelLen) fail('EINVAL', `invalidation array: entry_len outside the driver struct's sizes`);
  const out = new Uint8Array(kernelLen);
  out.set(req.mem.read(req.uptr + BigInt(index) * BigInt(req.entryLen), req.entryLen));
  return out;
}
