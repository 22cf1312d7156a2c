// Event records (256 bits): building them from a fault, the StreamID
// replacement of a forwarded record, and decoding for traces and tests.
import { build, bytesFromWords, EVT, EVT_ID, EVT_NAME, get, getN, set } from './regs.js';

export interface EventFields {
  id: number;
  sid: number;
  /** Transaction's SubstreamID (sets SSV). */
  ssid?: number;
  stag?: number;
  stall?: boolean;
  /** Privileged access (PnU = 1). */
  priv?: boolean;
  /** Instruction fetch (InD = 1). */
  instr?: boolean;
  /** Read access (RnW = 1). */
  read?: boolean;
  s2?: boolean;
  cls?: number;
  /** Stage-2 fault on a table or CD read: TTRnW (1 = that access was a read). */
  ttRead?: boolean;
  inputAddr?: bigint;
  ipa?: number;
  fetchAddr?: number;
}

/** Event IDs the host forwards to a vEVENTQ (arm_smmu_handle_event). */
export const FORWARDABLE = new Set<number>([
  EVT_ID.C_BAD_STE, EVT_ID.F_STREAM_DISABLED, EVT_ID.C_BAD_SUBSTREAMID, EVT_ID.C_BAD_CD,
  EVT_ID.F_TRANSLATION, EVT_ID.F_ADDR_SIZE, EVT_ID.F_ACCESS, EVT_ID.F_PERMISSION,
]);

/** Configuration errors carry only dword 0 (StreamID, SubstreamID). */
const CONFIG_ONLY = new Set<number>([
  EVT_ID.C_BAD_STREAMID, EVT_ID.C_BAD_STE, EVT_ID.C_BAD_SUBSTREAMID, EVT_ID.C_BAD_CD, EVT_ID.F_STREAM_DISABLED,
]);

export function buildEvent(f: EventFields): bigint[] {
  const w = build(EVT, 4, { ID: f.id, SID: f.sid >>> 0 });
  // C_BAD_SUBSTREAMID always holds a SubstreamID (0 for traffic without one) and has no SSV bit;
  // F_STREAM_DISABLED holds only the StreamID.
  if (f.id === EVT_ID.C_BAD_SUBSTREAMID) {
    set(w, EVT.SSID, f.ssid ?? 0);
    return w;
  }
  if (f.id === EVT_ID.F_STREAM_DISABLED) return w;
  if (f.ssid !== undefined) {
    set(w, EVT.SSV, 1);
    set(w, EVT.SSID, f.ssid);
  }
  if (CONFIG_ONLY.has(f.id)) return w;
  if (f.stag) set(w, EVT.STAG, f.stag);
  if (f.stall) set(w, EVT.STALL, 1);
  if (f.priv) set(w, EVT.PNU, 1);
  if (f.instr) set(w, EVT.IND, 1);
  if (f.read) set(w, EVT.RNW, 1);
  if (f.s2) {
    set(w, EVT.S2, 1);
    set(w, EVT.CLASS, f.cls ?? 0);
    if (f.ttRead) set(w, EVT.TTRNW, 1);
  }
  if (f.inputAddr !== undefined) set(w, EVT.INPUT_ADDR, f.inputAddr & ((1n << 64n) - 1n));
  if (f.ipa !== undefined) set(w, EVT.IPA, Math.floor(f.ipa / 4096));
  if (f.fetchAddr !== undefined) set(w, EVT.FETCH_ADDR, Math.floor(f.fetchAddr / 8));
  return w;
}

/** The record as a vEVENTQ delivers it: StreamID replaced by the vSID (low 32 bits), little-endian. */
export function forwardedRecord(w: readonly bigint[], vsid: bigint): Uint8Array {
  const v = [...w];
  set(v, EVT.SID, vsid & 0xffffffffn);
  return bytesFromWords(v);
}

export interface DecodedEvent {
  id: number;
  name: string;
  sid: number;
  ssid?: number;
  s2: boolean;
  cls: number;
  read: boolean;
  priv: boolean;
  instr: boolean;
  ttRead: boolean;
  inputAddr: bigint;
  ipa: bigint;
  fetchAddr: bigint;
}

export function decodeEvent(w: readonly bigint[]): DecodedEvent {
  const id = getN(w, EVT.ID);
  return {
    id, name: EVT_NAME[id] ?? `0x${id.toString(16)}`, sid: getN(w, EVT.SID),
    ssid: get(w, EVT.SSV) || id === EVT_ID.C_BAD_SUBSTREAMID ? getN(w, EVT.SSID) : undefined,
    s2: !!get(w, EVT.S2), cls: getN(w, EVT.CLASS), read: !!get(w, EVT.RNW), priv: !!get(w, EVT.PNU),
    instr: !!get(w, EVT.IND), ttRead: !!get(w, EVT.TTRNW), inputAddr: get(w, EVT.INPUT_ADDR),
    ipa: get(w, EVT.IPA) << 12n, fetchAddr: get(w, EVT.FETCH_ADDR) << 3n,
  };
}
