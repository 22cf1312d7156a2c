// The IOTLB: leaf translations tagged {VMID, ASID | GLOBAL | NONE, input base,
// size}, a bounded LRU (an intrusive list: O(1) hit, insert and evict).
// Stage-1 and nested entries carry both stages' permissions (so a denial can
// be attributed to the right stage) and the IPA; stage-2-only entries
// (ASID = NONE) serve bypass/S2 streams and the stage-2 lookups of nested
// table walks. Entries change only through the invalidations below: a stale
// entry stays until the command that covers it.
import type { SmmuTracer } from './trace.js';

/** Entry from a nG = 0 stage-1 leaf: matches every ASID of its VMID. */
export const ASID_GLOBAL = 0x10000;
/** Stage-2-only entry (no stage 1). */
export const ASID_NONE = 0x10001;
/** Invalidation wildcard: every ASID (NH_VAA). */
export const ASID_ANY = -1;

/** Input-address keys: bit 48 set for the TTB1 region, then the low 48 bits. */
export const REGION1 = 2 ** 48;

const P2 = Array.from({ length: 65 }, (_, i) => 2 ** i);

export class TlbEntry {
  prev: TlbEntry | null = null;
  next: TlbEntry | null = null;
  ctxKey = 0;
  pageKey = 0;
  vmid = 0;
  asid = 0;
  /** Input base (with REGION1 for TTB1 addresses). */
  va = 0;
  sizeLog2 = 0;
  /** Output (physical) base. */
  pa = 0;
  /** IPA base (= va for stage-2-only entries). */
  ipa = 0;
  s1perm = 0;
  s2perm = 0;
  /** Level and granule of the stage-1 leaf (TTL matching); stage 2 for S2-only entries. */
  level = 0;
  g = 0;
  /** Stage-2 leaf level/granule (TLBI_S2_IPA TTL matching on S2-only entries). */
  s2level = 0;
  s2g = 0;
  /** The stage-2 leaf maps Device memory (S2PTW). */
  s2dev = false;
}

export interface TlbInsert {
  vmid: number;
  asid: number;
  va: number;
  sizeLog2: number;
  pa: number;
  ipa: number;
  s1perm: number;
  s2perm: number;
  level: number;
  g: number;
  s2level: number;
  s2g: number;
  s2dev: boolean;
}

export class Iotlb {
  private readonly ctx = new Map<number, Map<number, TlbEntry>>();
  /** Most recently used first. */
  private head: TlbEntry | null = null;
  private tail: TlbEntry | null = null;
  size = 0;
  hits = 0;
  misses = 0;

  constructor(readonly capacity: number, readonly t: SmmuTracer) {}

  private static ctxKey(vmid: number, asid: number): number {
    return vmid * 0x20000 + asid;
  }

  private static pageKey(va: number, sizeLog2: number): number {
    return Math.floor(va / P2[sizeLog2]!) * 64 + sizeLog2;
  }

  private unlink(e: TlbEntry): void {
    if (e.prev) e.prev.next = e.next;
    else this.head = e.next;
    if (e.next) e.next.prev = e.prev;
    else this.tail = e.prev;
    e.prev = e.next = null;
  }

  private pushFront(e: TlbEntry): void {
    e.next = this.head;
    e.prev = null;
    if (this.head) this.head.prev = e;
    this.head = e;
    if (!this.tail) this.tail = e;
  }

  private probe(ctxKey: number, va: number, sizes: readonly number[]): TlbEntry | undefined {
    const m = this.ctx.get(ctxKey);
    if (!m) return undefined;
    for (let i = 0; i < sizes.length; i++) {
      const s = sizes[i]!;
      const e = m.get(Math.floor(va / P2[s]!) * 64 + s);
      if (e) return e;
    }
    return undefined;
  }

  /**
   * The entry translating `va` under (vmid, asid), probing each candidate leaf
   * size; a real ASID also matches GLOBAL entries. Refreshes its LRU position.
   */
  lookup(vmid: number, asid: number, va: number, sizes: readonly number[]): TlbEntry | undefined {
    let e = this.probe(Iotlb.ctxKey(vmid, asid), va, sizes);
    if (!e && asid < ASID_GLOBAL) e = this.probe(Iotlb.ctxKey(vmid, ASID_GLOBAL), va, sizes);
    if (!e) {
      this.misses++;
      if (this.t.on) this.t.emit('iotlb', { op: 'miss', vmid, asid: asidName(asid), va });
      return undefined;
    }
    this.hits++;
    if (e !== this.head) {
      this.unlink(e);
      this.pushFront(e);
    }
    if (this.t.on) this.t.emit('iotlb', { op: 'hit', vmid, asid: asidName(e.asid), va, base: e.va, size: 2 ** e.sizeLog2, pa: e.pa });
    return e;
  }

