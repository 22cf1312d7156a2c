// The host kernel's arm-smmu-v3 driver over the emulated SMMUs: SMMU
// instances and their masters (the devices behind them, with StreamIDs),
// paging domains (stage 1 with an ASID, or stage 2 with a VMID — the nest
// parent), attach with the STE/CD the kernel writes, invalidation commands on
// unmap, the event-queue handler that forwards to a vIOMMU, GET_HW_INFO.
// What each kernel version did comes from profile.ts.
import type { Emulator } from '../../core/emulator.js';
import { fail, isErrno } from '../../uapi/errno.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import { encode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import {
  type DmaRequest, type DriverDevice, type HwInfo, type IommuDomain, type IommuDriver, type PagingDomain, type PhysRun,
  type Translation, type UserData, type ViommuCore,
} from '../driver.js';
import { cmd } from './cmdq.js';
import { smmuConfig, type SmmuFeatures, type SmmuHwConfig, type SmmuOptions } from './config.js';
import { FORWARDABLE, forwardedRecord } from './event.js';
import { readDesc, TableAllocator, writeDesc } from './mem.js';
import { LpaeTable, type TableMemory } from './pgtable.js';
import {
  HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI, HW_INFO_TYPE_ARM_SMMUV3, smmuAbi, VEVENTQ_TYPE_ARM_SMMUV3, type SmmuAbi,
} from './profile.js';
import { build, CD, EVT, get, getN, OP, S1DSS, STE, STE_CONFIG } from './regs.js';
import { SmmuV3 } from './smmu.js';
import { SmmuViommuDriver, type SmmuNestedDomain } from './viommu.js';

/** The software MSI window arm-smmu-v3 reports as a reserved region (MSI_IOVA_BASE/LENGTH). */
export const MSI_IOVA_BASE = 0x8000000n;
export const MSI_IOVA_LENGTH = 0x100000n;

/** Driver memory for tables, with the kernel's allocation failure point. */
class HostTableMemory implements TableMemory {
  constructor(readonly tables: TableAllocator, readonly emu: Emulator) {}
  alloc(bytes: number): number {
    // iommu_alloc_pages_node_sz(): a page allocation of the table's order (fail_page_alloc:
    // by default, min-order 1, single pages are no points).
    let order = 0;
    while (4096 << order < bytes) order++;
    this.emu.faults.allocPages(order);
    return this.tables.alloc(bytes);
  }
  free(addr: number): void {
    this.tables.free(addr);
  }
  read(addr: number): void {
    if (!readDesc(addr)) throw new Error(`host page table at 0x${addr.toString(16)} is not in physical memory`);
  }
  write(addr: number, lo: number, hi: number): void {
    if (!writeDesc(addr, lo, hi)) throw new Error(`host page table at 0x${addr.toString(16)} is not in physical memory`);
  }
}

/** A device behind an SMMU (the kernel's arm_smmu_master). */
export class SmmuMaster implements DriverDevice {
  readonly coherent = true;
  /** Kernel-owned PASIDs are not modelled: the core attaches the RID only. */
  readonly maxPasids = 0;
  /** The vIOMMU and vSID events are reported with (set by a nested attach with a vDEVICE). */
  vmaster: { viommu: ViommuCore; vsid: bigint } | null = null;
  /** Physical address of the kernel's CD table (one CD), allocated at the first stage-1 attach. */
  cdTable: number | null = null;
  /** Domain installed at the RID (null = blocked). */
  domain: IommuDomain | null = null;
  atsEnabled = false;
  removed = false;

  constructor(readonly driver: ArmSmmuV3Driver, readonly smmu: ArmSmmuDevice, readonly sids: readonly number[],
    /** Firmware CANWBS: the device's accesses are always coherent (IORT). */
    readonly canwbs: boolean,
    /** The device has a PCI ATS capability. */
    readonly atsCapable: boolean) {}

  get iommuInstance(): object {
    return this.smmu;
  }

  get sid(): number {
    return this.sids[0]!;
  }

  reservedRegions(): readonly [bigint, bigint][] {
    return [[MSI_IOVA_BASE, MSI_IOVA_BASE + MSI_IOVA_LENGTH - 1n]];
  }
}

