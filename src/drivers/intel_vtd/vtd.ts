// Intel VT-d (DMAR) as the paging IOMMU behind the emulated PCI devices.
//
// What hardware it models, and why: the IOAT engine the VFIO selftests drive
// is the Skylake-SP ("Purley") CBDMA (8086:2021), so the IOMMU is that
// platform's VT-d unit, with the CAP/ECAP values such a unit reports (facts,
// as GET_HW_INFO returns them). Skylake-SP VT-d has no scalable mode: it
// translates with second-stage (second-level) tables only -- 48-bit, 4-level,
// 2 MiB and 1 GiB superpages, snoop control (so DMA_CC / enforced coherency
// works), interrupt remapping (isolated MSI). What it does not have follows
// from that, and the driver answers as the kernel's intel-iommu does on such a
// unit: no PASID (max_pasid_log2 0), no nesting (NEST_PARENT -> EOPNOTSUPP,
// no vIOMMU), no dirty tracking (SSADS needs scalable mode), no PRI (a
// fault-capable HWPT cannot be attached: ENODEV).
import type { Emulator } from '../../core/emulator.js';
import { fail } from '../../uapi/errno.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import { encode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import {
  IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE, type DmaRequest, type DriverDevice, type HwInfo, type IommuDomain,
  type IommuDriver, type PagingDomain, type PhysRun, type Translation, type UserData,
} from '../driver.js';
import { SL_PTE, SlPageTable, SZ_1G, SZ_2M, SZ_4K, type Leaf } from './pagetable.js';

/** IOMMU_HW_INFO_TYPE_INTEL_VTD. */
export const HW_INFO_TYPE_INTEL_VTD = 1;
/** The kernel sets this flag unconditionally (it only matters on Sapphire Rapids). */
const HW_INFO_VTD_ERRATA_772415_SPR17 = 1;

/** CAP_REG / ECAP_REG of a Skylake-SP VT-d unit (from a real one). */
export const VTD_SKX_REGS = { cap: 0x8d2078c106f0466n, ecap: 0xf020dfn } as const;

const bits = (v: bigint, hi: number, lo: number): number => Number((v >> BigInt(lo)) & ((1n << BigInt(hi - lo + 1)) - 1n));

/** The register fields the driver looks at. */
export function decodeVtdRegs(cap: bigint, ecap: bigint) {
  return {
    /** Max guest address width: MGAW + 1 bits. */
    mgaw: bits(cap, 21, 16) + 1,
    /** Supported adjusted guest address widths (bit 2 = 4-level, 48-bit). */
    sagaw: bits(cap, 12, 8),
    /** Second-level large page support: bit 0 = 2 MiB, bit 1 = 1 GiB. */
    sllps: bits(cap, 37, 34),
    cachingMode: bits(cap, 7, 7) === 1,
    coherent: bits(ecap, 0, 0) === 1,
    deviceTlb: bits(ecap, 2, 2) === 1,
    interruptRemapping: bits(ecap, 3, 3) === 1,
    snoopControl: bits(ecap, 7, 7) === 1,
    nested: bits(ecap, 26, 26) === 1,
    scalableMode: bits(ecap, 43, 43) === 1,
  };
}

/** The MSI/IOAPIC window every device behind VT-d has reserved (IOMMU_RESV_MSI). */
export const VTD_MSI_WINDOW: readonly [bigint, bigint] = [0xfee00000n, 0xfeefffffn];

/** One recorded DMA fault (the unit's fault recording registers, as the kernel logs them). */
export interface VtdFaultRecord {
  readonly source: string;
  readonly iova: bigint;
  readonly write: boolean;
  readonly reason: string;
}

/** One VT-d unit (DRHD): the physical IOMMU instance devices sit behind. */
export class VtdUnit {
  readonly regs: ReturnType<typeof decodeVtdRegs>;
  /** Recent faults, newest last (bounded). */
  readonly faults: VtdFaultRecord[] = [];
  constructor(readonly name: string, readonly cap: bigint = VTD_SKX_REGS.cap, readonly ecap: bigint = VTD_SKX_REGS.ecap) {
    this.regs = decodeVtdRegs(cap, ecap);
  }
  recordFault(f: VtdFaultRecord): void {
    this.faults.push(f);
    if (this.faults.length > 64) this.faults.shift();
  }
}

/** A PCI function behind a VT-d unit (the driver's device_domain_info). */
export class VtdDevice implements DriverDevice {
  readonly coherent = true;
  /** No scalable mode: no PASID. */
  readonly maxPasids = 0;
  /** The paging domain the RID's context entry points at (null = blocked). */
  attached: VtdPagingDomain | null = null;

