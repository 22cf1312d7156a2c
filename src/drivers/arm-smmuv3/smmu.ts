// One emulated SMMUv3: its stream table (host memory the driver writes), the
// configuration cache, the IOTLB, command execution, the event queue, and the
// translation pipeline of spec 04 §5.1 (the analogue of QEMU's
// smmuv3_translate + smmu_translate): STE -> CD (fetched through stage 2 when
// nested) -> TTB0/TTB1 selection -> IOTLB -> stage-1 walk (tables through
// stage 2) -> stage 2 of the output -> combined IOTLB entry. Any failure builds
// the event record the hardware would and terminates the access.
import type { DmaFault, Translation } from '../driver.js';
import { illegal, tlbiRange } from './cmdq.js';
import { probe, type SmmuFeatures, type SmmuHwConfig } from './config.js';
import {
  ConfigCache, decodeCd, decodeSte, isConfigFault, type CdConfig, type ConfigFault, type StreamConfig,
} from './decode.js';
import { buildEvent, decodeEvent, type DecodedEvent } from './event.js';
import { ASID_ANY, ASID_GLOBAL, ASID_NONE, Iotlb, REGION1 } from './iotlb.js';
import { readWords } from './mem.js';
import {
  bytesFromWords, CMD, EVT_CLASS, EVT_ID, EVT_NAME, get, getN, L1CD, OP, OP_NAME, S1DSS,
} from './regs.js';
import { SmmuTracer } from './trace.js';
import type { TraceBus } from '../../core/trace_bus.js';
import {
  needed, PERM, PERM_ALL, walkFault, walkS1, walkS2, WalkOut, type S2Params, type TableReader, type WalkFault,
} from './walk.js';

const P2 = Array.from({ length: 65 }, (_, i) => 2 ** i);
const M48 = (1n << 48n) - 1n;

/** What an emulated SMMU says about a failed access (DmaFault.detail). */
export interface SmmuFaultDetail {
  /** The record as the hardware wrote it (physical StreamID), 32 bytes little-endian; null when none was produced. */
  readonly event: Uint8Array | null;
  readonly id: number;
  readonly name: string;
  /** The record went to the event queue (C_BAD_* always; S1 faults with CD.R, S2 faults with STE.S2R). */
  readonly recorded: boolean;
  /** What the host did with it: forwarded (to a vEVENTQ), pinned (host log only), dropped... */
  readonly disposition: string;
  readonly reason: string;
  readonly level?: number;
}

export interface HostEvent {
  readonly words: readonly bigint[];
  readonly decoded: DecodedEvent;
  /** The host kernel's handling (forwarded / pinned / ...). */
  disposition: string;
}

export interface CerrorIll {
  readonly cmd: readonly bigint[];
  readonly reason: string;
}

/** The host kernel's event-queue handler: returns what it did with the record. */
export type EventHandler = (words: readonly bigint[]) => string;

const TRANSLATION_FAULTS = new Set<number>([EVT_ID.F_TRANSLATION, EVT_ID.F_ADDR_SIZE, EVT_ID.F_ACCESS, EVT_ID.F_PERMISSION]);

const FAULT_KIND: Readonly<Record<number, DmaFault['kind']>> = {
  [EVT_ID.F_TRANSLATION]: 'translation', [EVT_ID.F_ADDR_SIZE]: 'address-size', [EVT_ID.F_ACCESS]: 'access',
  [EVT_ID.F_PERMISSION]: 'permission', [EVT_ID.F_WALK_EABT]: 'translation',
};

export class SmmuV3 {
  readonly name: string;
  readonly features: SmmuFeatures;
  /** The stream table: StreamID -> STE (8 dwords). Registered StreamIDs only. */
  private readonly stes = new Map<number, bigint[]>();
  readonly cfgCache: ConfigCache;
  readonly iotlb: Iotlb;
  /** Records the hardware wrote to its event queue, oldest first (bounded). */
  readonly hostEvents: HostEvent[] = [];
  /** Commands the hardware refused (CERROR_ILL); the kernel skips them and carries on. */
  readonly cerrorIll: CerrorIll[] = [];
  /** Commands executed (for tests/inspector), by opcode name. */
  readonly cmdCount = new Map<string, number>();
  eventHandler: EventHandler | null = null;