/** Translate a DMA request of `dev` through the SMMU it sits behind (the STE decides, not the domain object). */
export function smmuTranslate(req: DmaRequest): Translation {
  const m = req.dev;
  if (!(m instanceof SmmuMaster)) {
    return { fault: { kind: 'blocked', iova: req.iova, write: req.write, detail: { reason: 'device is not behind an SMMUv3' } } };
  }
  return m.smmu.hw.translate(m.sid, req.iova, req.pasid, req.write, req.privileged ?? false, req.instruction ?? false);
}

export type Stage = 1 | 2;

/** An arm_smmu_domain of the paging kind: stage 1 (ASID, VMID 0) or stage 2 (VMID; the nest parent). */
export class SmmuPagingDomain implements PagingDomain {
  readonly kind = 'paging';
  faultCapable?: boolean;
  readonly dirtyOps = false;
  readonly apertureStart = 0n;
  readonly apertureLast: bigint;
  readonly pgsizeBitmap: bigint;
  readonly table: LpaeTable;
  readonly masters = new Set<SmmuMaster>();
  /** Cache-coherency enforcement was asked for (and is then required of every master). */
  private enforcing = false;
  private freed = false;

  constructor(readonly driver: ArmSmmuV3Driver, readonly smmu: ArmSmmuDevice, readonly stage: Stage,
    readonly nestParent: boolean, readonly asid: number, readonly vmid: number) {
    const f = smmu.features;
    const g = hostGranule(f);
    const ias = stage === 1 ? 48 : f.oas;
    this.table = new LpaeTable(smmu.tableMem, {
      stage, g, ias, oas: f.oas, s2fwb: stage === 2 && nestParent && f.s2fwb,
    });
    this.pgsizeBitmap = this.table.pgsizeBitmap & f.pgsizeBitmap;
    this.apertureLast = (1n << BigInt(ias)) - 1n;
  }

  /** iommu_domain enforce_cache_coherency: true once every attached master is CANWBS (then required). */
  get enforceCacheCoherency(): boolean {
    if (!this.driver.abi.nesting) return false;
    this.enforcing = [...this.masters].every((m) => m.canwbs);
    return this.enforcing;
  }

  get enforcingCoherency(): boolean {
    return this.enforcing;
  }

  map(iova: bigint, runs: readonly PhysRun[], prot: number): void {
    let cur = Number(iova);
    const start = cur;
    try {
      for (const r of runs) {
        this.table.mapRange(cur, r.phys, r.length, prot, this.pgsizeBitmap);
        cur += r.length;
      }
    } catch (e) {
      if (cur > start) this.unmap(iova, BigInt(cur - start));
      throw e;
    }
  }

  unmap(iova: bigint, length: bigint): bigint {
    const leaves: [number, number, number][] = []; // [start, length, leaf size]
    const done = this.table.unmap(Number(iova), Number(length), (va, size) => {
      const last = leaves[leaves.length - 1];
      if (last && last[2] === size && last[0] + last[1] === va) last[1] += size;
      else leaves.push([va, size, size]);
    });
    for (const [va, len, granule] of leaves) this.smmu.invalidateRange(this, va, len, granule);
    return BigInt(done);
  }

  iovaToPhys(iova: bigint): number | undefined {
    return this.table.iovaToPhys(Number(iova));
  }

  setDirtyTracking(): void {
    fail('EOPNOTSUPP', 'SMMUv3 domain: no dirty tracking');
  }

  readAndClearDirty(): void {
    fail('EOPNOTSUPP', 'SMMUv3 domain: no dirty tracking');
  }

  translate(req: DmaRequest): Translation {
    return smmuTranslate(req);
  }

  free(): void {
    if (this.freed) return;
    this.freed = true;
    this.table.free();
    if (this.stage === 1) {
      this.driver.asids.delete(this.asid);
      this.smmu.hw.issue([cmd.make(OP.TLBI_NH_ASID, { VMID: 0, ASID: this.asid })]);
    } else {
      this.smmu.vmids.delete(this.vmid);
      this.smmu.hw.issue([cmd.make(OP.TLBI_S12_VMALL, { VMID: this.vmid })]);
    }
  }
}

