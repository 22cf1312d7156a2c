// The hardware description of one emulated SMMUv3: raw ID registers (what
// GET_HW_INFO copies out) plus emulator knobs, and the kernel-style probe
// that turns registers into features (arm_smmu_device_hw_probe and the IIDR
// errata). Values the emulator does not model are refused with an error that
// names the field, instead of being silently mistranslated.
import { AIDR, IDR0, IDR1, IDR3, IDR5, IIDR, paBits, reg, regSet, type Field } from './regs.js';

export interface SmmuHwConfig {
  /** Instance name (traces, errors). */
  readonly name: string;
  /** Raw SMMU_IDR0..IDR5. */
  readonly idr: readonly [number, number, number, number, number, number];
  readonly iidr: number;
  readonly aidr: number;
  /** IOTLB capacity in entries (bounded LRU). */
  readonly iotlbEntries: number;
  /** Configuration cache capacity in StreamIDs. */
  readonly configCacheEntries: number;
  /** Host-kernel erratum: TLBI/CFGI must be issued twice (reported in GET_HW_INFO flags where the ABI has it). */
  readonly erratumRepeatTlbiCfgi: boolean;
  /** Host event queue length kept for inspection (the kernel's EVTQ contents as logged). */
  readonly hostEventLog: number;
}

/** Builder input: features in words; `idr` overrides individual raw values afterwards. */
export interface SmmuOptions {
  name?: string;
  stage1?: boolean;
  stage2?: boolean;
  ats?: boolean;
  /** IDR1.SSIDSIZE (0 = no substreams). */
  ssidBits?: number;
  sidBits?: number;
  /** Supported granules (bytes). */
  granules?: readonly (4096 | 16384 | 65536)[];
  /** Output address size in bits (32, 36, 40, 42, 44, 48). */
  oasBits?: number;
  /** Range invalidation (IDR3.RIL). */
  ril?: boolean;
  /** Stage-2 forced write-back (IDR3.FWB). */
  fwb?: boolean;
  asid16?: boolean;
  vmid16?: boolean;
  cd2l?: boolean;
  /** IIDR fields (the kernel keys errata on implementer/product/variant/revision). */
  iidr?: { implementer?: number; productId?: number; variant?: number; revision?: number };
  aidr?: number;
  idr?: Partial<Record<0 | 1 | 2 | 3 | 4 | 5, number>>;
  iotlbEntries?: number;
  configCacheEntries?: number;
  erratumRepeatTlbiCfgi?: boolean;
  hostEventLog?: number;
}

const set = (v: number, f: Field, x: number | boolean): number => regSet(v, f, typeof x === 'boolean' ? (x ? 1 : 0) : x);

