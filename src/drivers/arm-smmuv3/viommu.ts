// The ARM_SMMUV3 vIOMMU (the kernel's arm-smmu-v3-iommufd.c): the vSMMU's
// preconditions, nested domains from a guest STE (vSTE validation), guest
// commands through HWPT_INVALIDATE (checked, rewritten to the host's VMID and
// StreamIDs, issued in batches of 63 as the kernel does), vDEVICE init.
import { fail } from '../../uapi/errno.js';
import {
  copyUserData, type DmaRequest, type DriverDevice, type InvalidateArray, type NestedDomain, type PagingDomain,
  type Translation, type UserData, type ViommuCore, type ViommuDriver, type ViommuOps,
} from '../driver.js';
import type { ArmSmmuDevice, ArmSmmuV3Driver, SmmuMaster } from './arm_smmu_v3.js';
import { SmmuPagingDomain, smmuTranslate } from './arm_smmu_v3.js';
import { HWPT_DATA_ARM_SMMUV3, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3 } from './profile.js';
import { ATC_INV_SIZE_ALL, CMD, EATS, get, getN, mask, OP, STE, STE_CONFIG, VSTE_ALLOWED, wordsFromBytes } from './regs.js';

/** The kernel issues guest commands in batches of CMDQ_BATCH_ENTRIES - 1 (plus a CMD_SYNC). */
export const CMDQ_BATCH = 63;
const ENTRY_LEN = 16;

/** struct arm_vsmmu. */
export interface Vsmmu {
  readonly smmu: ArmSmmuDevice;
  readonly s2Parent: SmmuPagingDomain;
  /** The parent's VMID (the kernel does not give the vSMMU its own). */
  readonly vmid: number;
  readonly core: ViommuCore;
}

/** A nested domain: the validated vSTE on a vSMMU. */
export class SmmuNestedDomain implements NestedDomain {
  readonly kind = 'nested';
  readonly isSmmuNested = true;
  faultCapable?: boolean;
  constructor(readonly driver: ArmSmmuV3Driver, readonly vsmmu: Vsmmu, readonly ste: readonly [bigint, bigint],
    readonly enableAts: boolean) {}
  get parent(): PagingDomain {
    return this.vsmmu.s2Parent;
  }
  get viommu(): unknown {
    return this.vsmmu.core;
  }
  translate(req: DmaRequest): Translation {
    return smmuTranslate(req);
  }
  free(): void {}
}

/** arm_smmu_validate_vste: EIO for illegal content; V = 0 zeroes the vSTE. EATS is stripped. */
export function validateVste(ste: [bigint, bigint]): { ste: [bigint, bigint]; enableAts: boolean } {
  if (!(ste[0] & 1n)) return { ste: [0n, 0n], enableAts: false };
  if (ste[0] & ~VSTE_ALLOWED[0] || ste[1] & ~VSTE_ALLOWED[1]) fail('EIO', 'vSTE bit outside the nesting-allowed masks');
  const cfg = getN(ste, STE.CONFIG);
  if (cfg !== STE_CONFIG.ABORT && cfg !== STE_CONFIG.BYPASS && cfg !== STE_CONFIG.S1_TRANS) fail('EIO', `vSTE Config ${cfg}`);
  const eats = getN(ste, STE.EATS);
  const stripped: [bigint, bigint] = [ste[0], ste[1] & ~mask(STE.EATS)];
  if (eats !== EATS.ABT && eats !== EATS.TRANS) fail('EIO', `vSTE EATS ${eats}`);
  return { ste: stripped, enableAts: cfg === STE_CONFIG.S1_TRANS && eats === EATS.TRANS };
}

export class SmmuViommuDriver implements ViommuDriver {
  constructor(readonly drv: ArmSmmuV3Driver) {}

  private preconditionsOk(m: SmmuMaster): boolean {
    const f = m.smmu.features;
    return f.nesting && !f.forceSync && (m.canwbs || f.s2fwb);
  }

  /** arm_smmu_get_viommu_size (6.17+); before, only the type was checked up front. */
  viommuSupported(dev: DriverDevice, type: number): boolean {
    if (type !== VIOMMU_TYPE_ARM_SMMUV3) return false;
    if (!this.drv.abi.viommuSized) return true;
    return this.preconditionsOk(dev as SmmuMaster);
  }