/** io-pgtable's granule choice (arm_lpae_restrict_pgsizes with a 4 KiB PAGE_SIZE). */
function hostGranule(f: SmmuFeatures): number {
  if (f.granules.includes(12)) return 12;
  return f.granules.includes(14) ? 14 : 16;
}

/** The kernel's view of one SMMUv3 instance (arm_smmu_device) and the hardware it drives. */
export class ArmSmmuDevice {
  readonly hw: SmmuV3;
  readonly tables = new TableAllocator();
  readonly tableMem: HostTableMemory;
  /** VMIDs in use (1.. ; 0 is reserved for stage-1-only STEs). */
  readonly vmids = new Set<number>();
  /** StreamID -> master. */
  readonly streams = new Map<number, SmmuMaster>();

  constructor(readonly driver: ArmSmmuV3Driver, readonly cfg: SmmuHwConfig) {
    this.hw = new SmmuV3(cfg, driver.emu.bus);
    this.tableMem = new HostTableMemory(this.tables, driver.emu);
    this.hw.eventHandler = (w) => this.handleEvent(w);
  }

  get name(): string {
    return this.cfg.name;
  }

  get features(): SmmuFeatures {
    return this.hw.features;
  }

  allocVmid(): number {
    for (let v = 1; v < 2 ** this.features.vmidBits; v++) {
      if (!this.vmids.has(v)) {
        this.vmids.add(v);
        return v;
      }
    }
    return fail('ENOSPC', 'SMMUv3: no free stream table entry');
  }

  /** Write an STE for every StreamID of `m` and make the SMMU re-read it (CFGI_STE + sync). */
  installSte(m: SmmuMaster, ste: readonly bigint[]): void {
    for (const sid of m.sids) this.hw.writeSte(sid, ste);
    this.hw.issue(m.sids.map((sid) => cmd.make(OP.CFGI_STE, { SID: sid, CFGI_LEAF: 1 })));
    if (this.hw.t.on) this.hw.t.emit('attach', { sids: m.sids, ste: ste.slice(0, 4) });
  }

  /** Write CD 0 of the master's kernel CD table and invalidate it. */
  writeCd(m: SmmuMaster, cd: readonly bigint[]): void {
    const base = m.cdTable!;
    for (let i = 0; i < 8; i++) {
      const v = cd[i] ?? 0n;
      writeDesc(base + 8 * i, Number(v & 0xffffffffn), Number(v >> 32n));
    }
    this.hw.issue(m.sids.map((sid) => cmd.make(OP.CFGI_CD, { SID: sid, SSID: 0, CFGI_LEAF: 1 })));
  }

  /**
   * TLB maintenance after an unmap (arm_smmu_domain_inv_range): stage 1 by
   * ASID, stage 2 by IPA then, for a nest parent, every stage-1 entry of the
   * VMID; whole-context commands when the range is too big without RIL.
   */
  invalidateRange(d: SmmuPagingDomain, iova: number, size: number, granule: number): void {
    const cmds: bigint[][] = [];
    if (d.stage === 1) {
      this.rangeCmds(cmds, OP.TLBI_NH_VA, OP.TLBI_NH_ASID, { VMID: 0, ASID: d.asid }, iova, size, granule, d.pgsizeBitmap);
    } else {
      const tooBig = this.rangeCmds(cmds, OP.TLBI_S2_IPA, OP.TLBI_S12_VMALL, { VMID: d.vmid }, iova, size, granule, d.pgsizeBitmap);
      // Nested stage-1 entries cache stage-2 results: they go too (S12_VMALL already did that).
      if (d.nestParent && !tooBig) cmds.push(cmd.make(OP.TLBI_NH_ALL, { VMID: d.vmid }));
    }
    this.hw.issue(cmds);
  }