/** A hardware description: spec 04 §1.2 defaults, changed by `o`. */
export function smmuConfig(o: SmmuOptions = {}): SmmuHwConfig {
  let idr0 = 0;
  idr0 = set(idr0, IDR0.S2P, o.stage2 ?? true);
  idr0 = set(idr0, IDR0.S1P, o.stage1 ?? true);
  idr0 = set(idr0, IDR0.TTF, 2); // AArch64 tables only
  idr0 = set(idr0, IDR0.COHACC, 1);
  idr0 = set(idr0, IDR0.ATS, o.ats ?? false);
  idr0 = set(idr0, IDR0.ASID16, o.asid16 ?? true);
  idr0 = set(idr0, IDR0.MSI, 1);
  idr0 = set(idr0, IDR0.VMID16, o.vmid16 ?? true);
  idr0 = set(idr0, IDR0.CD2L, o.cd2l ?? true);
  idr0 = set(idr0, IDR0.TTENDIAN, 2); // little-endian tables
  idr0 = set(idr0, IDR0.STALL_MODEL, 1); // stalls not supported
  idr0 = set(idr0, IDR0.TERM_MODEL, 1); // faulting transactions are aborted
  idr0 = set(idr0, IDR0.ST_LEVEL, 1);
  let idr1 = 0;
  idr1 = set(idr1, IDR1.SIDSIZE, o.sidBits ?? 16);
  idr1 = set(idr1, IDR1.SSIDSIZE, o.ssidBits ?? 0);
  idr1 = set(idr1, IDR1.EVTQS, 19);
  idr1 = set(idr1, IDR1.CMDQS, 19);
  let idr3 = 0;
  idr3 = set(idr3, IDR3.HAD, 1);
  idr3 = set(idr3, IDR3.XNX, 1);
  idr3 = set(idr3, IDR3.FWB, o.fwb ?? false);
  idr3 = set(idr3, IDR3.RIL, o.ril ?? true);
  idr3 = set(idr3, IDR3.BBML, 2);
  const oasEnc = [32, 36, 40, 42, 44, 48, 52].indexOf(o.oasBits ?? 48);
  if (oasEnc < 0) throw new Error(`SMMU config: oasBits ${o.oasBits} is not an IDR5.OAS size`);
  let idr5 = 0;
  idr5 = set(idr5, IDR5.OAS, oasEnc);
  const gr = o.granules ?? [4096, 16384, 65536];
  idr5 = set(idr5, IDR5.GRAN4K, gr.includes(4096));
  idr5 = set(idr5, IDR5.GRAN16K, gr.includes(16384));
  idr5 = set(idr5, IDR5.GRAN64K, gr.includes(65536));
  const idr: [number, number, number, number, number, number] = [idr0, idr1, 0, idr3, 0, idr5];
  for (const [i, v] of Object.entries(o.idr ?? {})) idr[Number(i)] = v! >>> 0;
  let iidr = 0;
  iidr = set(iidr, IIDR.IMPLEMENTER, o.iidr?.implementer ?? 0);
  iidr = set(iidr, IIDR.REVISION, o.iidr?.revision ?? 0);
  iidr = set(iidr, IIDR.VARIANT, o.iidr?.variant ?? 0);
  iidr = set(iidr, IIDR.PRODUCTID, o.iidr?.productId ?? 0);
  return {
    name: o.name ?? 'smmu0', idr, iidr, aidr: o.aidr ?? set(set(0, AIDR.MAJOR, 0), AIDR.MINOR, 1),
    iotlbEntries: o.iotlbEntries ?? 512, configCacheEntries: o.configCacheEntries ?? 256,
    erratumRepeatTlbiCfgi: o.erratumRepeatTlbiCfgi ?? false, hostEventLog: o.hostEventLog ?? 256,
  };
}

/** What the kernel's probe derives from the registers (the subset that matters here). */
export interface SmmuFeatures {
  readonly s1: boolean;
  readonly s2: boolean;
  readonly nesting: boolean;
  readonly ats: boolean;
  readonly coherent: boolean;
  readonly rangeInv: boolean;
  readonly s2fwb: boolean;
  readonly ds: boolean;
  readonly had: boolean;
  readonly xnx: boolean;
  readonly cd2l: boolean;
  readonly hyp: boolean;
  readonly attrTypesOvr: boolean;
  readonly asidBits: number;
  readonly vmidBits: number;
  readonly sidBits: number;
  readonly ssidBits: number;
  /** Output address size (bits). */
  readonly oas: number;
  /** Granule shifts the hardware walks. */
  readonly granules: readonly number[];
  /** Page sizes the kernel may use (SZ_4K|2M|1G etc.), as in smmu->pgsize_bitmap. */
  readonly pgsizeBitmap: bigint;
  /** ARM_SMMU_OPT_CMDQ_FORCE_SYNC (MMU-700 erratum 2812531). */
  readonly forceSync: boolean;
}

const IIDR_IMPLEMENTER_ARM = 0x43b;
const IIDR_PRODUCTID_ARM_MMU_600 = 0x483;
const IIDR_PRODUCTID_ARM_MMU_700 = 0x487;

function unsupported(cfg: SmmuHwConfig, what: string): never {
  throw new Error(`SMMU ${cfg.name}: ${what} is not modelled by the emulator`);
}