  private readonly out = new WalkOut();
  private readonly tmp = new WalkOut();
  private readonly s2out = new WalkOut();
  /** Result of the last successful s2(): physical address and leaf size. */
  private s2pa = 0;
  private s2size = 0;
  private s2level = 0;
  private s2g = 0;
  private s2perm = 0;
  private curS2: S2Params | null = null;
  private readonly readNested: TableReader;
  private readonly readDirect: TableReader;

  /** Trace points (to the emulator's bus; `bus` null: untraced). */
  readonly t: SmmuTracer;

  constructor(readonly cfg: SmmuHwConfig, bus: TraceBus | null = null) {
    this.name = cfg.name;
    this.features = probe(cfg);
    this.t = new SmmuTracer(cfg.name, bus);
    this.cfgCache = new ConfigCache(cfg.configCacheEntries, this.t);
    this.iotlb = new Iotlb(cfg.iotlbEntries, this.t);
    this.readDirect = (addr) => {
      this.tmp.oa = addr;
      return null;
    };
    this.readNested = (addr) => {
      const f = this.s2(this.curS2!, addr, PERM.PR, EVT_CLASS.TT);
      if (f) return f;
      this.tmp.oa = this.s2pa;
      return null;
    };
  }

  // ---- host memory: the stream table --------------------------------------------------

  /** Register a StreamID (its STE starts as abort, as the kernel initialises the table). */
  addStream(sid: number): void {
    if (sid < 0 || sid >= 2 ** this.features.sidBits) throw new Error(`SMMU ${this.name}: StreamID ${sid} beyond SIDSIZE ${this.features.sidBits}`);
    if (this.stes.has(sid)) throw new Error(`SMMU ${this.name}: StreamID ${sid} already in use`);
    this.stes.set(sid, [1n, 0n, 0n, 0n, 0n, 0n, 0n, 0n]);
  }

  removeStream(sid: number): void {
    this.stes.delete(sid);
    this.cfgCache.invSid(sid);
  }

  /** A memory write of the STE; takes effect for the SMMU once the cached copy is invalidated (CFGI_STE). */
  writeSte(sid: number, ste: readonly bigint[]): void {
    const cur = this.stes.get(sid);
    if (!cur) throw new Error(`SMMU ${this.name}: no stream table entry for StreamID ${sid}`);
    for (let i = 0; i < 8; i++) cur[i] = ste[i] ?? 0n;
  }

  readSte(sid: number): readonly bigint[] | undefined {
    return this.stes.get(sid);
  }

  // ---- command queue -------------------------------------------------------------------

  /** Issue commands and wait for their completion (a CMD_SYNC). Illegal ones raise CERROR_ILL and are skipped. */
  issue(cmds: readonly (readonly bigint[])[]): void {
    for (const c of cmds) this.execute(c);
  }

