// SMMUv3 register, STE, CD, command and event-record fields as data (bit
// positions from the SMMUv3 architecture as used by Linux's arm-smmu-v3.h and
// QEMU's smmuv3-internal.h). Everything that decodes or builds one of these
// structures goes through these tables; traces print them by name.

/** One field: dword (or 32-bit register) index, low bit, width. */
export interface Field {
  readonly dw: number;
  readonly lo: number;
  readonly bits: number;
}

const F = (dw: number, hi: number, lo: number): Field => ({ dw, lo, bits: hi - lo + 1 });
const B = (dw: number, bit: number): Field => F(dw, bit, bit);

export type Layout = Readonly<Record<string, Field>>;

/** Value of `f` in a structure of 64-bit words (shifted down to bit 0). */
export function get(words: readonly bigint[], f: Field): bigint {
  return (words[f.dw]! >> BigInt(f.lo)) & ((1n << BigInt(f.bits)) - 1n);
}

/** get() as a Number (fields of up to 53 bits). */
export function getN(words: readonly bigint[], f: Field): number {
  return Number(get(words, f));
}

/** The field's bits left in place (for address fields like S1ContextPtr[51:6]). */
export function inPlace(words: readonly bigint[], f: Field): bigint {
  return words[f.dw]! & mask(f);
}

/** Mask of `f` within its word. */
export function mask(f: Field): bigint {
  return ((1n << BigInt(f.bits)) - 1n) << BigInt(f.lo);
}

/** Set `f` to `v` (a value wider than the field throws: callers build only legal encodings). */
export function set(words: bigint[], f: Field, v: bigint | number | boolean): void {
  const b = typeof v === 'boolean' ? (v ? 1n : 0n) : BigInt(v);
  if (b < 0n || b >> BigInt(f.bits)) throw new Error(`SMMU field value 0x${b.toString(16)} does not fit ${f.bits} bits`);
  words[f.dw] = (words[f.dw]! & ~mask(f)) | (b << BigInt(f.lo));
}

/** Build a structure of `n` words from named field values of `layout`. */
export function build(layout: Layout, n: number, values: Readonly<Record<string, bigint | number | boolean>>): bigint[] {
  const w = new Array<bigint>(n).fill(0n);
  for (const [name, v] of Object.entries(values)) {
    const f = layout[name];
    if (!f) throw new Error(`unknown SMMU field '${name}'`);
    set(w, f, v);
  }
  return w;
}

/** Decode every non-zero field of a structure (for traces and test messages). */
export function fieldsOf(layout: Layout, words: readonly bigint[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, f] of Object.entries(layout)) {
    if (f.dw >= words.length) continue;
    const v = get(words, f);
    if (v) out[name] = `0x${v.toString(16)}`;
  }
  return out;
}

/** Little-endian bytes <-> 64-bit words. */
export function wordsFromBytes(b: Uint8Array, n = b.length / 8): bigint[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const w: bigint[] = [];
  for (let i = 0; i < n; i++) w.push(dv.getBigUint64(i * 8, true));
  return w;
}

export function bytesFromWords(w: readonly bigint[]): Uint8Array {
  const b = new Uint8Array(w.length * 8);
  const dv = new DataView(b.buffer);
  w.forEach((x, i) => dv.setBigUint64(i * 8, x & ((1n << 64n) - 1n), true));
  return b;
}

// ---- ID registers (32-bit; dw = register index: 0 = IDR0 ... 5 = IDR5) ------------

export const IDR0 = {
  S2P: B(0, 0), S1P: B(0, 1), TTF: F(0, 3, 2), COHACC: B(0, 4), BTM: B(0, 5), HTTU: F(0, 7, 6), HYP: B(0, 9),
  ATS: B(0, 10), ASID16: B(0, 12), MSI: B(0, 13), SEV: B(0, 14), PRI: B(0, 16), VMID16: B(0, 18), CD2L: B(0, 19),
  TTENDIAN: F(0, 22, 21), STALL_MODEL: F(0, 25, 24), TERM_MODEL: B(0, 26), ST_LEVEL: F(0, 28, 27),
} as const;
export const IDR1 = {
  SIDSIZE: F(0, 5, 0), SSIDSIZE: F(0, 10, 6), PRIQS: F(0, 15, 11), EVTQS: F(0, 20, 16), CMDQS: F(0, 25, 21),
  ATTR_TYPES_OVR: B(0, 27), REL: B(0, 28), QUEUES_PRESET: B(0, 29), TABLES_PRESET: B(0, 30),
} as const;
export const IDR3 = { HAD: B(0, 2), XNX: B(0, 4), FWB: B(0, 8), RIL: B(0, 10), BBML: F(0, 12, 11) } as const;
export const IDR5 = {
  OAS: F(0, 2, 0), GRAN4K: B(0, 4), GRAN16K: B(0, 5), GRAN64K: B(0, 6), DS: B(0, 7), VAX: F(0, 11, 10),
  STALL_MAX: F(0, 31, 16),
} as const;
export const IIDR = { IMPLEMENTER: F(0, 11, 0), REVISION: F(0, 15, 12), VARIANT: F(0, 19, 16), PRODUCTID: F(0, 31, 20) } as const;
export const AIDR = { MINOR: F(0, 3, 0), MAJOR: F(0, 7, 4) } as const;