  constructor(readonly driver: VtdDriver, readonly unit: VtdUnit, readonly name: string,
    readonly caps: { ats?: boolean; pri?: boolean } = {}) {}

  get iommuInstance(): object {
    return this.unit;
  }
  reservedRegions(): readonly [bigint, bigint][] {
    return [[VTD_MSI_WINDOW[0], VTD_MSI_WINDOW[1]]];
  }
}

export class VtdPagingDomain implements PagingDomain {
  readonly kind = 'paging';
  faultCapable?: boolean;
  /** Snoop control: iommufd's enforce-coherency request is granted. */
  readonly enforceCacheCoherency: boolean;
  readonly dirtyOps = false;
  readonly apertureStart = 0n;
  readonly apertureLast: bigint;
  readonly pgsizeBitmap: bigint;
  readonly table: SlPageTable;
  private readonly sizes: number[];

  constructor(readonly driver: VtdDriver, readonly unit: VtdUnit, readonly nestParent: boolean) {
    const r = unit.regs;
    const vasz = Math.min(48, r.mgaw);
    this.apertureLast = (1n << BigInt(vasz)) - 1n;
    let pg = BigInt(SZ_4K);
    if (r.sllps & 1) pg |= BigInt(SZ_2M);
    if (r.sllps & 2) pg |= BigInt(SZ_1G);
    this.pgsizeBitmap = pg;
    this.sizes = [SZ_1G, SZ_2M, SZ_4K].filter((s) => pg & BigInt(s));
    this.enforceCacheCoherency = r.snoopControl;
    this.table = new SlPageTable(() => driver.emu.faults.allocPages(0)); // a table page (fail_page_alloc)
  }

  map(iova: bigint, runs: readonly PhysRun[], prot: number): void {
    let flags = 0;
    if (prot & IOMMU_READ) flags |= SL_PTE.R;
    if (prot & IOMMU_WRITE) flags |= SL_PTE.W;
    if (prot & IOMMU_CACHE && this.enforceCacheCoherency) flags |= SL_PTE.SNP;
    const done: [number, number][] = [];
    let cur = Number(iova);
    try {
      for (const run of runs) {
        let phys = run.phys;
        let left = run.length;
        if (cur % SZ_4K || phys % SZ_4K || left % SZ_4K) fail('EINVAL', 'unaligned map');
        if (BigInt(cur) + BigInt(left) - 1n > this.apertureLast) fail('EINVAL', 'map beyond the aperture');
        while (left > 0) {
          const size = this.sizes.find((s) => cur % s === 0 && phys % s === 0 && left >= s)!;
          if (!this.table.setLeaf(cur, size, phys, flags)) fail('EEXIST', `iova 0x${cur.toString(16)} already mapped`);
          done.push([cur, size]);
          cur += size;
          phys += size;
          left -= size;
        }
      }
    } catch (e) {
      for (const [at, size] of done) this.table.clear(at, size);
      throw e;
    }
  }

  unmap(iova: bigint, length: bigint): bigint {
    return BigInt(this.table.clear(Number(iova), Number(length)));
  }

  iovaToPhys(iova: bigint): number | undefined {
    if (iova > this.apertureLast) return undefined;
    const l = this.table.walk(Number(iova));
    return 'missing' in l ? undefined : l.addr + (Number(iova) % l.size);
  }

  /** The leaf translating `iova` (debugfs dumps, tests). */
  leaf(iova: bigint): Leaf | null {
    if (iova > this.apertureLast) return null;
    const l = this.table.walk(Number(iova));
    return 'missing' in l ? null : l;
  }

  translate(req: DmaRequest): Translation {
    const fault = (kind: 'translation' | 'permission' | 'address-size', reason: string): Translation => {
      this.unit.recordFault({ source: (req.dev as VtdDevice).name ?? '?', iova: req.iova, write: req.write, reason });
      return { fault: { kind, iova: req.iova, write: req.write, detail: { reason } } };
    };
    if (req.iova > this.apertureLast) return fault('address-size', 'input address above the MGAW');
    const l = this.table.walk(Number(req.iova));
    if ('missing' in l) return fault('translation', `second-level entry not present (level ${l.missing})`);
    const need = req.write ? SL_PTE.W : SL_PTE.R;
    if (!(l.flags & need)) return fault('permission', req.write ? 'write to a page without W' : 'read of a page without R');
    return { phys: l.addr + (Number(req.iova) % l.size) };
  }

  setDirtyTracking(_enable: boolean): void {
    fail('EOPNOTSUPP', 'no second-stage A/D bits without scalable mode');
  }

