// Configuration decode (the analogue of QEMU's decode_ste / decode_cd) and the
// configuration cache. An STE becomes a StreamConfig (stage-2 parameters, the
// CD table pointer); each CD a CdConfig (TTB0/TTB1 regions, ASID, IPS...).
// Illegal configurations give the C_BAD_STE / C_BAD_CD checks the hardware
// makes (spec 04 §5.3) on top of what the kernel validated. Only successful
// decodes are cached; CFGI_* commands drop them.
import type { SmmuFeatures } from './config.js';
import { leafLevels, levelShift } from './pgtable.js';
import { CD, EVT_ID, get, getN, inPlace, paBits, STE, STE_CONFIG, TG0_SHIFT, TG1_SHIFT } from './regs.js';
import type { SmmuTracer } from './trace.js';
import type { S1Params, S1Region, S2Params } from './walk.js';

export type StreamKind = 'abort' | 'bypass' | 's1' | 's2' | 'nested';

export interface StreamS1 {
  readonly fmt: number;
  readonly cdmax: number;
  readonly dss: number;
  /** S1ContextPtr: a PA (S1-only STE) or an IPA (nested). */
  readonly ctxPtr: number;
}

export interface StreamConfig {
  readonly sid: number;
  readonly kind: StreamKind;
  /** VMID the stream's TLB entries are tagged with (STE.S2VMID; 0 without stage 2). */
  readonly vmid: number;
  readonly s2: S2Params | null;
  readonly s1: StreamS1 | null;
  /** Decoded CDs by SubstreamID (0 also for traffic without one). */
  readonly cds: Map<number, CdConfig>;
  readonly ste: readonly bigint[];
}

export interface CdConfig extends S1Params {
  /** TTB0 and TTB1 regions; null when EPDx = 1. */
  readonly regions: readonly [S1Region | null, S1Region | null];
  /** Input bits of each region (for region selection even when the walk is disabled). */
  readonly inBits: readonly [number, number];
  readonly tbi: readonly [boolean, boolean];
  /** Candidate leaf sizes (log2, ascending) for IOTLB lookups: both regions, and stage 2 when nested. */
  readonly probeSizes: readonly number[];
  /** Fast path: TTB0-region input addresses are below this (2^n0), or 0 when TTB0 is unusable. */
  readonly ttb0Limit: bigint;
  readonly cd: readonly bigint[];
}

/** Why a configuration is illegal (becomes C_BAD_STE / C_BAD_CD / C_BAD_STREAMID...). */
export interface ConfigFault {
  readonly id: number;
  readonly reason: string;
}

const bad = (id: number, reason: string): ConfigFault => ({ id, reason });
const isFault = (x: unknown): x is ConfigFault =>
  typeof x === 'object' && x !== null && 'reason' in x && !('kind' in x) && !('stage' in x);

/** Start level of a stage-1 region (spec 04 §5.5). */
export function s1StartLevel(g: number, inBits: number): number {
  return 4 - Math.floor((inBits - 4) / (g - 3));
}

function leafSizesFrom(g: number, startLevel: number): number[] {
  return leafLevels(g).filter((l) => l >= startLevel).map((l) => levelShift(g, l));
}