  /** arm_smmu_cmdq_batch_add_range; returns true when a whole-context command was used instead. */
  private rangeCmds(out: bigint[][], op: number, nsizeOp: number, base: Record<string, number>, iova: number, size: number,
    granule: number, pgsizes: bigint): boolean {
    const f = this.features;
    const gLog = Math.log2(granule);
    if (!f.rangeInv && size >= 2 ** (gLog - 3) * granule) {
      out.push(cmd.make(nsizeOp, base));
      return true;
    }
    const end = iova + size;
    if (!f.rangeInv) {
      for (let a = iova; a < end; a += granule) out.push(cmd.make(op, { ...base, TLBI_LEAF: 1, ...addrField(op, a) }));
      return false;
    }
    let tg = 0;
    while (!(pgsizes & (1n << BigInt(tg)))) tg++;
    let numPages = Math.floor(size / 2 ** tg);
    const tgEnc = (tg - 10) / 2;
    const ttl = 4 - Math.floor((gLog - 3) / (tg - 3));
    let a = iova;
    while (a < end && numPages > 0) {
      let scale = 0;
      while (Math.floor(numPages / 2 ** scale) % 2 === 0) scale++;
      const num = Math.floor(numPages / 2 ** scale) % 32;
      out.push(cmd.make(op, { ...base, NUM: num - 1, SCALE: scale & 0x1f, TLBI_LEAF: 1, TTL: ttl, TG: tgEnc, ...addrField(op, a) }));
      const range = num * 2 ** (scale + tg);
      numPages -= num * 2 ** scale;
      a += range;
    }
    return false;
  }

  /** arm_smmu_handle_event: forward to the vIOMMU of the master's vmaster, or leave it to the log. */
  handleEvent(w: readonly bigint[]): string {
    const id = getN(w, EVT.ID);
    if (!FORWARDABLE.has(id)) return 'logged (not forwardable)';
    const m = this.streams.get(getN(w, EVT.SID));
    if (!m) return 'logged (no master)';
    if (!this.driver.abi.vevents || !m.vmaster || get(w, EVT.S2)) return 'pinned (host log)';
    try {
      m.vmaster.viommu.reportEvent(VEVENTQ_TYPE_ARM_SMMUV3, forwardedRecord(w, m.vmaster.vsid));
      return 'forwarded';
    } catch (e) {
      if (!isErrno(e)) throw e;
      return `logged (vEVENTQ: ${e.code})`;
    }
  }
}

function addrField(op: number, a: number): Record<string, number> {
  return op === OP.TLBI_S2_IPA ? { IPA: Math.floor(a / 4096) } : { ADDR: Math.floor(a / 4096) };
}

export interface MasterOptions {
  /** StreamIDs (the first is the one DMA uses); default one. */
  sids: readonly number[];
  canwbs?: boolean;
  ats?: boolean;
}

/** The arm-smmu-v3 driver of one emulator: its SMMU instances, the global ASID space, the vIOMMU ops. */
export class ArmSmmuV3Driver implements IommuDriver {
  readonly name = 'arm-smmu-v3';
  /** Guest CD tables hold the PASID tables of nested attachments. */
  readonly userPasidTable = true;
  readonly abi: SmmuAbi;
  readonly smmus: ArmSmmuDevice[] = [];
  /** ASIDs in use, across SMMUs (arm_smmu_asid_xa). */
  readonly asids = new Set<number>();
  readonly viommu?: SmmuViommuDriver;
  hwInfo?: (dev: DriverDevice, type: number) => HwInfo;

  constructor(readonly emu: Emulator) {
    this.abi = smmuAbi(emu.profile);
    if (this.abi.viommu) this.viommu = new SmmuViommuDriver(this);
    // Kernels before the iommufd support of this driver had no hw_info op at all.
    if (this.abi.hwInfo) this.hwInfo = (dev, type) => this.hwInfoOf(dev, type);
  }

  /** Add an SMMU (a config object, or options for smmuConfig()). */
  addSmmu(c: SmmuHwConfig | SmmuOptions = {}): ArmSmmuDevice {
    const cfg = 'idr' in c && Array.isArray(c.idr) ? (c as SmmuHwConfig) : smmuConfig(c as SmmuOptions);
    if (this.smmus.some((s) => s.name === cfg.name)) throw new Error(`SMMU name '${cfg.name}' already in use`);
    const s = new ArmSmmuDevice(this, cfg);
    this.smmus.push(s);
    return s;
  }