  /** arm_vsmmu_init (6.17+) / the rest of arm_vsmmu_alloc (6.13-6.16). Driver data is ignored for this type. */
  viommuInit(viommu: ViommuCore, _data: UserData | null): ViommuOps {
    const m = viommu.driverDev as SmmuMaster | undefined;
    if (!m) throw new Error('vIOMMU core did not pass the allocating device');
    const f = m.smmu.features;
    const parent = viommu.parent;
    const sameSmmu = parent instanceof SmmuPagingDomain && parent.smmu === m.smmu;
    if (!this.drv.abi.viommuSized) {
      if (!f.nesting) fail('EOPNOTSUPP', 'SMMUv3 vIOMMU: the SMMU has no nesting');
      if (!sameSmmu) fail('EINVAL', `SMMUv3 vIOMMU: the parent is not a domain of the device's SMMU`);
      if (f.forceSync) fail('EOPNOTSUPP', 'SMMUv3 vIOMMU: the SMMU needs forced CMD_SYNC');
      if (!m.canwbs && !f.s2fwb) fail('EOPNOTSUPP', 'SMMUv3 vIOMMU: neither CANWBS on the master nor S2FWB on the SMMU');
    } else if (!sameSmmu) {
      fail('EINVAL', `SMMUv3 vIOMMU: the parent is not a domain of the device's SMMU`);
    }
    const p = parent as SmmuPagingDomain;
    const vsmmu: Vsmmu = { smmu: m.smmu, s2Parent: p, vmid: p.vmid, core: viommu };
    return {
      allocDomainNested: (_v, _dev, flags, data) => this.allocNested(vsmmu, flags, data),
      cacheInvalidate: (_v, req) => this.cacheInvalidate(vsmmu, req),
      vdeviceInit: (_v, dev) => {
        // arm_vsmmu_vsid_to_sid maps a vSID to the first StreamID only.
        if (this.drv.abi.vdeviceOneStream && (dev as SmmuMaster).sids.length !== 1) fail('EOPNOTSUPP', 'SMMUv3 vDEVICE: the master has more than one StreamID');
      },
    };
  }

  /** arm_vsmmu_alloc_domain_nested. */
  private allocNested(vsmmu: Vsmmu, flags: number, data: UserData): NestedDomain {
    if (flags) fail('EOPNOTSUPP', 'SMMUv3 nested alloc: flags must be 0');
    const bytes = copyUserData(data, HWPT_DATA_ARM_SMMUV3, 16, 16);
    const v = validateVste(wordsFromBytes(bytes, 2) as [bigint, bigint]);
    this.drv.emu.allocPoint();
    return new SmmuNestedDomain(this.drv, vsmmu, v.ste, v.enableAts);
  }

  /** arm_vsmmu_cache_invalidate. */
  private cacheInvalidate(vsmmu: Vsmmu, req: InvalidateArray): void {
    req.handled = 0;
    if (req.entryNum) this.drv.emu.allocPoint(); // the kernel copy of the array
    const cmds = copyFullUserArray(req);
    let cur = 0;
    let last = 0;
    try {
      while (cur !== cmds.length) {
        this.convert(vsmmu, cmds[cur]!);
        cur++;
        if (cur !== cmds.length && cur - last !== CMDQ_BATCH) continue;
        vsmmu.smmu.hw.issue(cmds.slice(last, cur));
        last = cur;
      }
    } finally {
      // Kernel quirk: entry_num counts converted entries, also those of a partial batch
      // that a later bad entry kept from ever being issued.
      req.handled = cur;
    }
  }

  /** arm_vsmmu_convert_user_cmd: check, then force the VMID or translate vSID -> pSID. */
  private convert(vsmmu: Vsmmu, c: bigint[]): void {
    const t = vsmmu.smmu.hw.t;
    const orig = t.on ? [...c] : null;
    if (this.drv.abi.strictCmds) validateUserCmd(vsmmu.smmu, c);
    const op = getN(c, CMD.OP);
    switch (op) {
      case OP.TLBI_NSNH_ALL:
        c[0] = BigInt(OP.TLBI_NH_ALL) | (BigInt(vsmmu.vmid) << BigInt(CMD.VMID.lo));
        c[1] = 0n;
        break;
      case OP.TLBI_NH_VA:
      case OP.TLBI_NH_VAA:
      case OP.TLBI_NH_ALL:
      case OP.TLBI_NH_ASID:
        c[0] = (c[0]! & ~mask(CMD.VMID)) | (BigInt(vsmmu.vmid) << BigInt(CMD.VMID.lo));
        break;
      case OP.ATC_INV:
      case OP.CFGI_CD:
      case OP.CFGI_CD_ALL: {
        const vsid = get(c, CMD.SID);
        const dev = vsmmu.core.vdevDevice(vsid) as SmmuMaster | undefined;
        if (!dev) fail('EIO', `no vDEVICE with vSID ${vsid}`);
        c[0] = (c[0]! & ~mask(CMD.SID)) | (BigInt(dev.sids[0]!) << BigInt(CMD.SID.lo));
        break;
      }
      default:
        fail('EIO', `opcode 0x${op.toString(16)} not accepted from a guest`);
    }
    if (orig && t.on) t.emit('cmd', { guest: orig, host: [...c] });
  }
}