  private execute(c: readonly bigint[]): void {
    const op = getN(c, CMD.OP);
    const why = illegal(c, this.features);
    const name = OP_NAME[op] ?? `0x${op.toString(16)}`;
    if (this.t.on) this.t.emit('cmd', { op: name, dw0: c[0], dw1: c[1], ...(why ? { cerror: 'ILL', why } : {}) });
    if (why) {
      // The kernel's arm_smmu_cmdq_skip_err: log, replace with CMD_SYNC, carry on.
      this.cerrorIll.push({ cmd: [...c], reason: why });
      return;
    }
    this.cmdCount.set(name, (this.cmdCount.get(name) ?? 0) + 1);
    const vmid = getN(c, CMD.VMID);
    switch (op) {
      case OP.CFGI_STE:
        this.cfgCache.invSid(getN(c, CMD.SID));
        break;
      case OP.CFGI_ALL: {
        const range = getN(c, CMD.CFGI_RANGE);
        if (range === 31) this.cfgCache.invAll();
        else {
          const n = 2 ** (range + 1);
          this.cfgCache.invRange(Math.floor(getN(c, CMD.SID) / n) * n, n);
        }
        break;
      }
      case OP.CFGI_CD:
        this.cfgCache.invCd(getN(c, CMD.SID), this.features.ssidBits ? getN(c, CMD.SSID) : 0);
        break;
      case OP.CFGI_CD_ALL:
        this.cfgCache.invCd(getN(c, CMD.SID), undefined);
        break;
      case OP.TLBI_NH_ALL:
        this.iotlb.invVmid(vmid, true);
        break;
      case OP.TLBI_NH_ASID:
        this.iotlb.invAsid(vmid, getN(c, CMD.ASID) % 2 ** this.features.asidBits);
        break;
      case OP.TLBI_NH_VA:
      case OP.TLBI_NH_VAA: {
        const r = tlbiRange(c, false);
        const asid = op === OP.TLBI_NH_VA ? getN(c, CMD.ASID) % 2 ** this.features.asidBits : ASID_ANY;
        this.iotlb.invVa(vmid, asid, r.start, r.len, r.ttl, r.g);
        break;
      }
      case OP.TLBI_S12_VMALL:
        this.iotlb.invVmid(vmid, false);
        break;
      case OP.TLBI_S2_IPA: {
        const r = tlbiRange(c, true);
        this.iotlb.invIpa(vmid, r.start, r.len, r.ttl, r.g);
        break;
      }
      case OP.TLBI_NSNH_ALL:
        this.iotlb.invAll();
        break;
      default:
        // CMD_SYNC completes at once; ATC_INV has no ATC to clean (device ATCs are not modelled);
        // EL2 TLBIs find no EL2 entries; prefetches are hints.
        break;
    }
  }

  // ---- event queue ---------------------------------------------------------------------

  /** The hardware writes a record; the host's handler decides what happens to it. */
  private recordEvent(words: bigint[]): string {
    const ev: HostEvent = { words, decoded: decodeEvent(words), disposition: 'logged' };
    this.hostEvents.push(ev);
    if (this.hostEvents.length > this.cfg.hostEventLog) this.hostEvents.shift();
    ev.disposition = this.eventHandler ? this.eventHandler(words) : 'logged';
    if (this.t.on) this.t.emit('event', { ...ev.decoded, disposition: ev.disposition });
    return ev.disposition;
  }

  private fail(sid: number, iova: bigint, ssid: number | undefined, write: boolean, priv: boolean, instr: boolean,
    f: WalkFault | ConfigFault, recordFlag: boolean): Translation {
    // CD.R / STE.S2R gate translation faults only; configuration errors and external aborts are always recorded.
    const record = recordFlag || !TRANSLATION_FAULTS.has(f.id);
    const stage = 'stage' in f ? f.stage : undefined;
    const withAddr = stage !== undefined && f.id !== EVT_ID.F_CD_FETCH;
    const wf = f as Partial<WalkFault>;
    const words = buildEvent({
      id: f.id, sid, ssid, priv, instr, read: !write, s2: stage === 2, cls: wf.cls, ttRead: wf.ttRead,
      inputAddr: withAddr ? iova : undefined, ipa: stage === 2 ? wf.ipa : undefined, fetchAddr: wf.fetchAddr,
    });
    const disposition = record ? this.recordEvent(words) : 'not recorded';
    if (this.t.on) this.t.emit('fault', { sid, iova, id: EVT_NAME[f.id], stage, reason: f.reason, recorded: record });
    const detail: SmmuFaultDetail = {
      event: bytesFromWords(words), id: f.id, name: EVT_NAME[f.id] ?? String(f.id), recorded: record, disposition,
      reason: f.reason, level: wf.level,
    };
    return { fault: { kind: FAULT_KIND[f.id] ?? 'config', iova, write, stage, detail } };
  }

  private blocked(iova: bigint, write: boolean, reason: string): Translation {
    const detail: SmmuFaultDetail = { event: null, id: 0, name: 'ABORT', recorded: false, disposition: 'none', reason };
    return { fault: { kind: 'blocked', iova, write, detail } };
  }

  // ---- stage 2 ---------------------------------------------------------------------------