function decodeS2(ste: readonly bigint[], f: SmmuFeatures, vmid: number): S2Params | ConfigFault {
  const C = EVT_ID.C_BAD_STE;
  if (!get(ste, STE.S2AA64)) return bad(C, 'S2AA64 = 0 (only AArch64 tables)');
  if (get(ste, STE.S2ENDI)) return bad(C, 'S2ENDI = 1 (only little-endian tables)');
  if (get(ste, STE.S2S)) return bad(C, 'S2S = 1 (stalls not supported)');
  if (get(ste, STE.S2HA) || get(ste, STE.S2HD)) return bad(C, 'S2HA/S2HD set without HTTU');
  const g = TG0_SHIFT[getN(ste, STE.S2TG)];
  if (g === undefined) return bad(C, 'S2TG reserved');
  if (!f.granules.includes(g)) return bad(C, `S2TG granule 2^${g} not supported`);
  let ps = Math.min(paBits(getN(ste, STE.S2PS)), f.oas);
  if (g !== 16) ps = Math.min(ps, 48);
  const t0sz = getN(ste, STE.S2T0SZ);
  const inBits = 64 - t0sz;
  if (t0sz > 39 || t0sz < 16 || inBits > ps) return bad(C, `S2T0SZ ${t0sz} invalid for PS ${ps}`);
  const sl0 = getN(ste, STE.S2SL0);
  if (sl0 === 3) return bad(C, 'S2SL0 = 3 reserved');
  const start = (g === 12 ? 2 : 3) - sl0;
  if (g === 16 && start < 1) return bad(C, 'S2SL0 start level 0 with 64K');
  const s = g - 3;
  const r = inBits - levelShift(g, start);
  if (r < 1) return bad(C, `S2SL0 start level ${start} above the input size`);
  if (r > s + 4) return bad(C, `S2SL0 start level ${start} needs more than 16 concatenated tables`);
  const tableBytes = Math.max(8 * 2 ** r, 64);
  const ttbRaw = Number(inPlace(ste, STE.S2TTB));
  if (ttbRaw >= 2 ** ps) return bad(C, 'S2TTB beyond the output size');
  return {
    vmid, g, inBits, startLevel: start, ttb: Math.floor(ttbRaw / tableBytes) * tableBytes, psBits: ps,
    affd: !!get(ste, STE.S2AFFD), record: !!get(ste, STE.S2R), ptw: !!get(ste, STE.S2PTW),
    fwb: f.s2fwb && !!get(ste, STE.S2FWB), xnx: f.xnx, leafSizes: leafSizesFrom(g, start),
  };
}

/** Decode an STE the SMMU fetched for `sid`. */
export function decodeSte(sid: number, ste: readonly bigint[] | undefined, f: SmmuFeatures, t: SmmuTracer): StreamConfig | ConfigFault {
  const r = decodeSteInner(sid, ste, f);
  if (t.on) {
    t.emit('ste', { sid, ...(isFault(r) ? { fault: r.reason } : { kind: r.kind, vmid: r.vmid, s1: r.s1, s2: r.s2 && { g: r.s2.g, inBits: r.s2.inBits, startLevel: r.s2.startLevel, ttb: r.s2.ttb } }) });
  }
  return r;
}

