// Commands as the hardware sees them: which fields each opcode has (anything
// else makes the command ILLEGAL: CERROR_ILL), which features an opcode needs,
// and decoding of TLBI ranges. The SMMU instance executes them (smmu.ts); the
// vIOMMU path converts guest commands first (viommu.ts).
import type { SmmuFeatures } from './config.js';
import { REGION1 } from './iotlb.js';
import { CMD, get, getN, mask, OP, type Field } from './regs.js';

/** Fields an opcode defines, per dword (the opcode field included). */
const FIELDS: Readonly<Record<number, readonly Field[]>> = {
  [OP.PREFETCH_CONFIG]: [CMD.SSV, CMD.SSID, CMD.SID],
  [OP.PREFETCH_ADDR]: [CMD.SSV, CMD.SSID, CMD.SID, CMD.PREFETCH_SIZE, CMD.ADDR],
  [OP.CFGI_STE]: [CMD.SID, CMD.CFGI_LEAF],
  [OP.CFGI_ALL]: [CMD.SID, CMD.CFGI_RANGE],
  [OP.CFGI_CD]: [CMD.SSID, CMD.SID, CMD.CFGI_LEAF],
  [OP.CFGI_CD_ALL]: [CMD.SID],
  [OP.TLBI_NH_ALL]: [CMD.VMID],
  [OP.TLBI_NH_ASID]: [CMD.VMID, CMD.ASID],
  [OP.TLBI_NH_VA]: [CMD.NUM, CMD.SCALE, CMD.VMID, CMD.ASID, CMD.TLBI_LEAF, CMD.TTL, CMD.TG, CMD.ADDR],
  [OP.TLBI_NH_VAA]: [CMD.NUM, CMD.SCALE, CMD.VMID, CMD.TLBI_LEAF, CMD.TTL, CMD.TG, CMD.ADDR],
  [OP.TLBI_EL2_ALL]: [],
  [OP.TLBI_EL2_ASID]: [CMD.ASID],
  [OP.TLBI_EL2_VA]: [CMD.NUM, CMD.SCALE, CMD.ASID, CMD.TLBI_LEAF, CMD.TTL, CMD.TG, CMD.ADDR],
  [OP.TLBI_EL2_VAA]: [CMD.NUM, CMD.SCALE, CMD.TLBI_LEAF, CMD.TTL, CMD.TG, CMD.ADDR],
  [OP.TLBI_S12_VMALL]: [CMD.VMID],
  [OP.TLBI_S2_IPA]: [CMD.NUM, CMD.SCALE, CMD.VMID, CMD.TLBI_LEAF, CMD.TTL, CMD.TG, CMD.IPA],
  [OP.TLBI_NSNH_ALL]: [],
  [OP.ATC_INV]: [CMD.ATC_GLOBAL, CMD.SSV, CMD.SSID, CMD.SID, CMD.ATC_SIZE, CMD.ADDR],
  [OP.CMD_SYNC]: [CMD.SYNC_CS, CMD.SYNC_MSH, CMD.SYNC_MSIATTR, CMD.SYNC_MSIDATA, CMD.SYNC_MSIADDR],
};

/** Bits a command may have set, given the opcode's fields. */
export function allowedBits(fields: readonly Field[]): [bigint, bigint] {
  const a: [bigint, bigint] = [mask(CMD.OP), 0n];
  for (const f of fields) a[f.dw] = a[f.dw]! | mask(f);
  return a;
}

/** Why the hardware would raise CERROR_ILL for `cmd`, or null when it is legal. */
export function illegal(cmd: readonly bigint[], f: SmmuFeatures): string | null {
  const op = getN(cmd, CMD.OP);
  const fields = FIELDS[op];
  if (!fields) return `opcode 0x${op.toString(16)} not implemented`;
  if (op === OP.ATC_INV && !f.ats) return 'ATC_INV without ATS';
  if ((op >= OP.TLBI_EL2_ALL && op <= OP.TLBI_EL2_VAA) && !f.hyp) return 'EL2 TLBI without IDR0.HYP';
  if ((op === OP.TLBI_S12_VMALL || op === OP.TLBI_S2_IPA) && !f.s2) return 'stage-2 TLBI without stage 2';
  const a = allowedBits(fields);
  if (cmd[0]! & ~a[0] || cmd[1]! & ~a[1]) return 'reserved bits set';
  if (fields.includes(CMD.TG)) {
    const tg = getN(cmd, CMD.TG);
    const range = get(cmd, CMD.NUM) || get(cmd, CMD.SCALE);
    const ttl = getN(cmd, CMD.TTL);
    if (!f.rangeInv && (tg || range)) return 'range fields without IDR3.RIL';
    if (!tg && (range || ttl)) return 'NUM/SCALE/TTL set with TG = 0';
    if (tg && !range && !ttl) return 'TG without NUM, SCALE or TTL (reserved)';
    if (tg === 2 && ttl === 1 && !f.ds) return 'TTL = 1 with 16K TG needs DS';
    if (getN(cmd, CMD.SCALE) & 0x20 && !f.ds) return 'SCALE above 31 needs DS';
  }
  if (op === OP.ATC_INV && getN(cmd, CMD.ATC_SIZE) > 52) return 'ATC_INV Size above 52';
  return null;
}

/** A decoded TLBI range: [start, start+len) in IOTLB key space, TTL and the TG granule shift. */
export interface TlbiRange {
  start: number;
  len: number;
  ttl: number;
  g: number;
}

const TG_SHIFT: Readonly<Record<number, number>> = { 1: 12, 2: 14, 3: 16 };

/** The range of a TLBI_NH_VA/VAA (va) or TLBI_S2_IPA (ipa) command. */
export function tlbiRange(cmd: readonly bigint[], ipa: boolean): TlbiRange {
  const raw = ipa ? get(cmd, CMD.IPA) << 12n : get(cmd, CMD.ADDR) << 12n;
  // Input-address key: the TTB1 region (VA[55] = 1) is told apart by REGION1.
  const start = ipa ? Number(raw) : Number(raw & ((1n << 48n) - 1n)) + ((raw >> 55n) & 1n ? REGION1 : 0);
  const tg = getN(cmd, CMD.TG);
  if (!tg) return { start, len: 1, ttl: 0, g: 12 };
  const g = TG_SHIFT[tg]!;
  const pages = (getN(cmd, CMD.NUM) + 1) * 2 ** getN(cmd, CMD.SCALE);
  const aligned = Math.floor(start / 2 ** g) * 2 ** g;
  return { start: aligned, len: pages * 2 ** g, ttl: getN(cmd, CMD.TTL), g };
}

/** Command builders (host driver and tests). */
export const cmd = {
  make(op: number, values: Partial<Record<keyof typeof CMD, bigint | number>> = {}): bigint[] {
    const w = [BigInt(op), 0n];
    for (const [k, v] of Object.entries(values)) {
      const f = CMD[k as keyof typeof CMD];
      w[f.dw] = (w[f.dw]! & ~mask(f)) | ((BigInt(v!) << BigInt(f.lo)) & mask(f));
    }
    return w;
  },
};