  /**
   * Stage-2 translation of `ipa` needing `need` (PERM bits) for a lookup of
   * class `cls`, through the IOTLB's stage-2 entries. Result in s2pa/s2size.
   */
  private s2(sp: S2Params, ipa: number, need: number, cls: number): WalkFault | null {
    const e = this.iotlb.enabled ? this.iotlb.lookup(sp.vmid, ASID_NONE, ipa, sp.leafSizes) : undefined;
    let perm: number;
    let dev: boolean;
    if (e) {
      perm = e.s2perm;
      dev = e.s2dev;
      this.s2pa = e.pa + (ipa - e.va);
      this.s2size = e.sizeLog2;
      this.s2level = e.s2level;
      this.s2g = e.s2g;
    } else {
      const f = walkS2(sp, ipa, this.s2out, cls, this.t);
      if (f) {
        if (cls !== EVT_CLASS.IN) f.ttRead = true;
        return f;
      }
      const o = this.s2out;
      perm = o.perm;
      dev = o.device;
      this.s2pa = o.oa;
      this.s2size = o.sizeLog2;
      this.s2level = o.level;
      this.s2g = sp.g;
      if (this.iotlb.enabled && (perm & need) === need && !(dev && sp.ptw && cls !== EVT_CLASS.IN)) {
        this.iotlb.insert({
          vmid: sp.vmid, asid: ASID_NONE, va: ipa, sizeLog2: o.sizeLog2, pa: o.oa - (ipa % P2[o.sizeLog2]!),
          ipa: ipa - (ipa % P2[o.sizeLog2]!), s1perm: PERM_ALL, s2perm: perm, level: o.level, g: sp.g,
          s2level: o.level, s2g: sp.g, s2dev: dev,
        });
      }
    }
    this.s2perm = perm;
    if (dev && sp.ptw && cls !== EVT_CLASS.IN) {
      return walkFault(EVT_ID.F_PERMISSION, 2, this.s2level, 'stage-1 walk to Device memory with S2PTW', { cls, ipa, ttRead: true });
    }
    if ((perm & need) !== need) {
      return walkFault(EVT_ID.F_PERMISSION, 2, this.s2level, 'stage-2 permission', { cls, ipa, ttRead: cls !== EVT_CLASS.IN || undefined });
    }
    return null;
  }

  /** Read `n` dwords at `addr` (an IPA when `sp` is given) for a CD fetch. */
  private fetch(sp: S2Params | null, addr: number, n: number): bigint[] | WalkFault {
    let pa = addr;
    if (sp) {
      const f = this.s2(sp, addr, PERM.PR, EVT_CLASS.CD);
      if (f) return f;
      pa = this.s2pa;
    }
    const w = readWords(pa, n);
    if (!w) return walkFault(EVT_ID.F_CD_FETCH, 1, 0, 'CD fetch failed', { fetchAddr: pa });
    return w;
  }

  // ---- configuration ---------------------------------------------------------------------

  private config(sid: number): StreamConfig | ConfigFault {
    const c = this.cfgCache.get(sid);
    if (c) {
      if (this.t.on) this.t.emit('cfgcache', { op: 'hit', sid });
      return c;
    }
    if (this.t.on) this.t.emit('cfgcache', { op: 'miss', sid });
    const r = decodeSte(sid, this.stes.get(sid), this.features, this.t);
    if (!isConfigFault(r)) this.cfgCache.set(r);
    return r;
  }

  /** The CD for SubstreamID `index`, fetched (through stage 2 when nested) and decoded on a miss. */
  private cdFor(sc: StreamConfig, index: number): CdConfig | ConfigFault | WalkFault {
    const hit = sc.cds.get(index);
    if (hit) return hit;
    const s1 = sc.s1!;
    const sp = sc.kind === 'nested' ? sc.s2 : null;
    let cdAddr: number;
    if (s1.cdmax === 0 || s1.fmt === 0) {
      cdAddr = s1.ctxPtr + 64 * index;
    } else {
      // Two-level: L1 descriptors index 64-CD (4 KiB) or 1024-CD (64 KiB) leaf tables.
      const split = s1.fmt === 1 ? 6 : 10;
      const l1 = this.fetch(sp, s1.ctxPtr + 8 * Math.floor(index / 2 ** split), 1);
      if (!Array.isArray(l1)) return l1;
      if (!get(l1, L1CD.V)) return { id: EVT_ID.C_BAD_SUBSTREAMID, reason: 'L1 CD descriptor invalid' };
      cdAddr = Number(get(l1, L1CD.L2PTR) << 12n) + 64 * (index % 2 ** split);
    }
    const words = this.fetch(sp, cdAddr, 8);
    if (!Array.isArray(words)) return words;
    const cd = decodeCd(words, sc, this.features, this.t, index);
    if (!isConfigFault(cd)) sc.cds.set(index, cd);
    return cd;
  }

