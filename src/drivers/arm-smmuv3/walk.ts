// The table walker (the analogue of QEMU's smmu_ptw_64_s1 / smmu_ptw_64_s2):
// VMSAv8-64 tables, 4K/16K/64K granules, start levels from the input size,
// stage-2 concatenated start tables, table attributes (APTable, PXN/XNTable,
// HAD), leaf permissions, the access flag, address-size checks, and faults in
// the architecture's priority order. Stage 1 reads its tables through a
// caller-supplied translator (stage 2 when nested, identity otherwise).
// Addresses are Numbers (< 2^52); descriptors are read as two 32-bit halves.
import { D, readDesc } from './mem.js';
import { levelShift } from './pgtable.js';
import { EVT_CLASS, EVT_ID } from './regs.js';
import type { SmmuTracer } from './trace.js';

const P2 = Array.from({ length: 65 }, (_, i) => 2 ** i);
/** Low-word masks of the bits at and above `shift`. */
const LO = Array.from({ length: 65 }, (_, i) => (i >= 32 ? 0 : (~(2 ** i - 1)) >>> 0));

/**
 * floor(addr / 2^shift) mod 2^32 from the address's 32-bit halves (integer
 * operations: a level index without floating-point division or modulo).
 */
function above(hi: number, lo: number, shift: number): number {
  if (shift >= 32) return hi >>> (shift - 32);
  return shift === 0 ? lo : ((lo >>> shift) | (hi << (32 - shift))) >>> 0;
}

const HI = (a: number): number => (a / 4294967296) >>> 0;

/** Access rights a translation grants, as bits. */
export const PERM = { PR: 1, PW: 2, UR: 4, UW: 8, PX: 16, UX: 32 } as const;
export const PERM_ALL = 63;

/** What an access needs (the bits `allowed` checks). */
export function needed(write: boolean, priv: boolean, instr: boolean): number {
  if (instr) return priv ? PERM.PX : PERM.UX;
  if (priv) return write ? PERM.PW : PERM.PR;
  return write ? PERM.UW : PERM.UR;
}

/** A translation fault as the walker found it; the pipeline turns it into an event record. */
export interface WalkFault {
  readonly id: number;
  readonly stage: 1 | 2;
  /** Stage-2 faults: what the lookup was for (EVT_CLASS). */
  cls?: number;
  /** Stage-2 faults: the IPA being translated. */
  ipa?: number;
  /** F_WALK_EABT / F_CD_FETCH: the physical address whose read failed. */
  fetchAddr?: number;
  /** Stage-2 fault on a table/CD read (TTRnW: the table access was a read). */
  ttRead?: boolean;
  readonly level: number;
  readonly reason: string;
}

export function walkFault(id: number, stage: 1 | 2, level: number, reason: string, extra: Partial<WalkFault> = {}): WalkFault {
  return { id, stage, level, reason, ...extra };
}

// ---- stage 2 ----------------------------------------------------------------------------

export interface S2Params {
  readonly vmid: number;
  /** Granule shift. */
  readonly g: number;
  /** Input (IPA) bits: 64 - S2T0SZ. */
  readonly inBits: number;
  readonly startLevel: number;
  /** Physical address of the (first) start-level table. */
  readonly ttb: number;
  /** Effective output size in bits: min(S2PS, OAS), 48 unless 64K. */
  readonly psBits: number;
  readonly affd: boolean;
  /** STE.S2R: record stage-2 faults. */
  readonly record: boolean;
  /** STE.S2PTW: stage-1 table walks that land in Device memory fault. */
  readonly ptw: boolean;
  readonly fwb: boolean;
  /** IDR3.XNX: XN[1:0] distinguishes EL0/EL1 execute. */
  readonly xnx: boolean;
  /** Leaf sizes (log2) this stage 2 can produce, ascending. */
  readonly leafSizes: readonly number[];
}

/** Result of a successful walk (reused; read before the next walk). */
export class WalkOut {
  /** Output address of the input address. */
  oa = 0;
  /** log2 of the leaf's size. */
  sizeLog2 = 0;
  level = 0;
  perm = 0;
  /** Stage 1: nG = 0 (entry matches any ASID). */
  global = false;
  /** Stage 2: the leaf's memory type is Device (S2PTW check). */
  device = false;
}

function stage2Leaf(p: S2Params, out: WalkOut, lo: number, hi: number): void {
  const s2ap = (lo >>> 6) & 3;
  let perm = 0;
  if (s2ap & 1) perm |= PERM.PR | PERM.UR;
  if (s2ap & 2) perm |= PERM.PW | PERM.UW;
  const xn = (hi >>> 21) & 3; // XN[1:0] = bits 54:53
  if (p.xnx) {
    // 00 both, 01 EL0 only, 10 none, 11 EL1 only.
    if (xn === 0 || xn === 1) perm |= PERM.UX;
    if (xn === 0 || xn === 3) perm |= PERM.PX;
  } else if (!(xn & 2)) {
    perm |= PERM.UX | PERM.PX;
  }
  // Execute needs read at stage 2 as well.
  if (!(s2ap & 1)) perm &= ~(PERM.UX | PERM.PX);
  out.perm = perm;
  // MemAttr[3:2] = 00 is Device memory in both the classic and the FWB encoding.
  out.device = (((lo >>> 2) & 0xf) & 0xc) === 0;
}