  /** Probe a device behind `smmu` with its StreamIDs (arm_smmu_probe_device). */
  addMaster(smmu: ArmSmmuDevice, o: MasterOptions): SmmuMaster {
    if (!o.sids.length) throw new Error('a master needs at least one StreamID');
    for (const sid of o.sids) if (smmu.streams.has(sid)) throw new Error(`StreamID ${sid} already in use on ${smmu.name}`);
    const m = new SmmuMaster(this, smmu, [...o.sids], o.canwbs ?? true, o.ats ?? false);
    for (const sid of o.sids) {
      smmu.hw.addStream(sid);
      smmu.streams.set(sid, m);
    }
    return m;
  }

  removeMaster(m: SmmuMaster): void {
    for (const sid of m.sids) {
      m.smmu.streams.delete(sid);
      m.smmu.hw.removeStream(sid);
    }
    if (m.cdTable !== null) m.smmu.tables.free(m.cdTable);
    m.cdTable = null;
    m.removed = true;
  }

  private hwInfoOf(dev: DriverDevice, type: number): HwInfo {
    if (type !== 0 && type !== HW_INFO_TYPE_ARM_SMMUV3) fail('EOPNOTSUPP', 'SMMUv3 has no hw_info of this type');
    this.emu.allocPoint();
    const s = (dev as SmmuMaster).smmu;
    const flags = this.abi.erratumFlag && s.cfg.erratumRepeatTlbiCfgi ? HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI : 0;
    return {
      type: HW_INFO_TYPE_ARM_SMMUV3,
      data: encode(S.iommu_hw_info_arm_smmuv3, { flags, idr: [...s.cfg.idr], iidr: s.cfg.iidr, aidr: s.cfg.aidr }),
    };
  }

  capDirtyTracking(): boolean {
    return false; // needs IDR0.HTTU = 2 (HD), which the emulator does not model
  }

  /** IOMMU_CAP_ENFORCE_CACHE_COHERENCY: the CANWBS firmware flag (came with the nesting support). */
  capEnforceCacheCoherency(dev: DriverDevice): boolean {
    return this.abi.nesting && (dev as SmmuMaster).canwbs;
  }

  capPciAtsSupported(dev: DriverDevice): boolean {
    const m = dev as SmmuMaster;
    return m.smmu.features.ats && m.atsCapable;
  }

  /** arm_smmu_domain_alloc_paging_flags (6.12: arm_smmu_domain_alloc_user). */
  domainAllocPaging(dev: DriverDevice, flags: number, data: UserData | null): PagingDomain {
    const m = dev as SmmuMaster;
    const f = m.smmu.features;
    const allowed = HWPT_ALLOC.DIRTY_TRACKING | (this.abi.nesting ? HWPT_ALLOC.NEST_PARENT : 0) |
      (this.abi.pasidFlag ? HWPT_ALLOC.PASID : 0);
    if (flags & ~allowed) fail('EOPNOTSUPP', 'SMMUv3 paging alloc: unsupported flags');
    if (data) fail('EOPNOTSUPP', 'SMMUv3 paging alloc takes no driver data');
    this.emu.allocPoint(); // arm_smmu_domain_alloc
    let stage: Stage;
    let nestParent = false;
    switch (flags) {
      case 0:
        stage = f.s1 ? 1 : 2;
        break;
      case HWPT_ALLOC.NEST_PARENT:
        if (!f.nesting) fail('EOPNOTSUPP', 'SMMUv3 paging alloc: NEST_PARENT without nesting support');
        stage = 2;
        nestParent = true;
        break;
      case HWPT_ALLOC.DIRTY_TRACKING:
      case HWPT_ALLOC.DIRTY_TRACKING | HWPT_ALLOC.PASID:
      case HWPT_ALLOC.PASID:
        if (!f.s1) fail('EOPNOTSUPP', 'SMMUv3 paging alloc: no stage 1 on this SMMU');
        stage = 1;
        break;
      default:
        fail('EOPNOTSUPP', 'SMMUv3 paging alloc: unsupported flag combination');
    }
    if (stage === 2 && flags & HWPT_ALLOC.DIRTY_TRACKING) fail('EOPNOTSUPP', 'SMMUv3 paging alloc: no dirty tracking on a stage-2 domain');
    let asid = 0;
    let vmid = 0;
    if (stage === 1) {
      for (asid = 1; asid < 2 ** f.asidBits && this.asids.has(asid); asid++);
      if (asid >= 2 ** f.asidBits) fail('EBUSY', 'SMMUv3: no free ASID');
    } else {
      vmid = m.smmu.allocVmid();
    }
    try {
      const d = new SmmuPagingDomain(this, m.smmu, stage, nestParent, asid, vmid);
      if (stage === 1) this.asids.add(asid);
      return d;
    } catch (e) {
      if (stage === 2) m.smmu.vmids.delete(vmid);
      throw e;
    }
  }