/** A 32-bit register field as a Number. */
export function reg(value: number, f: Field): number {
  return ((value >>> f.lo) & (2 ** f.bits - 1)) >>> 0;
}

/** Set a field of a 32-bit register value. */
export function regSet(value: number, f: Field, v: number): number {
  if (v < 0 || v >= 2 ** f.bits) throw new Error(`register field value ${v} does not fit ${f.bits} bits`);
  const m = ((2 ** f.bits - 1) << f.lo) >>> 0;
  return ((value & ~m) | (v << f.lo)) >>> 0;
}

/** IDR5.OAS / CD.IPS / VTCR.S2PS encodings -> address bits. */
export const PA_BITS = [32, 36, 40, 42, 44, 48, 52] as const;
export function paBits(enc: number): number {
  return PA_BITS[Math.min(enc, 6)]!;
}

// ---- Stream table entry (64 bytes; dw0..dw7) ----------------------------------------

export const STE = {
  V: B(0, 0), CONFIG: F(0, 3, 1), S1FMT: F(0, 5, 4), S1CTXPTR: F(0, 51, 6), S1CDMAX: F(0, 63, 59),
  S1DSS: F(1, 1, 0), S1CIR: F(1, 3, 2), S1COR: F(1, 5, 4), S1CSH: F(1, 7, 6), MEV: B(1, 19), S2FWB: B(1, 25),
  S1STALLD: B(1, 27), EATS: F(1, 29, 28), STRW: F(1, 31, 30), SHCFG: F(1, 45, 44),
  S2VMID: F(2, 15, 0), S2T0SZ: F(2, 37, 32), S2SL0: F(2, 39, 38), S2IR0: F(2, 41, 40), S2OR0: F(2, 43, 42),
  S2SH0: F(2, 45, 44), S2TG: F(2, 47, 46), S2PS: F(2, 50, 48), S2AA64: B(2, 51), S2ENDI: B(2, 52), S2AFFD: B(2, 53),
  S2PTW: B(2, 54), S2HD: B(2, 55), S2HA: B(2, 56), S2S: B(2, 57), S2R: B(2, 58),
  S2TTB: F(3, 51, 4),
} as const;

export const STE_CONFIG = { ABORT: 0, BYPASS: 4, S1_TRANS: 5, S2_TRANS: 6, NESTED: 7 } as const;
export const S1DSS = { TERMINATE: 0, BYPASS: 1, SSID0: 2 } as const;
export const EATS = { ABT: 0, TRANS: 1, S1CHK: 2 } as const;

/** vSTE bits user space may set (the kernel's NESTING_ALLOWED masks). */
export const VSTE_ALLOWED = [
  mask(STE.V) | mask(STE.CONFIG) | mask(STE.S1FMT) | mask(STE.S1CTXPTR) | mask(STE.S1CDMAX),
  mask(STE.S1DSS) | mask(STE.S1CIR) | mask(STE.S1COR) | mask(STE.S1CSH) | mask(STE.S1STALLD) | mask(STE.EATS),
] as const;

/** S2TG / CD.TG0 granule encodings (shift), and CD.TG1's own encoding. */
export const TG0_SHIFT: Readonly<Record<number, number>> = { 0: 12, 1: 16, 2: 14 };
export const TG1_SHIFT: Readonly<Record<number, number>> = { 1: 14, 2: 12, 3: 16 };

// ---- Context descriptor (64 bytes) ---------------------------------------------------

export const CD = {
  T0SZ: F(0, 5, 0), TG0: F(0, 7, 6), IR0: F(0, 9, 8), OR0: F(0, 11, 10), SH0: F(0, 13, 12), EPD0: B(0, 14),
  ENDI: B(0, 15), T1SZ: F(0, 21, 16), TG1: F(0, 23, 22), IR1: F(0, 25, 24), OR1: F(0, 27, 26), SH1: F(0, 29, 28),
  EPD1: B(0, 30), V: B(0, 31), IPS: F(0, 34, 32), AFFD: B(0, 35), WXN: B(0, 36), UWXN: B(0, 37), TBI0: B(0, 38),
  TBI1: B(0, 39), PAN: B(0, 40), AA64: B(0, 41), HD: B(0, 42), HA: B(0, 43), S: B(0, 44), R: B(0, 45), A: B(0, 46),
  ASET: B(0, 47), ASID: F(0, 63, 48),
  HAD0: B(1, 1), TTB0: F(1, 51, 4), HAD1: B(2, 1), TTB1: F(2, 51, 4), MAIR: F(3, 63, 0),
} as const;