/** iommu_copy_struct_from_full_user_array for 16-byte commands. */
function copyFullUserArray(req: InvalidateArray): bigint[][] {
  if (req.type !== VIOMMU_INVALIDATE_DATA_ARM_SMMUV3) fail('EINVAL', 'data_type is not IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3');
  if (!req.entryNum) fail('EINVAL', 'entry_num is 0');
  const out: bigint[][] = [];
  if (req.entryLen === ENTRY_LEN) {
    const all = req.mem.read(req.uptr, req.entryNum * ENTRY_LEN);
    for (let i = 0; i < req.entryNum; i++) out.push(wordsFromBytes(all.subarray(i * ENTRY_LEN, (i + 1) * ENTRY_LEN), 2));
    return out;
  }
  for (let i = 0; i < req.entryNum; i++) {
    // copy_struct_from_user: shorter entries are zero-extended, longer ones need a zero tail.
    const raw = req.mem.read(req.uptr + BigInt(i) * BigInt(req.entryLen), req.entryLen);
    if (raw.length > ENTRY_LEN && raw.subarray(ENTRY_LEN).some((b) => b !== 0)) fail('E2BIG', `a command's bytes past 16 are not zero`);
    const e = new Uint8Array(ENTRY_LEN);
    e.set(raw.subarray(0, ENTRY_LEN));
    out.push(wordsFromBytes(e, 2));
  }
  return out;
}

const FP = (f: { lo: number; bits: number }, v: bigint): bigint => (v & ((1n << BigInt(f.bits)) - 1n)) << BigInt(f.lo);

/** arm_vsmmu_validate_user_cmd: the fields a guest may set per opcode; anything else is EIO. */
export function validateUserCmd(smmu: ArmSmmuDevice, c: readonly bigint[]): void {
  const f = smmu.features;
  const a: [bigint, bigint] = [mask(CMD.OP), 0n];
  const asidMask = FP(CMD.ASID, (1n << BigInt(f.asidBits)) - 1n);
  const op = getN(c, CMD.OP);
  switch (op) {
    case OP.TLBI_NSNH_ALL:
      break;
    case OP.TLBI_NH_VA:
    case OP.TLBI_NH_VAA:
      if (op === OP.TLBI_NH_VA) a[0] |= asidMask;
      if (f.rangeInv) {
        validateRange(f.ds, c);
        a[0] |= mask(CMD.NUM) | mask(CMD.SCALE);
        a[1] |= mask(CMD.TG) | mask(CMD.TTL);
        if (!f.ds) a[0] &= ~FP(CMD.SCALE, 0x20n);
      }
      a[0] |= mask(CMD.VMID);
      a[1] |= mask(CMD.TLBI_LEAF) | mask(CMD.ADDR);
      break;
    case OP.TLBI_NH_ASID:
    case OP.TLBI_NH_ALL:
      if (op === OP.TLBI_NH_ASID) a[0] |= asidMask;
      a[0] |= mask(CMD.VMID);
      break;
    case OP.ATC_INV:
      if (!f.ats) fail('EIO', 'ATC_INV without ATS');
      if (getN(c, CMD.ATC_SIZE) > ATC_INV_SIZE_ALL) fail('EIO', 'ATC_INV Size above 52');
      if (f.ssidBits) a[0] |= mask(CMD.SSV) | mask(CMD.SSID) | mask(CMD.ATC_GLOBAL);
      a[0] |= mask(CMD.SID);
      a[1] |= mask(CMD.ATC_SIZE) | mask(CMD.ADDR);
      break;
    case OP.CFGI_CD:
    case OP.CFGI_CD_ALL:
      if (op === OP.CFGI_CD) {
        if (f.ssidBits) a[0] |= mask(CMD.SSID);
        a[1] |= mask(CMD.CFGI_LEAF);
      }
      a[0] |= mask(CMD.SID);
      break;
    default:
      fail('EIO', `opcode 0x${op.toString(16)} not accepted from a guest`);
  }
  if (c[0]! & ~a[0] || c[1]! & ~a[1]) fail('EIO', 'command bit outside the opcode allow-list');
}

/** arm_vsmmu_validate_range: the range encodings the architecture calls reserved. */
function validateRange(ds: boolean, c: readonly bigint[]): void {
  const range = !!(get(c, CMD.NUM) || get(c, CMD.SCALE));
  const ttl = getN(c, CMD.TTL);
  const tg = getN(c, CMD.TG);
  if (!tg) {
    if (range || ttl) fail('EIO', 'NUM/SCALE/TTL with TG = 0');
    return;
  }
  if (tg === 2 && ttl === 1 && !ds) fail('EIO', 'TTL = 1 with a 16K TG needs DS');
  if (!range && !ttl) fail('EIO', 'TG with NUM = SCALE = TTL = 0 is reserved');
}

