// The machine description of an emulated ARM SMMUv3 instance (its `options`
// in `iommus[]`) and of the devices behind it (their StreamIDs): the options
// as data, checked with errors that name the bad value, turned into the
// driver's SmmuOptions and probed at once so that anything the emulator does
// not model is refused when the description is read, not at the first DMA.
import { probe, smmuConfig, type SmmuFeatures, type SmmuHwConfig, type SmmuOptions } from '../drivers/arm-smmuv3/config.js';

type Kind = 'bool' | 'int' | 'granules' | 'iidr' | 'idr';

export interface SmmuOptionDef {
  readonly kind: Kind;
  readonly help: string;
  /** Integer bounds (kind int). */
  readonly min?: number;
  readonly max?: number;
}

/** What `iommus[].options` may hold for `type: "arm-smmuv3"` (defaults: spec 04 §1.2, in config.ts). */
export const SMMU_OPTIONS: Readonly<Record<string, SmmuOptionDef>> = {
  stage1: { kind: 'bool', help: 'IDR0.S1P: stage-1 translation (default true)' },
  stage2: { kind: 'bool', help: 'IDR0.S2P: stage-2 translation (default true)' },
  nesting: {
    kind: 'bool',
    help: 'expect nesting (vIOMMU, nested HWPTs): true needs stage1 and stage2 and an IIDR without the nesting errata; ' +
      'false needs one of them missing or such an IIDR (the kernel derives it, so this only checks)',
  },
  ats: { kind: 'bool', help: 'IDR0.ATS: PCI ATS (used only for devices with an ATS capability; the IOAT has none) (default false)' },
  granules: { kind: 'granules', help: 'IDR5.GRAN4K/16K/64K: translation granules in bytes, e.g. [4096, 65536] (default all three)' },
  oasBits: { kind: 'int', help: 'IDR5.OAS: output address size in bits, 32/36/40/42/44/48 (default 48)', min: 32, max: 48 },
  sidBits: { kind: 'int', help: 'IDR1.SIDSIZE: StreamID bits (default 16)', min: 1, max: 32 },
  ssidBits: { kind: 'int', help: 'IDR1.SSIDSIZE: SubstreamID bits, 0 = none (default 0)', min: 0, max: 20 },
  ril: { kind: 'bool', help: 'IDR3.RIL: range invalidation (default true)' },
  fwb: { kind: 'bool', help: 'IDR3.FWB: stage-2 forced write-back (default false)' },
  asid16: { kind: 'bool', help: 'IDR0.ASID16: 16-bit ASIDs (default true)' },
  vmid16: { kind: 'bool', help: 'IDR0.VMID16: 16-bit VMIDs (default true)' },
  cd2l: { kind: 'bool', help: 'IDR0.CD2L: two-level CD tables (default true)' },
  iidr: { kind: 'iidr', help: 'SMMU_IIDR fields {implementer, productId, variant, revision} (default all 0; the kernel keys errata on them)' },
  aidr: { kind: 'int', help: 'SMMU_AIDR raw value (default 0x01: SMMUv3.1)', min: 0, max: 0xff },
  idr: { kind: 'idr', help: 'raw ID register overrides applied last, e.g. {"0": 134221487} (IDR0..IDR5)' },
  iotlbEntries: { kind: 'int', help: 'IOTLB capacity in entries, a bounded LRU; 0 = no IOTLB (default 512)', min: 0, max: 1 << 20 },
  configCacheEntries: { kind: 'int', help: 'configuration cache capacity in StreamIDs (default 256)', min: 1, max: 1 << 20 },
  erratumRepeatTlbiCfgi: {
    kind: 'bool', help: 'host erratum: TLBI/CFGI issued twice (reported in GET_HW_INFO flags on the ABIs that have the flag) (default false)',
  },
};

const GRANULES = [4096, 16384, 65536] as const;
const IIDR_FIELDS = ['implementer', 'productId', 'variant', 'revision'] as const;
const IIDR_MAX: Readonly<Record<(typeof IIDR_FIELDS)[number], number>> = { implementer: 0xfff, productId: 0xfff, variant: 0xf, revision: 0xf };