  attach(dev: DriverDevice, domain: IommuDomain | null, pasid: number | undefined): void {
    const m = dev as SmmuMaster;
    if (pasid !== undefined) fail('EINVAL', 'SMMUv3 attach: PASIDs are not supported'); // no kernel PASID support modelled (maxPasids = 0)
    if (!domain) {
      m.vmaster = null;
      m.atsEnabled = false;
      m.smmu.installSte(m, abortSte());
      m.domain = null;
      this.detachFromOld(m);
      return;
    }
    if (domain instanceof SmmuPagingDomain) {
      if (domain.smmu !== m.smmu) fail('EINVAL', 'SMMUv3 attach: the domain belongs to another SMMU');
      if (domain.stage === 1 && m.cdTable === null) {
        this.emu.allocPoint();
        m.cdTable = m.smmu.tables.alloc(64);
      }
      this.emu.allocPoint(); // arm_smmu_master_domain
      if (domain.enforcingCoherency && !m.canwbs) fail('EINVAL', 'SMMUv3 attach: a coherency-enforcing domain on a master without CANWBS');
      m.vmaster = null;
      m.atsEnabled = this.capPciAtsSupported(m);
      this.detachFromOld(m);
      if (domain.stage === 1) {
        m.smmu.writeCd(m, s1Cd(domain));
        m.smmu.installSte(m, cdTableSte(m));
      } else {
        m.smmu.installSte(m, s2Ste(m, domain));
      }
      domain.masters.add(m);
      m.domain = domain;
      return;
    }
    const nd = domain as SmmuNestedDomain;
    if (!nd.isSmmuNested) fail('EINVAL', 'SMMUv3 attach: not an SMMUv3 nested domain');
    this.attachNested(m, nd);
  }

  private attachNested(m: SmmuMaster, nd: SmmuNestedDomain): void {
    if (nd.vsmmu.smmu !== m.smmu) fail('EINVAL', `SMMUv3 attach: the nested domain's vSMMU is on another SMMU`);
    const cfg = Number((nd.ste[0] >> 1n) & 7n);
    let vmaster: SmmuMaster['vmaster'] = null;
    if (this.abi.vevents) {
      const vsid = nd.vsmmu.core.virtIdOf(m);
      if (vsid === undefined) {
        // A translating vSTE needs the vSID (CD/ATC invalidations, events); abort/bypass may go without (GBPA).
        if (cfg !== STE_CONFIG.ABORT && cfg !== STE_CONFIG.BYPASS) fail('ENOENT', `SMMUv3 attach: a translating vSTE needs the device's vDEVICE (vSID)`);
      } else {
        this.emu.allocPoint();
        vmaster = { viommu: nd.vsmmu.core, vsid };
      }
    }
    this.emu.allocPoint(); // arm_smmu_master_domain
    const parent = nd.vsmmu.s2Parent;
    if (parent.enforcingCoherency && !m.canwbs) fail('EINVAL', 'SMMUv3 attach: a coherency-enforcing parent on a master without CANWBS');
    // The VM owns the device's ATS state: with a translating vSTE ATS follows its EATS.
    m.atsEnabled = this.capPciAtsSupported(m) && (cfg !== STE_CONFIG.S1_TRANS || nd.enableAts);
    this.detachFromOld(m);
    m.smmu.installSte(m, nestedSte(m, nd));
    m.vmaster = vmaster;
    parent.masters.add(m);
    m.domain = nd;
  }