/** arm_smmu_device_hw_probe + arm_smmu_device_iidr_probe, with the emulator's own limits. */
export function probe(cfg: SmmuHwConfig): SmmuFeatures {
  const [i0, i1, , i3, , i5] = cfg.idr;
  const s1 = !!reg(i0, IDR0.S1P);
  const s2 = !!reg(i0, IDR0.S2P);
  if (!s1 && !s2) throw new Error(`SMMU ${cfg.name}: IDR0 has neither S1P nor S2P (the kernel refuses: no translation support)`);
  if (!(reg(i0, IDR0.TTF) & 2)) throw new Error(`SMMU ${cfg.name}: IDR0.TTF=${reg(i0, IDR0.TTF)} lacks AArch64 tables (the kernel refuses)`);
  const endian = reg(i0, IDR0.TTENDIAN);
  if (endian !== 0 && endian !== 2) unsupported(cfg, `IDR0.TTENDIAN=${endian} (big-endian tables)`);
  if (reg(i0, IDR0.HTTU)) unsupported(cfg, `IDR0.HTTU=${reg(i0, IDR0.HTTU)} (hardware access/dirty updates)`);
  if (reg(i0, IDR0.STALL_MODEL) !== 1) unsupported(cfg, `IDR0.STALL_MODEL=${reg(i0, IDR0.STALL_MODEL)} (stalls)`);
  if (!reg(i0, IDR0.TERM_MODEL)) unsupported(cfg, 'IDR0.TERM_MODEL=0 (RAZ/WI termination)');
  if (reg(i0, IDR0.PRI)) unsupported(cfg, 'IDR0.PRI=1 (page request interface)');
  if (reg(i1, IDR1.REL) || reg(i1, IDR1.QUEUES_PRESET) || reg(i1, IDR1.TABLES_PRESET)) {
    throw new Error(`SMMU ${cfg.name}: IDR1 REL/QUEUES_PRESET/TABLES_PRESET set (the kernel refuses embedded implementations)`);
  }
  if (reg(i1, IDR1.CMDQS) <= 6) throw new Error(`SMMU ${cfg.name}: IDR1.CMDQS=${reg(i1, IDR1.CMDQS)} (the kernel needs more than 64 entries)`);
  if (reg(i5, IDR5.VAX)) unsupported(cfg, `IDR5.VAX=${reg(i5, IDR5.VAX)} (52-bit VA)`);
  if (reg(i5, IDR5.DS)) unsupported(cfg, 'IDR5.DS=1 (LPA2)');
  const oasEnc = reg(i5, IDR5.OAS);
  if (oasEnc >= 6) unsupported(cfg, `IDR5.OAS=${oasEnc} (52-bit PA)`);
  const granules: number[] = [];
  let pg = 0n;
  if (reg(i5, IDR5.GRAN4K)) { granules.push(12); pg |= (1n << 12n) | (1n << 21n) | (1n << 30n); }
  if (reg(i5, IDR5.GRAN16K)) { granules.push(14); pg |= (1n << 14n) | (1n << 25n); }
  if (reg(i5, IDR5.GRAN64K)) { granules.push(16); pg |= (1n << 16n) | (1n << 29n); }
  if (!granules.length) throw new Error(`SMMU ${cfg.name}: IDR5 advertises no granule`);

  let nesting = s1 && s2;
  let forceSync = false;
  if (reg(cfg.iidr, IIDR.IMPLEMENTER) === IIDR_IMPLEMENTER_ARM) {
    const product = reg(cfg.iidr, IIDR.PRODUCTID);
    const variant = reg(cfg.iidr, IIDR.VARIANT);
    const revision = reg(cfg.iidr, IIDR.REVISION);
    if (product === IIDR_PRODUCTID_ARM_MMU_600 && variant < 2) nesting = false; // erratum 1209401
    if (product === IIDR_PRODUCTID_ARM_MMU_700 && (variant < 1 || revision < 1)) {
      forceSync = true; // erratum 2812531
      nesting = false; // errata 2268618, 2812531
    }
  }
  return {
    s1, s2, nesting, forceSync,
    ats: !!reg(i0, IDR0.ATS), coherent: !!reg(i0, IDR0.COHACC), hyp: !!reg(i0, IDR0.HYP), cd2l: !!reg(i0, IDR0.CD2L),
    rangeInv: !!reg(i3, IDR3.RIL), s2fwb: !!reg(i3, IDR3.FWB), had: !!reg(i3, IDR3.HAD), xnx: !!reg(i3, IDR3.XNX),
    ds: false, attrTypesOvr: !!reg(i1, IDR1.ATTR_TYPES_OVR),
    asidBits: reg(i0, IDR0.ASID16) ? 16 : 8, vmidBits: reg(i0, IDR0.VMID16) ? 16 : 8,
    sidBits: reg(i1, IDR1.SIDSIZE), ssidBits: reg(i1, IDR1.SSIDSIZE),
    oas: paBits(oasEnc), granules, pgsizeBitmap: pg,
  };
}