  // ---- translation -----------------------------------------------------------------------

  /**
   * Translate one access of StreamID `sid` (SubstreamID `ssid`, undefined =
   * none). Returns the physical address or the fault (with the event record).
   */
  translate(sid: number, iova: bigint, ssid: number | undefined, write: boolean, priv: boolean, instr: boolean): Translation {
    let sc = this.cfgCache.peek(sid);
    if (!sc) {
      const r = this.config(sid);
      if (isConfigFault(r)) return this.fail(sid, iova, ssid, write, priv, instr, r, true);
      sc = r;
    }
    const need = needed(write, priv, instr);
    switch (sc.kind) {
      case 'abort':
        return this.blocked(iova, write, 'STE Config = abort: terminated, no event recorded');
      case 'bypass':
        return { phys: Number(iova) };
      case 's2': {
        if (ssid !== undefined) return this.fail(sid, iova, ssid, write, priv, instr, { id: EVT_ID.C_BAD_SUBSTREAMID, reason: 'SubstreamID without stage 1' }, true);
        return this.stage2Only(sc, iova, ssid, write, priv, instr, need);
      }
      default:
        return this.stage1(sc, iova, ssid, write, priv, instr, need);
    }
  }

  private stage2Only(sc: StreamConfig, iova: bigint, ssid: number | undefined, write: boolean, priv: boolean, instr: boolean,
    need: number): Translation {
    const sp = sc.s2!;
    if (iova >= 1n << BigInt(sp.inBits)) {
      return this.fail(sc.sid, iova, ssid, write, priv, instr, walkFault(EVT_ID.F_TRANSLATION, 2, sp.startLevel, 'IPA above the stage-2 input size', { cls: EVT_CLASS.IN, ipa: Number(iova & M48) }), sp.record);
    }
    const f = this.s2(sp, Number(iova), need, EVT_CLASS.IN);
    if (f) return this.fail(sc.sid, iova, ssid, write, priv, instr, f, sp.record);
    return { phys: this.s2pa };
  }