  readAndClearDirty(_iova: bigint, _length: bigint, _noClear: boolean,
    mark: ((iova: bigint, length: bigint) => void) | null): void {
    if (mark) fail('EINVAL', 'VT-d domain: no dirty tracking');
  }

  free(): void {}
}

export class VtdDriver implements IommuDriver {
  readonly name = 'intel-iommu';

  constructor(readonly emu: Emulator) {}

  hwInfo(dev: DriverDevice, type: number): HwInfo {
    if (type !== 0 && type !== HW_INFO_TYPE_INTEL_VTD) fail('EOPNOTSUPP', 'VT-d has no hw_info of this type');
    const unit = (dev as VtdDevice).unit;
    this.emu.allocPoint();
    return {
      type: HW_INFO_TYPE_INTEL_VTD,
      data: encode(S.iommu_hw_info_vtd, { flags: HW_INFO_VTD_ERRATA_772415_SPR17, cap_reg: unit.cap, ecap_reg: unit.ecap }),
    };
  }

  capDirtyTracking(): boolean {
    return false;
  }

  capEnforceCacheCoherency(dev: DriverDevice): boolean {
    return (dev as VtdDevice).unit.regs.snoopControl;
  }

  capPciAtsSupported(dev: DriverDevice): boolean {
    const d = dev as VtdDevice;
    return d.unit.regs.deviceTlb && !!d.caps.ats;
  }

  /** Second-stage allocation (intel_iommu_domain_alloc_second_stage on a legacy-mode unit). */
  domainAllocPaging(dev: DriverDevice, flags: number, data: UserData | null): PagingDomain {
    const unit = (dev as VtdDevice).unit;
    if (data) fail('EOPNOTSUPP', 'VT-d paging alloc takes no driver data');
    if (flags & ~(HWPT_ALLOC.NEST_PARENT | HWPT_ALLOC.DIRTY_TRACKING | HWPT_ALLOC.PASID)) fail('EOPNOTSUPP', 'VT-d paging alloc: flags other than NEST_PARENT|DIRTY_TRACKING|PASID');
    if (flags & HWPT_ALLOC.NEST_PARENT && !unit.regs.nested) fail('EOPNOTSUPP', 'VT-d paging alloc: NEST_PARENT on a unit without nested translation');
    if (flags & HWPT_ALLOC.DIRTY_TRACKING) fail('EOPNOTSUPP', 'VT-d paging alloc: this unit has no dirty tracking');
    this.emu.allocPoint();
    return new VtdPagingDomain(this, unit, !!(flags & HWPT_ALLOC.NEST_PARENT));
  }

  /**
   * intel_iommu_attach_device: the domain must be a second-stage domain this
   * unit can walk (anything else -- another driver's domain, a wider table --
   * is "incompatible", EINVAL, so iommufd tries the next auto-domain); a
   * fault-capable domain needs PRI (ENODEV).
   */
  attach(dev: DriverDevice, domain: IommuDomain | null, pasid: number | undefined): void {
    const vdev = dev as VtdDevice;
    if (pasid !== undefined) fail('EINVAL', 'no PASID support');
    if (!domain) {
      vdev.attached = null;
      return;
    }
    if (!(domain instanceof VtdPagingDomain)) fail('EINVAL', 'VT-d attach: not a VT-d paging domain');
    const r = vdev.unit.regs;
    if (r.mgaw < 48 && domain.apertureLast >= 1n << BigInt(r.mgaw)) fail('EINVAL', `VT-d attach: the domain's aperture exceeds the unit's MGAW`);
    if (domain.pgsizeBitmap & BigInt(SZ_1G) && !(r.sllps & 2)) fail('EINVAL', 'VT-d attach: the domain uses 1 GiB pages the unit lacks');
    if (domain.pgsizeBitmap & BigInt(SZ_2M) && !(r.sllps & 1)) fail('EINVAL', 'VT-d attach: the domain uses 2 MiB pages the unit lacks');
    if (domain.faultCapable && !vdev.caps.pri) fail('ENODEV', 'VT-d attach: a fault-capable domain on a device without PRI');
    vdev.attached = domain;
  }

  /** A device behind `unit` (probe_device). */
  probeDevice(unit: VtdUnit, name: string, caps: { ats?: boolean; pri?: boolean } = {}): VtdDevice {
    return new VtdDevice(this, unit, name, caps);
  }
}

const EXT_KEY = 'intel-vtd.driver';

/** The emulator's intel-iommu driver (one per emulator, any number of units). */
export function vtdDriverOf(emu: Emulator): VtdDriver {
  return emu.extState(EXT_KEY, () => new VtdDriver(emu));
}