/** Level-1 CD table descriptor. */
export const L1CD = { V: B(0, 0), L2PTR: F(0, 51, 12) } as const;

// ---- Commands (16 bytes) --------------------------------------------------------------

export const CMD = {
  OP: F(0, 7, 0), SSEC: B(0, 10), SSV: B(0, 11),
  SID: F(0, 63, 32), SSID: F(0, 31, 12),
  CFGI_LEAF: B(1, 0), CFGI_RANGE: F(1, 4, 0),
  NUM: F(0, 16, 12), SCALE: F(0, 25, 20), VMID: F(0, 47, 32), ASID: F(0, 63, 48),
  TLBI_LEAF: B(1, 0), TTL: F(1, 9, 8), TG: F(1, 11, 10), ADDR: F(1, 63, 12), IPA: F(1, 51, 12),
  ATC_GLOBAL: B(0, 9), ATC_SIZE: F(1, 5, 0),
  PRI_GRPID: F(1, 8, 0), PRI_RESP: F(1, 13, 12), RESUME_RESP: F(0, 13, 12), RESUME_STAG: F(1, 15, 0),
  SYNC_CS: F(0, 13, 12), SYNC_MSH: F(0, 23, 22), SYNC_MSIATTR: F(0, 27, 24), SYNC_MSIDATA: F(0, 63, 32),
  SYNC_MSIADDR: F(1, 51, 2),
  PREFETCH_SIZE: F(1, 4, 0),
} as const;

export const OP = {
  PREFETCH_CONFIG: 0x01, PREFETCH_ADDR: 0x02, CFGI_STE: 0x03, CFGI_ALL: 0x04, CFGI_CD: 0x05, CFGI_CD_ALL: 0x06,
  CFGI_VMS_PIDM: 0x07,
  TLBI_NH_ALL: 0x10, TLBI_NH_ASID: 0x11, TLBI_NH_VA: 0x12, TLBI_NH_VAA: 0x13,
  TLBI_EL3_ALL: 0x18, TLBI_EL3_VA: 0x1a,
  TLBI_EL2_ALL: 0x20, TLBI_EL2_ASID: 0x21, TLBI_EL2_VA: 0x22, TLBI_EL2_VAA: 0x23,
  TLBI_S12_VMALL: 0x28, TLBI_S2_IPA: 0x2a, TLBI_NSNH_ALL: 0x30,
  ATC_INV: 0x40, PRI_RESP: 0x41, RESUME: 0x44, STALL_TERM: 0x45, CMD_SYNC: 0x46,
} as const;

export const OP_NAME: Readonly<Record<number, string>> = Object.fromEntries(Object.entries(OP).map(([k, v]) => [v, k]));

/** ATC_INV Size value meaning "whole ATC". */
export const ATC_INV_SIZE_ALL = 52;

// ---- Event records (32 bytes) ---------------------------------------------------------

export const EVT = {
  ID: F(0, 7, 0), SSV: B(0, 11), SSID: F(0, 31, 12), SID: F(0, 63, 32),
  STAG: F(1, 15, 0), STALL: B(1, 31), PNU: B(1, 33), IND: B(1, 34), RNW: B(1, 35), NSIPA: B(1, 38), S2: B(1, 39),
  CLASS: F(1, 41, 40), TTRNW: B(1, 44),
  INPUT_ADDR: F(2, 63, 0), IPA: F(3, 51, 12), FETCH_ADDR: F(3, 51, 3),
} as const;

export const EVT_ID = {
  F_UUT: 0x01, C_BAD_STREAMID: 0x02, F_STE_FETCH: 0x03, C_BAD_STE: 0x04, F_BAD_ATS_TREQ: 0x05,
  F_STREAM_DISABLED: 0x06, F_TRANSL_FORBIDDEN: 0x07, C_BAD_SUBSTREAMID: 0x08, F_CD_FETCH: 0x09, C_BAD_CD: 0x0a,
  F_WALK_EABT: 0x0b, F_TRANSLATION: 0x10, F_ADDR_SIZE: 0x11, F_ACCESS: 0x12, F_PERMISSION: 0x13,
  F_TLB_CONFLICT: 0x20, F_CFG_CONFLICT: 0x21, E_PAGE_REQUEST: 0x24, F_VMS_FETCH: 0x25,
} as const;

export const EVT_NAME: Readonly<Record<number, string>> = Object.fromEntries(Object.entries(EVT_ID).map(([k, v]) => [v, k]));

/** EVT.CLASS values (stage-2 faults): what the faulting stage-2 lookup was for. */
export const EVT_CLASS = { CD: 0, TT: 1, IN: 2 } as const;