  private stage1(sc: StreamConfig, iova: bigint, ssid: number | undefined, write: boolean, priv: boolean, instr: boolean,
    need: number): Translation {
    const s1 = sc.s1!;
    let index = 0;
    if (ssid !== undefined) {
      if (s1.cdmax === 0 || ssid >= 2 ** s1.cdmax) {
        return this.fail(sc.sid, iova, ssid, write, priv, instr, { id: EVT_ID.C_BAD_SUBSTREAMID, reason: `SubstreamID ${ssid} not valid for S1CDMax ${s1.cdmax}` }, true);
      }
      if (s1.dss === S1DSS.SSID0 && ssid === 0) {
        // CD 0 is reserved for traffic without a SubstreamID.
        return this.fail(sc.sid, iova, ssid, write, priv, instr, { id: EVT_ID.F_STREAM_DISABLED, reason: 'SubstreamID 0 with S1DSS = SSID0' }, true);
      }
      index = ssid;
    } else if (s1.cdmax > 0) {
      if (s1.dss === S1DSS.TERMINATE) {
        return this.fail(sc.sid, iova, ssid, write, priv, instr, { id: EVT_ID.F_STREAM_DISABLED, reason: 'no SubstreamID and S1DSS = terminate' }, true);
      }
      if (s1.dss === S1DSS.BYPASS) {
        // Stage 1 bypassed for traffic without a SubstreamID.
        return sc.kind === 'nested' ? this.stage2Only(sc, iova, ssid, write, priv, instr, need) : { phys: Number(iova) };
      }
    }
    const cdr = this.cdFor(sc, index);
    if (!('regions' in cdr)) {
      const f = cdr as WalkFault | ConfigFault;
      const rec = 'stage' in f && f.stage === 2 ? sc.s2!.record : true;
      return this.fail(sc.sid, iova, ssid, write, priv, instr, f, rec);
    }
    const cd = cdr;

    // TTB0/TTB1 region: the fast path for TTB0 addresses below 2^n0.
    let region = 0;
    let key: number;
    let va: number;
    if (iova < cd.ttb0Limit) {
      key = va = Number(iova);
    } else {
      const sel = this.selectRegion(cd, iova);
      if (typeof sel === 'string') {
        return this.fail(sc.sid, iova, ssid, write, priv, instr, walkFault(EVT_ID.F_TRANSLATION, 1, 0, sel), cd.record);
      }
      region = sel.region;
      va = sel.va;
      key = sel.key;
    }

    const vmid = sc.vmid;
    const nested = sc.kind === 'nested';
    const e = this.iotlb.enabled ? this.iotlb.lookup(vmid, cd.asid, key, cd.probeSizes) : undefined;
    if (e) {
      if ((e.s1perm & need) !== need) {
        return this.fail(sc.sid, iova, ssid, write, priv, instr, walkFault(EVT_ID.F_PERMISSION, 1, e.level, 'stage-1 permission (cached)'), cd.record);
      }
      const off = key - e.va;
      if ((e.s2perm & need) !== need) {
        return this.fail(sc.sid, iova, ssid, write, priv, instr, walkFault(EVT_ID.F_PERMISSION, 2, e.s2level, 'stage-2 permission (cached)', { cls: EVT_CLASS.IN, ipa: e.ipa + off }), sc.s2!.record);
      }
      return { phys: e.pa + off };
    }

    const r = cd.regions[region]!;
    this.curS2 = nested ? sc.s2 : null;
    const out = this.out;
    const f = walkS1(cd, r, va, out, nested ? this.readNested : this.readDirect, this.tmp, this.t);
    if (f) return this.fail(sc.sid, iova, ssid, write, priv, instr, f, f.stage === 2 ? sc.s2!.record : cd.record);
    if ((out.perm & need) !== need) {
      return this.fail(sc.sid, iova, ssid, write, priv, instr, walkFault(EVT_ID.F_PERMISSION, 1, out.level, 'stage-1 permission'), cd.record);
    }
    const s1size = out.sizeLog2;
    const s1level = out.level;
    const s1perm = out.perm;
    const global = out.global;
    const ipa = out.oa;
    let pa = ipa;
    let size = s1size;
    let s2perm = PERM_ALL;
    let s2level = 0;
    let s2g = 0;
    if (nested) {
      const sp = sc.s2!;
      const f2 = this.s2(sp, ipa, need, EVT_CLASS.IN);
      if (f2) return this.fail(sc.sid, iova, ssid, write, priv, instr, f2, sp.record);
      pa = this.s2pa;
      size = Math.min(s1size, this.s2size);
      s2perm = this.s2perm;
      s2level = this.s2level;
      s2g = this.s2g;
    }
    const off = key % P2[size]!;
    if (this.iotlb.enabled) this.iotlb.insert({
      vmid, asid: global ? ASID_GLOBAL : cd.asid, va: key, sizeLog2: size, pa: pa - off, ipa: ipa - off, s1perm, s2perm,
      level: s1level, g: r.g, s2level, s2g, s2dev: false,
    });
    if (this.t.on) this.t.emit('translate', { sid: sc.sid, iova, ipa: nested ? ipa : undefined, pa });
    return { phys: pa };
  }

  /** TTB0/TTB1 selection with TBI (spec 04 §5.4); a string is the translation-fault reason. */
  private selectRegion(cd: CdConfig, iova: bigint): { region: number; va: number; key: number } | string {
    const t = Number((iova >> 55n) & 1n);
    let v = iova & ((1n << 64n) - 1n);
    if (cd.tbi[t]) v = (v & ((1n << 56n) - 1n)) | (t ? 0xffn << 56n : 0n);
    const n = cd.inBits[t]!;
    const top = v >> BigInt(n);
    if (t === 0 ? top !== 0n : top !== (1n << BigInt(64 - n)) - 1n) return 'input address outside both TTB regions';
    if (!cd.regions[t]) return `TTB${t} region disabled (EPD${t} = 1)`;
    const low = Number(v & M48);
    return { region: t, va: low % P2[n]!, key: low + (t ? REGION1 : 0) };
  }
}

export { ASID_GLOBAL, ASID_NONE };