/**
 * Walk stage 2 for `ipa`. Returns null (result in `out`) or the fault
 * (translation / address size / access flag; permission is the caller's, since
 * it depends on the access). `cls` is recorded in the fault.
 */
export function walkS2(p: S2Params, ipa: number, out: WalkOut, cls: number, t: SmmuTracer): WalkFault | null {
  const g = p.g;
  const s = g - 3;
  let level = p.startLevel;
  if (ipa >= P2[p.inBits]!) return walkFault(EVT_ID.F_TRANSLATION, 2, level, 'IPA above the stage-2 input size', { cls, ipa });
  let shift = levelShift(g, level);
  const ahi = HI(ipa);
  const alo = ipa >>> 0;
  const smask = (1 << s) - 1;
  // The start index takes every bit above `shift`: concatenated start tables are contiguous.
  let idx = above(ahi, alo, shift);
  let table = p.ttb;
  for (;;) {
    const descAddr = table + 8 * idx;
    if (!readDesc(descAddr)) {
      return walkFault(EVT_ID.F_WALK_EABT, 2, level, 'stage-2 table read failed', { cls, ipa, fetchAddr: descAddr });
    }
    const lo = D.lo;
    const hi = D.hi;
    if (t.on) t.emit('walk', { stage: 2, level, ipa, descAddr, desc: (BigInt(hi) << 32n) | BigInt(lo) });
    if (!(lo & 1)) return walkFault(EVT_ID.F_TRANSLATION, 2, level, 'invalid stage-2 descriptor', { cls, ipa });
    if (level < 3 && (lo & 3) === 3) {
      if (hi & 0xf0000) return walkFault(EVT_ID.F_ADDR_SIZE, 2, level, 'table address above 48 bits', { cls, ipa });
      const next = (hi & 0xffff) * P2[32]! + ((lo & LO[g]!) >>> 0);
      if (next >= P2[p.psBits]!) return walkFault(EVT_ID.F_ADDR_SIZE, 2, level, 'next table above the output size', { cls, ipa });
      table = next;
      level++;
      shift -= s;
      idx = above(ahi, alo, shift) & smask;
      continue;
    }
    if (level === 3 ? (lo & 3) !== 3 : !blockAllowed(g, level)) {
      return walkFault(EVT_ID.F_TRANSLATION, 2, level, level === 3 ? 'reserved level-3 descriptor' : 'block not allowed at this level', { cls, ipa });
    }
    if (hi & 0xf0000) return walkFault(EVT_ID.F_ADDR_SIZE, 2, level, 'output address above 48 bits', { cls, ipa });
    const oaBase = (hi & 0xffff) * P2[32]! + ((lo & LO[shift]!) >>> 0);
    if (oaBase >= P2[p.psBits]!) return walkFault(EVT_ID.F_ADDR_SIZE, 2, level, 'output address above the stage-2 output size', { cls, ipa });
    if (!(lo & 0x400) && !p.affd) return walkFault(EVT_ID.F_ACCESS, 2, level, 'stage-2 access flag clear', { cls, ipa });
    out.oa = oaBase + ((alo & (P2[shift]! - 1)) >>> 0);
    out.sizeLog2 = shift;
    out.level = level;
    out.global = false;
    stage2Leaf(p, out, lo, hi);
    return null;
  }
}

/** Block descriptors are legal at: 4K L1/L2, 16K L2, 64K L2 (with OA <= 48 bits). */
export function blockAllowed(g: number, level: number): boolean {
  return g === 12 ? level === 1 || level === 2 : level === 2;
}

// ---- stage 1 ----------------------------------------------------------------------------

/** One translation-table region of a CD (TTB0 or TTB1). */
export interface S1Region {
  readonly g: number;
  /** Input bits n = 64 - TxSZ. */
  readonly inBits: number;
  readonly startLevel: number;
  /** Start table address (aligned; an IPA when nested). */
  readonly ttb: number;
  /** HADx: table attributes ignored. */
  readonly had: boolean;
}

export interface S1Params {
  readonly asid: number;
  /** Effective output size of stage 1 (bits). */
  readonly ipsBits: number;
  readonly affd: boolean;
  /** CD.R: record stage-1 faults. */
  readonly record: boolean;
  readonly wxn: boolean;
  readonly uwxn: boolean;
  readonly pan: boolean;
}