const isInt = (v: unknown, min: number, max: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;

/** A resolved SMMU instance: the driver options, the hardware config they give, and what the kernel's probe finds. */
export interface SmmuInstance {
  readonly options: SmmuOptions;
  readonly cfg: SmmuHwConfig;
  readonly features: SmmuFeatures;
}

/** Check `given` (an instance's `options`) and probe the result; errors name the instance and the value. */
export function resolveSmmuOptions(name: string, given: unknown): SmmuInstance {
  const where = `machine: IOMMU '${name}'`;
  if (given !== undefined && (given === null || typeof given !== 'object' || Array.isArray(given))) {
    throw new Error(`${where}: "options" must be an object`);
  }
  const g = (given ?? {}) as Record<string, unknown>;
  const o: Record<string, unknown> = { name };
  for (const [k, v] of Object.entries(g)) {
    const def = SMMU_OPTIONS[k];
    if (!def) throw new Error(`${where}: unknown option '${k}' (known: ${Object.keys(SMMU_OPTIONS).join(', ')})`);
    const bad = (what: string): never => { throw new Error(`${where}: option ${k}=${JSON.stringify(v)} must be ${what}`); };
    switch (def.kind) {
      case 'bool':
        if (typeof v !== 'boolean') bad('true or false');
        break;
      case 'int':
        if (!isInt(v, def.min!, def.max!)) bad(`an integer in ${def.min}..${def.max}`);
        if (k === 'oasBits' && ![32, 36, 40, 42, 44, 48].includes(v as number)) bad('one of 32, 36, 40, 42, 44, 48 (52-bit output is not modelled)');
        break;
      case 'granules':
        if (!Array.isArray(v) || !v.length || v.some((x) => !(GRANULES as readonly unknown[]).includes(x)) || new Set(v).size !== v.length) {
          bad('a non-empty list of distinct sizes from 4096, 16384, 65536');
        }
        break;
      case 'iidr': {
        if (!v || typeof v !== 'object' || Array.isArray(v)) bad(`an object with ${IIDR_FIELDS.join(', ')}`);
        for (const [f, x] of Object.entries(v as Record<string, unknown>)) {
          const max = IIDR_MAX[f as (typeof IIDR_FIELDS)[number]];
          if (max === undefined) bad(`an object with only ${IIDR_FIELDS.join(', ')} (not '${f}')`);
          if (!isInt(x, 0, max)) bad(`an object whose ${f} is an integer in 0..${max}`);
        }
        break;
      }
      case 'idr': {
        if (!v || typeof v !== 'object' || Array.isArray(v)) bad('an object of register index (0..5) -> 32-bit value');
        for (const [i, x] of Object.entries(v as Record<string, unknown>)) {
          if (!/^[0-5]$/.test(i)) bad(`an object keyed by register index 0..5 (not '${i}')`);
          if (!isInt(x, 0, 0xffffffff)) bad(`an object whose IDR${i} is an integer in 0..0xffffffff`);
        }
        break;
      }
    }
    if (k !== 'nesting') o[k] = v;
  }
  const options = o as SmmuOptions;
  const cfg = smmuConfig(options);
  let features: SmmuFeatures;
  try {
    features = probe(cfg);
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
  if (g.nesting !== undefined && g.nesting !== features.nesting) {
    throw new Error(`${where}: option nesting=${String(g.nesting)}, but the registers give ${features.nesting ? '' : 'no '}nesting ` +
      `(stage1 ${features.s1}, stage2 ${features.s2}${features.s1 && features.s2 && !features.nesting ? ', an IIDR with a nesting erratum' : ''})`);
  }
  return { options, cfg, features };
}

/** The StreamIDs of a device behind an SMMU: `sids` if given (checked), else its requester ID. */
export function resolveSids(name: string, bdf: string, given: unknown, rid: number, f: SmmuFeatures): number[] {
  const where = `machine: device ${bdf} behind '${name}'`;
  const max = 2 ** f.sidBits - 1;
  if (given === undefined) {
    if (rid > max) throw new Error(`${where}: its requester ID 0x${rid.toString(16)} needs more than ${f.sidBits} StreamID bits; give "sids"`);
    return [rid];
  }
  if (!Array.isArray(given) || !given.length) throw new Error(`${where}: "sids" must be a non-empty list of StreamIDs`);
  for (const s of given) {
    if (!isInt(s, 0, max)) throw new Error(`${where}: StreamID ${JSON.stringify(s)} must be an integer in 0..0x${max.toString(16)} (SIDSIZE ${f.sidBits})`);
  }
  if (new Set(given).size !== given.length) throw new Error(`${where}: "sids" lists a StreamID twice`);
  return [...(given as number[])];
}

/** One line of what the instance is (iommufd-emu devices). */
export function describeSmmu(f: SmmuFeatures, cfg: SmmuHwConfig): string {
  const stages = [f.s1 && 'stage 1', f.s2 && 'stage 2'].filter(Boolean).join(' + ');
  const gr = f.granules.map((g) => `${2 ** (g - 10)}K`).join('/');
  const parts = [stages, f.nesting ? 'nesting (vIOMMU)' : 'no nesting', `${gr} granules`, `${f.oas}-bit output`,
    `${f.sidBits}-bit StreamIDs`, f.ssidBits ? `${f.ssidBits}-bit SubstreamIDs` : 'no SubstreamIDs', f.ats ? 'ATS' : 'no ATS',
    f.rangeInv ? 'range invalidation' : 'no range invalidation', `IOTLB ${cfg.iotlbEntries}`];
  const idr = cfg.idr.map((v, i) => `IDR${i}=0x${v.toString(16)}`).join(' ');
  return `${parts.join(', ')}\n    ${idr} IIDR=0x${cfg.iidr.toString(16)} AIDR=0x${cfg.aidr.toString(16)}`;
}