  /** Remove the master from the devices list of its previous domain. */
  private detachFromOld(m: SmmuMaster): void {
    const old = m.domain;
    if (old instanceof SmmuPagingDomain) old.masters.delete(m);
    else if (old && (old as SmmuNestedDomain).isSmmuNested) (old as SmmuNestedDomain).vsmmu.s2Parent.masters.delete(m);
  }
}

// ---- STE and CD composition (arm_smmu_make_*_ste, arm_smmu_make_s1_cd) ----------------------

export function abortSte(): bigint[] {
  return build(STE, 8, { V: 1, CONFIG: STE_CONFIG.ABORT });
}

function cdTableSte(m: SmmuMaster): bigint[] {
  const ste = build(STE, 8, {
    V: 1, CONFIG: STE_CONFIG.S1_TRANS, S1FMT: 0, S1CDMAX: 0,
    S1DSS: S1DSS.SSID0, S1CIR: 1, S1COR: 1, S1CSH: 3, STRW: 0,
    EATS: m.atsEnabled ? 1 : 0, S2VMID: 0,
  });
  ste[0] = ste[0]! | (BigInt(m.cdTable!) & (((1n << 52n) - 1n) & ~0x3fn));
  return ste;
}

export function s2Ste(m: SmmuMaster, d: SmmuPagingDomain): bigint[] {
  const v = d.table.vtcr;
  const f = m.smmu.features;
  const ste = build(STE, 8, {
    V: 1, CONFIG: STE_CONFIG.S2_TRANS, EATS: m.atsEnabled ? 1 : 0,
    S2FWB: d.nestParent && f.s2fwb ? 1 : 0, SHCFG: f.attrTypesOvr ? 1 : 0,
    S2VMID: d.vmid, S2T0SZ: v.t0sz, S2SL0: v.sl0, S2IR0: v.irgn, S2OR0: v.orgn, S2SH0: v.sh, S2TG: v.tg, S2PS: v.ps,
    S2AA64: 1, S2PTW: 1, S2R: 1,
  });
  ste[3] = BigInt(d.table.root) & (((1n << 52n) - 1n) & ~0xfn);
  return ste;
}

/** The physical STE for a nested domain (arm_smmu_make_nested_domain_ste). */
export function nestedSte(m: SmmuMaster, nd: SmmuNestedDomain): bigint[] {
  const v0 = nd.ste[0];
  let cfg = Number((v0 >> 1n) & 7n);
  if (!(v0 & 1n)) cfg = STE_CONFIG.ABORT;
  switch (cfg) {
    case STE_CONFIG.S1_TRANS: {
      const ste = s2Ste(m, nd.vsmmu.s2Parent);
      const cfgMask = 7n << 1n;
      ste[0] = build(STE, 1, { V: 1, CONFIG: STE_CONFIG.NESTED })[0]! | (v0 & ~cfgMask);
      ste[1] = ste[1]! | nd.ste[1] | (1n << BigInt(STE.MEV.lo));
      return ste;
    }
    case STE_CONFIG.BYPASS:
      return s2Ste(m, nd.vsmmu.s2Parent);
    default:
      return abortSte();
  }
}

function s1Cd(d: SmmuPagingDomain): bigint[] {
  const t = d.table.tcr;
  const cd = build(CD, 8, {
    T0SZ: t.t0sz, TG0: t.tg0, IR0: t.irgn, OR0: t.orgn, SH0: t.sh, EPD1: 1, V: 1, IPS: t.ips, AA64: 1, R: 1, A: 1,
    ASET: 1, ASID: d.asid,
  });
  cd[1] = BigInt(d.table.root) & (((1n << 52n) - 1n) & ~0xfn);
  cd[3] = 0xf404ff44n; // MAIR: NC, WBRWA, DEVICE, INC_OWBRWA at indexes 0..3
  return cd;
}