function decodeSteInner(sid: number, ste: readonly bigint[] | undefined, f: SmmuFeatures): StreamConfig | ConfigFault {
  if (sid >= 2 ** f.sidBits) return bad(EVT_ID.C_BAD_STREAMID, `StreamID ${sid} beyond SIDSIZE`);
  if (!ste) return bad(EVT_ID.C_BAD_STREAMID, `no stream table entry for StreamID ${sid}`);
  const C = EVT_ID.C_BAD_STE;
  if (!get(ste, STE.V)) return bad(C, 'V = 0');
  const cfg = getN(ste, STE.CONFIG);
  const base = { sid, cds: new Map<number, CdConfig>(), ste };
  // Config 0b001..0b011 are reserved and behave as 0b000 (abort, no event).
  if (cfg < STE_CONFIG.BYPASS) return { ...base, kind: 'abort', vmid: 0, s1: null, s2: null };
  if (cfg === STE_CONFIG.BYPASS) return { ...base, kind: 'bypass', vmid: 0, s1: null, s2: null };
  const hasS1 = (cfg & 1) === 1;
  const hasS2 = (cfg & 2) === 2;
  if (hasS1 && !f.s1) return bad(C, 'stage 1 configured but not implemented');
  if (hasS2 && !f.s2) return bad(C, 'stage 2 configured but not implemented');
  const vmid = f.s2 ? getN(ste, STE.S2VMID) % 2 ** f.vmidBits : 0;
  let s2: S2Params | null = null;
  if (hasS2) {
    const r = decodeS2(ste, f, vmid);
    if (isFault(r)) return r;
    s2 = r;
  }
  let s1: StreamS1 | null = null;
  if (hasS1) {
    const fmt = getN(ste, STE.S1FMT);
    const cdmax = getN(ste, STE.S1CDMAX);
    if (cdmax > f.ssidBits) return bad(C, `S1CDMax ${cdmax} > SSIDSIZE ${f.ssidBits}`);
    if (cdmax && fmt !== 0 && !f.cd2l) return bad(C, `S1Fmt ${fmt} without 2-level CD tables`);
    const ctxPtr = Number(inPlace(ste, STE.S1CTXPTR));
    if (ctxPtr >= 2 ** f.oas) return bad(C, 'S1ContextPtr beyond the output address size');
    // The architecture makes S1STALLD = 1 ILLEGAL whenever STALL_MODEL != 0b00 (this SMMU: 0b01,
    // no stalls); the kernel lets a guest set it in the vSTE, so the hardware check is what remains.
    if (get(ste, STE.S1STALLD)) return bad(C, 'S1STALLD = 1 with STALL_MODEL != 0 (ILLEGAL)');
    // Reserved encodings: S1Fmt 0b11 behaves as 0b00 (linear), S1DSS 0b11 as 0b00 (terminate).
    s1 = { fmt: cdmax && fmt !== 3 ? fmt : 0, cdmax, dss: cdmax && getN(ste, STE.S1DSS) !== 3 ? getN(ste, STE.S1DSS) : 0, ctxPtr };
  }
  const kind = hasS1 && hasS2 ? 'nested' : hasS1 ? 's1' : 's2';
  return { ...base, kind, vmid, s1, s2 };
}

/** Decode a CD fetched for a stream (the C_BAD_CD checks of spec 04 §5.3). */
export function decodeCd(cd: readonly bigint[], sc: StreamConfig, f: SmmuFeatures, t: SmmuTracer, ssid: number): CdConfig | ConfigFault {
  const r = decodeCdInner(cd, sc, f);
  if (t.on) {
    t.emit('cd', { sid: sc.sid, ssid, ...(isFault(r) ? { fault: r.reason } : {
      asid: r.asid, ipsBits: r.ipsBits, regions: r.regions.map((x) => x && { g: x.g, inBits: x.inBits, startLevel: x.startLevel, ttb: x.ttb }),
    }) });
  }
  return r;
}