/**
 * Reads a descriptor on behalf of stage 1: `addr` is a table entry address as
 * stage 1 sees it. Returns null with the physical address in `out.oa`, or the
 * stage-2 fault that stopped it.
 */
export type TableReader = (addr: number) => WalkFault | null;

/**
 * Walk stage 1 for `va` (the input address modulo 2^n) in region `r`.
 * Stage-1 faults carry stage 1; `read` supplies stage-2 faults of table
 * fetches. On success `out` holds the output (an IPA when nested).
 */
export function walkS1(p: S1Params, r: S1Region, va: number, out: WalkOut, read: TableReader, tmp: WalkOut, t: SmmuTracer): WalkFault | null {
  const g = r.g;
  const s = g - 3;
  let level = r.startLevel;
  let shift = levelShift(g, level);
  const ahi = HI(va);
  const alo = va >>> 0;
  const smask = (1 << s) - 1;
  let idx = above(ahi, alo, shift);
  let table = r.ttb;
  let apTable = 0; // bit0: no EL0 access below, bit1: no write below
  let pxnTable = 0;
  let uxnTable = 0;
  for (;;) {
    const descAddr = table + 8 * idx;
    const f = read(descAddr);
    if (f) return f;
    const pa = tmp.oa;
    if (!readDesc(pa)) return walkFault(EVT_ID.F_WALK_EABT, 1, level, 'stage-1 table read failed', { fetchAddr: pa });
    const lo = D.lo;
    const hi = D.hi;
    if (t.on) t.emit('walk', { stage: 1, level, va, descAddr, desc: (BigInt(hi) << 32n) | BigInt(lo) });
    if (!(lo & 1)) return walkFault(EVT_ID.F_TRANSLATION, 1, level, 'invalid stage-1 descriptor');
    if (level < 3 && (lo & 3) === 3) {
      if (hi & 0xf0000) return walkFault(EVT_ID.F_ADDR_SIZE, 1, level, 'table address above 48 bits');
      const next = (hi & 0xffff) * P2[32]! + ((lo & LO[g]!) >>> 0);
      if (next >= P2[p.ipsBits]!) return walkFault(EVT_ID.F_ADDR_SIZE, 1, level, 'next table above the IPS');
      if (!r.had) {
        apTable |= (hi >>> 29) & 3;
        pxnTable |= (hi >>> 27) & 1;
        uxnTable |= (hi >>> 28) & 1;
      }
      table = next;
      level++;
      shift -= s;
      idx = above(ahi, alo, shift) & smask;
      continue;
    }
    if (level === 3 ? (lo & 3) !== 3 : !blockAllowed(g, level)) {
      return walkFault(EVT_ID.F_TRANSLATION, 1, level, level === 3 ? 'reserved level-3 descriptor' : 'block not allowed at this level');
    }
    if (hi & 0xf0000) return walkFault(EVT_ID.F_ADDR_SIZE, 1, level, 'output address above 48 bits');
    const oaBase = (hi & 0xffff) * P2[32]! + ((lo & LO[shift]!) >>> 0);
    if (oaBase >= P2[p.ipsBits]!) return walkFault(EVT_ID.F_ADDR_SIZE, 1, level, 'output address above the IPS');
    if (!(lo & 0x400) && !p.affd) return walkFault(EVT_ID.F_ACCESS, 1, level, 'access flag clear');
    out.oa = oaBase + ((alo & (P2[shift]! - 1)) >>> 0);
    out.sizeLog2 = shift;
    out.level = level;
    out.global = !(lo & 0x800);
    out.device = false;
    out.perm = stage1Perm(p, lo, hi, apTable, pxnTable, uxnTable);
    return null;
  }
}

/** Leaf AP[2:1], PXN/UXN under table restrictions, WXN/UWXN and PAN -> PERM bits. */
export function stage1Perm(p: S1Params, lo: number, hi: number, apTable: number, pxnTable: number, uxnTable: number): number {
  let ap1 = (lo >>> 6) & 1; // EL0 access
  let ap2 = (lo >>> 7) & 1; // read-only
  if (apTable & 1) ap1 = 0;
  if (apTable & 2) ap2 = 1;
  const pxn = ((hi >>> 21) & 1) | pxnTable;
  const uxn = ((hi >>> 22) & 1) | uxnTable;
  let perm = PERM.PR;
  if (!ap2) perm |= PERM.PW;
  if (ap1) perm |= PERM.UR;
  if (ap1 && !ap2) perm |= PERM.UW;
  // EL1 never executes what EL0 can write; WXN makes writable memory XN.
  if (!pxn && !(ap1 && !ap2) && !(p.wxn && !ap2)) perm |= PERM.PX;
  if (ap1 && !uxn && !((p.wxn || p.uwxn) && !ap2)) perm |= PERM.UX;
  // PAN: privileged data access to EL0-accessible memory faults.
  if (p.pan && ap1) perm &= ~(PERM.PR | PERM.PW);
  return perm;
}

export { EVT_CLASS };