  /** Insert a translation (null when the IOTLB has no capacity: nothing is cached). */
  insert(x: TlbInsert): TlbEntry | null {
    if (this.capacity <= 0) return null;
    const ctxKey = Iotlb.ctxKey(x.vmid, x.asid);
    const va = Math.floor(x.va / P2[x.sizeLog2]!) * P2[x.sizeLog2]!;
    const pageKey = Iotlb.pageKey(va, x.sizeLog2);
    let m = this.ctx.get(ctxKey);
    if (!m) {
      m = new Map();
      this.ctx.set(ctxKey, m);
    }
    const old = m.get(pageKey);
    if (old) this.remove(old, 'replace');
    while (this.size >= this.capacity && this.tail) this.remove(this.tail, 'evict');
    if (!this.ctx.has(ctxKey)) this.ctx.set(ctxKey, m);
    const e = new TlbEntry();
    e.vmid = x.vmid;
    e.asid = x.asid;
    e.va = va;
    e.sizeLog2 = x.sizeLog2;
    e.pa = x.pa;
    e.ipa = x.ipa;
    e.s1perm = x.s1perm;
    e.s2perm = x.s2perm;
    e.level = x.level;
    e.g = x.g;
    e.s2level = x.s2level;
    e.s2g = x.s2g;
    e.s2dev = x.s2dev;
    e.ctxKey = ctxKey;
    e.pageKey = pageKey;
    m.set(pageKey, e);
    this.pushFront(e);
    this.size++;
    if (this.t.on) this.t.emit('iotlb', { op: 'insert', vmid: e.vmid, asid: asidName(e.asid), va: e.va, size: 2 ** e.sizeLog2, pa: e.pa });
    return e;
  }

  /** Cached translations are kept at all. */
  get enabled(): boolean {
    return this.capacity > 0;
  }

  private remove(e: TlbEntry, why: string): void {
    const m = this.ctx.get(e.ctxKey);
    if (m?.get(e.pageKey) === e) {
      m.delete(e.pageKey);
      if (!m.size) this.ctx.delete(e.ctxKey);
    }
    this.unlink(e);
    this.size--;
    if (this.t.on) this.t.emit('iotlb', { op: why, vmid: e.vmid, asid: asidName(e.asid), va: e.va, size: 2 ** e.sizeLog2 });
  }

  /** Remove every entry `pred` selects; returns how many went. */
  private invWhere(op: string, pred: (e: TlbEntry) => boolean): number {
    let n = 0;
    for (let e = this.head; e;) {
      const next = e.next;
      if (pred(e)) {
        this.remove(e, `inv:${op}`);
        n++;
      }
      e = next;
    }
    return n;
  }

  /** Everything (TLBI_NSNH_ALL on the host queue). */
  invAll(): number {
    return this.invWhere('all', () => true);
  }

  /** Every entry of `vmid` (S12_VMALL), or only those with stage-1 information (NH_ALL). */
  invVmid(vmid: number, stage1Only: boolean): number {
    return this.invWhere(stage1Only ? 'nh_all' : 's12_vmall', (e) => e.vmid === vmid && (!stage1Only || e.asid !== ASID_NONE));
  }

  /** (vmid, asid) entries, global ones excepted (NH_ASID). */
  invAsid(vmid: number, asid: number): number {
    return this.invWhere('nh_asid', (e) => e.vmid === vmid && e.asid === asid);
  }

  /**
   * Stage-1 entries overlapping [start, start+len) (NH_VA with an ASID, which
   * also hits global entries; NH_VAA with ASID_ANY). With a TTL hint only
   * leaves of that level in granule `g` are covered.
   */
  invVa(vmid: number, asid: number, start: number, len: number, ttl: number, g: number): number {
    return this.invWhere(asid === ASID_ANY ? 'nh_vaa' : 'nh_va', (e) =>
      e.vmid === vmid && e.asid !== ASID_NONE && (asid === ASID_ANY || e.asid === asid || e.asid === ASID_GLOBAL) &&
      overlaps(e.va, e.sizeLog2, start, len) && (ttl === 0 || (e.level === ttl && e.g === g)));
  }

  /** Stage-2-only entries overlapping the IPA range (TLBI_S2_IPA); combined entries are not touched. */
  invIpa(vmid: number, start: number, len: number, ttl: number, g: number): number {
    return this.invWhere('s2_ipa', (e) =>
      e.vmid === vmid && e.asid === ASID_NONE && overlaps(e.va, e.sizeLog2, start, len) &&
      (ttl === 0 || (e.s2level === ttl && e.s2g === g)));
  }

  /** Snapshot for tests and the inspector. */
  entries(): TlbEntry[] {
    const out: TlbEntry[] = [];
    for (let e = this.head; e; e = e.next) out.push(e);
    return out;
  }
}

function overlaps(base: number, sizeLog2: number, start: number, len: number): boolean {
  return base < start + len && start < base + P2[sizeLog2]!;
}

export function asidName(asid: number): string | number {
  return asid === ASID_GLOBAL ? 'global' : asid === ASID_NONE ? 'none' : asid;
}