function decodeCdInner(cd: readonly bigint[], sc: StreamConfig, f: SmmuFeatures): CdConfig | ConfigFault {
  const C = EVT_ID.C_BAD_CD;
  if (!get(cd, CD.V)) return bad(C, 'V = 0');
  if (!get(cd, CD.AA64)) return bad(C, 'AA64 = 0 (only AArch64 tables)');
  if (!get(cd, CD.A)) return bad(C, 'A = 0 (faulting transactions are always aborted)');
  if (get(cd, CD.S)) return bad(C, 'S = 1 (stalls not supported)');
  if (get(cd, CD.HA) || get(cd, CD.HD)) return bad(C, 'HA/HD set without HTTU');
  if (get(cd, CD.ENDI)) return bad(C, 'ENDI = 1 (only little-endian tables)');
  const ipsRaw = Math.min(paBits(getN(cd, CD.IPS)), f.oas);
  const regions: [S1Region | null, S1Region | null] = [null, null];
  const inBits: [number, number] = [0, 0];
  const sizes = new Set<number>(sc.s2?.leafSizes ?? []);
  let ipsBits = ipsRaw;
  for (const i of [0, 1] as const) {
    const tsz = getN(cd, i ? CD.T1SZ : CD.T0SZ);
    inBits[i] = 64 - tsz;
    if (get(cd, i ? CD.EPD1 : CD.EPD0)) continue; // disabled: TGx/TxSZ are not checked
    const tg = getN(cd, i ? CD.TG1 : CD.TG0);
    const g = (i ? TG1_SHIFT : TG0_SHIFT)[tg];
    if (g === undefined) return bad(C, `TG${i} = ${tg} reserved`);
    if (!f.granules.includes(g)) return bad(C, `TG${i} granule 2^${g} not supported`);
    if (tsz < 16 || tsz > 39) return bad(C, `T${i}SZ = ${tsz} out of 16..39`);
    const eff = g === 16 ? ipsRaw : Math.min(ipsRaw, 48);
    ipsBits = Math.min(ipsBits, eff);
    const n = 64 - tsz;
    const start = s1StartLevel(g, n);
    const startBits = n - levelShift(g, start);
    const tableBytes = Math.max(8 * 2 ** startBits, 64);
    const ttbRaw = Number(inPlace(cd, i ? CD.TTB1 : CD.TTB0));
    if (ttbRaw >= 2 ** eff) return bad(C, `TTB${i} beyond the IPS`);
    regions[i] = {
      g, inBits: n, startLevel: start, ttb: Math.floor(ttbRaw / tableBytes) * tableBytes,
      had: f.had && !!get(cd, i ? CD.HAD1 : CD.HAD0),
    };
    for (const s of leafSizesFrom(g, start)) sizes.add(s);
  }
  const asid = getN(cd, CD.ASID) % 2 ** f.asidBits;
  const tbi: [boolean, boolean] = [!!get(cd, CD.TBI0), !!get(cd, CD.TBI1)];
  return {
    asid, ipsBits, affd: !!get(cd, CD.AFFD), record: !!get(cd, CD.R), wxn: !!get(cd, CD.WXN), uwxn: !!get(cd, CD.UWXN),
    pan: !!get(cd, CD.PAN), regions, inBits, tbi, probeSizes: [...sizes].sort((a, b) => a - b),
    ttb0Limit: regions[0] ? 1n << BigInt(inBits[0]) : 0n, cd,
  };
}

export { isFault as isConfigFault };

/** Decoded configurations by StreamID: a bounded LRU of successful decodes. */
export class ConfigCache {
  private readonly map = new Map<number, StreamConfig>();
  constructor(readonly capacity: number, readonly t: SmmuTracer) {}

  get(sid: number): StreamConfig | undefined {
    const c = this.map.get(sid);
    if (c && this.map.size > 1) {
      // Refresh the LRU position (Map keeps insertion order).
      this.map.delete(sid);
      this.map.set(sid, c);
    }
    return c;
  }

  /** Fast lookup without LRU refresh (hot path; refreshed on misses of the IOTLB). */
  peek(sid: number): StreamConfig | undefined {
    return this.map.get(sid);
  }

  set(c: StreamConfig): void {
    this.map.delete(c.sid);
    while (this.map.size >= this.capacity && this.map.size) {
      const oldest = this.map.keys().next().value as number;
      this.map.delete(oldest);
      if (this.t.on) this.t.emit('cfgcache', { op: 'evict', sid: oldest });
    }
    if (this.capacity > 0) this.map.set(c.sid, c);
  }

  /** CFGI_STE: the stream's STE and every CD cached through it. */
  invSid(sid: number): void {
    if (this.map.delete(sid) && this.t.on) this.t.emit('cfgcache', { op: 'inv:ste', sid });
  }

  /** CFGI_STE_RANGE / CFGI_ALL. */
  invRange(first: number, count: number): void {
    for (const sid of [...this.map.keys()]) if (sid >= first && sid < first + count) this.invSid(sid);
  }

  /** CFGI_CD (one SubstreamID) / CFGI_CD_ALL (ssid undefined). */
  invCd(sid: number, ssid: number | undefined): void {
    const c = this.map.get(sid);
    if (!c) return;
    if (ssid === undefined) c.cds.clear();
    else c.cds.delete(ssid);
    if (this.t.on) this.t.emit('cfgcache', { op: ssid === undefined ? 'inv:cd_all' : 'inv:cd', sid, ssid });
  }

  invAll(): void {
    this.map.clear();
  }

  get size(): number {
    return this.map.size;
  }
}
