// Test rig for the SMMUv3 tests: an emulator with one SMMU and masters bound
// to a context (deviceBind on SMMU DriverDevices), guest memory mapped through
// an IOAS (IPA = IOVA of the nest parent), guest tables and CDs written into
// it, vSTE / command / event encoders.
import assert from 'node:assert/strict';
import { IommuFd, openIommufd, type MapArgs } from '../../api.js';
import { deviceBind, deviceAttach, type Device } from '../../core/device.js';
import { Emulator } from '../../core/emulator.js';
import { HwptNested, HwptPaging } from '../../core/hwpt.js';
import { ObjType } from '../../core/object.js';
import type { SimMemory } from '../../core/simmem.js';
import { PAGE_SIZE } from '../../core/usermem.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import type { ProfileName } from '../../uapi/profiles.js';
import type { DmaRequest, Translation } from '../driver.js';
import { ArmSmmuDevice, ArmSmmuV3Driver, SmmuMaster, smmuDriverOf, type SmmuOptions } from './index.js';
import { cmd } from './cmdq.js';
import { decodeEvent, type DecodedEvent } from './event.js';
import { D, readDesc, TableAllocator, writeDesc } from './mem.js';
import { LpaeTable, PROT, type TableMemory } from './pgtable.js';
import {
  HWPT_DATA_ARM_SMMUV3, VEVENTQ_TYPE_ARM_SMMUV3, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3,
} from './profile.js';
import { build, bytesFromWords, CD, OP, STE, STE_CONFIG, wordsFromBytes } from './regs.js';
import type { SmmuFaultDetail } from './smmu.js';

export { cmd, OP, PROT, HWPT_DATA_ARM_SMMUV3, VEVENTQ_TYPE_ARM_SMMUV3, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3 };

export interface Rig {
  emu: Emulator;
  fd: IommuFd & { readonly mem: SimMemory };
  drv: ArmSmmuV3Driver;
  smmu: ArmSmmuDevice;
  master: SmmuMaster;
  idev: Device;
  devId: number;
}

export interface RigOptions {
  profile?: ProfileName;
  smmu?: SmmuOptions;
  sids?: number[];
  canwbs?: boolean;
}

/** One SMMU, one master (StreamID 0x10 unless told), bound to a fresh context. */
export function rig(o: RigOptions = {}): Rig {
  const emu = new Emulator({ profile: o.profile ?? 'mainline' });
  const fd = openIommufd({ emu });
  const drv = smmuDriverOf(emu);
  const smmu = drv.addSmmu(o.smmu ?? {});
  const master = drv.addMaster(smmu, { sids: o.sids ?? [0x10], canwbs: o.canwbs });
  const idev = deviceBind(fd.ctx, master);
  return { emu, fd, drv, smmu, master, idev, devId: idev.id };
}

/** Another master on the rig's SMMU (or another SMMU), bound to the rig's context. */
export function addDevice(r: Rig, sids: number[], smmu = r.smmu, canwbs?: boolean): { master: SmmuMaster; idev: Device; devId: number } {
  const master = r.drv.addMaster(smmu, { sids, canwbs });
  const idev = deviceBind(r.fd.ctx, master);
  return { master, idev, devId: idev.id };
}

/** What GuestRam needs of its process: its memory and IOAS_MAP (an IommuFd, or a test process's iommufd). */
export interface GuestRamHost {
  readonly mem: SimMemory;
  ioasMap(a: MapArgs): bigint;
}

/** Guest physical memory: user memory mapped at IPA `base` in an IOAS; a bump allocator for tables. */
export class GuestRam implements TableMemory {
  readonly va: bigint;
  private next: number;

  constructor(readonly fd: GuestRamHost, readonly ioasId: number, readonly base: number,
    readonly size: number, o: { readOnly?: boolean } = {}) {
    this.va = fd.mem.mmap(size, { shared: true });
    fd.ioasMap({ ioasId, userVa: this.va, length: BigInt(size), iova: BigInt(base), flags: o.readOnly ? 4 : 6 });
    this.next = base;
  }

  private vaOf(ipa: number): bigint {
    if (ipa < this.base || ipa >= this.base + this.size) throw new Error(`IPA 0x${ipa.toString(16)} outside guest RAM`);
    return this.va + BigInt(ipa - this.base);
  }

  alloc(bytes: number): number {
    const align = Math.max(bytes, PAGE_SIZE);
    const a = Math.ceil(this.next / align) * align;
    if (a + bytes > this.base + this.size) throw new Error('guest RAM exhausted');
    this.next = a + bytes;
    this.fd.mem.write(this.vaOf(a), new Uint8Array(bytes));
    return a;
  }

  free(): void {}

  read(ipa: number): void {
    const b = this.fd.mem.read(this.vaOf(ipa), 8);
    const dv = new DataView(b.buffer, b.byteOffset, 8);
    D.lo = dv.getUint32(0, true);
    D.hi = dv.getUint32(4, true);
  }

  write(ipa: number, lo: number, hi: number): void {
    const b = new Uint8Array(8);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, lo >>> 0, true);
    dv.setUint32(4, hi >>> 0, true);
    this.fd.mem.write(this.vaOf(ipa), b);
  }

  write64(ipa: number, v: bigint): void {
    this.write(ipa, Number(v & 0xffffffffn), Number(v >> 32n));
  }

  read64(ipa: number): bigint {
    this.read(ipa);
    return (BigInt(D.hi) << 32n) | BigInt(D.lo);
  }

  writeWords(ipa: number, w: readonly bigint[]): void {
    this.fd.mem.write(this.vaOf(ipa), bytesFromWords(w));
  }

  /** Host physical address of `ipa` (the page must be pinned, i.e. the IOAS mapped into a domain). */
  pa(ipa: number): number {
    const va = this.vaOf(ipa);
    const pageVa = va - (va % BigInt(PAGE_SIZE));
    const [p] = this.fd.mem.getPages(pageVa, 1, false);
    return p!.pfn * PAGE_SIZE + Number(va % BigInt(PAGE_SIZE));
  }

  /** A guest stage-1 table in this RAM. */
  table(g: number, ias: number, oas = 48): LpaeTable {
    return new LpaeTable(this, { stage: 1, g, ias, oas });
  }
}

/** A guest CD the way Linux writes one (spec 04 §5.2), with overrides. */
export function guestCd(t: LpaeTable, asid: number, over: Record<string, bigint | number | boolean> = {}): bigint[] {
  const tcr = t.tcr;
  const w = build(CD, 8, {
    T0SZ: tcr.t0sz, TG0: tcr.tg0, IR0: 1, OR0: 1, SH0: 3, EPD1: 1, V: 1, IPS: tcr.ips, AA64: 1, R: 1, A: 1, ASET: 1,
    ASID: asid, ...over,
  });
  if (!('TTB0' in over)) w[1] = w[1]! | BigInt(t.root);
  return w;
}

/** vSTE words: S1 translate with the CD at `ctxPtr`, or another Config. */
export function vste(o: { cfg?: number; ctxPtr?: number; s1fmt?: number; cdmax?: number; v?: boolean; dw1?: Record<string, number> } = {}): [bigint, bigint] {
  const w = build(STE, 2, {
    V: o.v ?? true, CONFIG: o.cfg ?? STE_CONFIG.S1_TRANS, S1FMT: o.s1fmt ?? 0, S1CDMAX: o.cdmax ?? 0, ...(o.dw1 ?? {}),
  });
  w[0] = w[0]! | BigInt(o.ctxPtr ?? 0);
  return [w[0]!, w[1]!];
}

export function vsteBytes(s: readonly bigint[]): Uint8Array {
  return bytesFromWords(s);
}

export function cmdBytes(c: readonly bigint[]): Uint8Array {
  return bytesFromWords(c);
}

/** The usual accel=on sequence up to a vIOMMU and a vDEVICE. */
export interface Nest {
  ioas: number;
  parent: number;
  viommu: number;
  vdev: number;
  ram: GuestRam;
  vsid: bigint;
}

export function nestSetup(r: Rig, o: { ramBase?: number; ramSize?: number; vsid?: bigint } = {}): Nest {
  const ioas = r.fd.ioasAlloc();
  const parent = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
  const ram = new GuestRam(r.fd, ioas, o.ramBase ?? 0x4000_0000, o.ramSize ?? 4 << 20);
  const { viommuId } = r.fd.viommuAlloc({ devId: r.devId, hwptId: parent, type: VIOMMU_TYPE_ARM_SMMUV3 });
  const vsid = o.vsid ?? 0x77n;
  const vdev = r.fd.vdeviceAlloc(viommuId, r.devId, vsid);
  return { ioas, parent, viommu: viommuId, vdev, ram, vsid };
}

/** HWPT_ALLOC of a nested HWPT on the vIOMMU from a vSTE. */
export function nestedHwpt(r: Rig, n: Nest, s: readonly bigint[], devId = r.devId): number {
  return r.fd.hwptAlloc({ devId, ptId: n.viommu, dataType: HWPT_DATA_ARM_SMMUV3, data: vsteBytes(s) });
}

export function attach(r: Rig, hwptId: number, idev = r.idev): void {
  deviceAttach(idev, undefined, hwptId);
}

/** One DMA access through the device's attachment (the contract h9's engine uses). */
export function dma(r: Rig, iova: bigint, o: { write?: boolean; pasid?: number; priv?: boolean; instr?: boolean; idev?: Device } = {}): Translation {
  const idev = o.idev ?? r.idev;
  const att = idev.attachment(0);
  const req: DmaRequest = {
    dev: idev.dev, iova, length: 8, write: !!o.write, pasid: o.pasid, privileged: o.priv, instruction: o.instr,
  };
  if (!att) throw new Error('device not attached');
  const t = att.hwpt.domain.translate?.(req);
  if (!t) throw new Error('domain cannot translate');
  return t;
}

export function physOf(t: Translation): number {
  if ('fault' in t) throw new Error(`expected a translation, got ${t.fault.kind}: ${(t.fault.detail as SmmuFaultDetail)?.reason}`);
  return t.phys;
}

export function faultOf(t: Translation): { kind: string; detail: SmmuFaultDetail; event: DecodedEvent | null; stage?: number } {
  if (!('fault' in t)) throw new Error(`expected a fault, got phys 0x${t.phys.toString(16)}`);
  const d = t.fault.detail as SmmuFaultDetail;
  return { kind: t.fault.kind, detail: d, event: d.event ? decodeEvent(wordsFromBytes(d.event)) : null, stage: t.fault.stage };
}

/** HWPT_INVALIDATE on the vIOMMU with guest commands; returns entry_num or the errno with `.handled`. */
export function invalidate(r: Rig, n: Nest, cmds: readonly (readonly bigint[])[]): number {
  return r.fd.hwptInvalidate(n.viommu, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 16, cmds.map(cmdBytes));
}

export interface ReadEvent {
  flags: number;
  seq: number;
  evt: DecodedEvent | null;
  raw: Uint8Array;
}

/** Read and split a vEVENTQ fd's records (8-byte header + 32-byte ARM record, or a bare LOST header). */
export function readEvents(r: Rig, fdNo: number, count = 4096): ReadEvent[] {
  const b = r.fd.readFd(fdNo, count);
  const out: ReadEvent[] = [];
  let off = 0;
  while (off < b.length) {
    const dv = new DataView(b.buffer, b.byteOffset + off);
    const flags = dv.getUint32(0, true);
    const seq = dv.getUint32(4, true);
    if (flags & 1) {
      out.push({ flags, seq, evt: null, raw: b.slice(off, off + 8) });
      off += 8;
      continue;
    }
    const raw = b.slice(off + 8, off + 40);
    out.push({ flags, seq, evt: decodeEvent(wordsFromBytes(raw)), raw });
    off += 40;
  }
  return out;
}

export function hwptPaging(r: Rig, id: number): HwptPaging {
  return r.fd.ctx.get<HwptPaging>(id, ObjType.HWPT_PAGING);
}

export function hwptNested(r: Rig, id: number): HwptNested {
  return r.fd.ctx.get<HwptNested>(id, ObjType.HWPT_NESTED);
}

/** A TLBI command with an address in bytes (the ADDR field holds bits 63:12). */
export function tlbi(op: number, o: { asid?: number; vmid?: number; addr?: bigint; num?: number; scale?: number; tg?: number; ttl?: number; leaf?: boolean } = {}): bigint[] {
  return cmd.make(op, {
    ASID: o.asid ?? 0, VMID: o.vmid ?? 0, ADDR: (o.addr ?? 0n) >> 12n, NUM: o.num ?? 0, SCALE: o.scale ?? 0, TG: o.tg ?? 0,
    TTL: o.ttl ?? 0, TLBI_LEAF: o.leaf ? 1 : 0,
  });
}

export function assertFault(t: Translation, id: number, o: { stage?: number; cls?: number; ipa?: bigint; recorded?: boolean } = {}): DecodedEvent {
  const f = faultOf(t);
  assert.equal(f.detail.id, id, `fault ${f.detail.name} (${f.detail.reason}) instead of 0x${id.toString(16)}`);
  const e = f.event!;
  if (o.stage !== undefined) assert.equal(e.s2, o.stage === 2, 'S2 bit');
  if (o.cls !== undefined) assert.equal(e.cls, o.cls, 'CLASS');
  if (o.ipa !== undefined) assert.equal(e.ipa, o.ipa, 'IPA');
  if (o.recorded !== undefined) assert.equal(f.detail.recorded, o.recorded, 'recorded');
  return e;
}

export { PAGE_SIZE, STE_CONFIG };

// ---- direct hardware programming (walker tests without the uAPI) -------------------------

/** A contiguous 2 MiB run of driver-owned physical memory with a bump allocator; addresses are PAs. */
export class PhysRam implements TableMemory {
  readonly base: number;
  private next: number;
  constructor(readonly tables = new TableAllocator(), readonly size = 2 << 20) {
    this.base = tables.alloc(size);
    this.next = this.base;
  }
  alloc(bytes: number): number {
    const align = Math.max(bytes, 64);
    const a = Math.ceil(this.next / align) * align;
    if (a + bytes > this.base + this.size) throw new Error('PhysRam exhausted');
    this.next = a + bytes;
    for (let o = 0; o < bytes; o += 8) writeDesc(a + o, 0, 0);
    return a;
  }
  free(): void {}
  read(pa: number): void {
    if (!readDesc(pa)) throw new Error('PhysRam read outside memory');
  }
  write(pa: number, lo: number, hi: number): void {
    if (!writeDesc(pa, lo, hi)) throw new Error('PhysRam write outside memory');
  }
  writeWords(pa: number, w: readonly bigint[]): void {
    w.forEach((v, i) => this.write(pa + 8 * i, Number(v & 0xffffffffn), Number(v >> 32n)));
  }
  release(): void {
    this.tables.freeAll();
  }
}

/** IPA view of a PhysRam: IPA = PA - base + ipaBase (what a linear stage 2 gives). */
export class IpaView implements TableMemory {
  private next: number;
  constructor(readonly ram: PhysRam, readonly ipaBase: number, readonly offset: number, readonly size: number) {
    this.next = ipaBase;
  }
  pa(ipa: number): number {
    return ipa - this.ipaBase + this.ram.base + this.offset;
  }
  alloc(bytes: number): number {
    const align = Math.max(bytes, 64);
    const a = Math.ceil(this.next / align) * align;
    if (a + bytes > this.ipaBase + this.size) throw new Error('IpaView exhausted');
    this.next = a + bytes;
    for (let o = 0; o < bytes; o += 8) this.ram.write(this.pa(a + o), 0, 0);
    return a;
  }
  free(): void {}
  read(ipa: number): void {
    this.ram.read(this.pa(ipa));
  }
  write(ipa: number, lo: number, hi: number): void {
    this.ram.write(this.pa(ipa), lo, hi);
  }
  writeWords(ipa: number, w: readonly bigint[]): void {
    this.ram.writeWords(this.pa(ipa), w);
  }
}

/**
 * The spec's level arithmetic, written independently of pgtable.ts (spec 04
 * §5.5 table): shift of each level per granule.
 */
export const SPEC_SHIFT: Readonly<Record<number, readonly number[]>> = { 12: [39, 30, 21, 12], 14: [47, 36, 25, 14], 16: [55, 42, 29, 16] };

export function specStartLevel(g: number, n: number): number {
  return 4 - Math.floor((n - 4) / (g - 3));
}

/**
 * Write the descriptors mapping `va` -> `oa` with a leaf at `leafLevel` into
 * tables rooted at `root` (allocating next-level tables in `mem`). `start`
 * and `n` give the start level and input bits (start-level index = the bits
 * of the input above that level's shift: concatenated tables for stage 2).
 */
export function specMap(mem: TableMemory, root: number, g: number, n: number, start: number, va: number, oa: number,
  leafLevel: number, attrLo: number, attrHi = 0): void {
  let table = root;
  for (let l = start; l <= leafLevel; l++) {
    const shift = SPEC_SHIFT[g]![l]!;
    const bits = l === start ? n - shift : g - 3;
    const idx = Math.floor(va / 2 ** shift) % 2 ** bits;
    const addr = table + 8 * idx;
    if (l === leafLevel) {
      const base = Math.floor(oa / 2 ** shift) * 2 ** shift;
      mem.write(addr, ((base % 2 ** 32) | attrLo | (l === 3 ? 3 : 1)) >>> 0, (Math.floor(base / 2 ** 32) | attrHi) >>> 0);
      return;
    }
    mem.read(addr);
    if (D.lo & 1) {
      table = (D.hi & 0xffff) * 2 ** 32 + ((D.lo & ~(2 ** g - 1)) >>> 0);
    } else {
      const t = mem.alloc(2 ** g);
      mem.write(addr, ((t % 2 ** 32) | 3) >>> 0, Math.floor(t / 2 ** 32));
      table = t;
    }
  }
}

/** Bytes of a start-level table with `bits` index bits. */
export const startTableBytes = (g: number, n: number, start: number): number => 8 * 2 ** (n - SPEC_SHIFT[g]![start]!);

export const S1_LEAF = 0x400 | 0x300 | 0x40 | 0x800; // AF | SH inner | AP[1] (EL0 access) | nG
export const S2_LEAF = 0x400 | 0x300 | 0xc0 | (0xf << 2); // AF | SH inner | S2AP read+write | MemAttr normal WB

export const TG0_ENC: Readonly<Record<number, number>> = { 12: 0, 16: 1, 14: 2 };

export function s2SteWords(o: { g: number; inBits: number; start: number; ttb: number; vmid?: number; affd?: boolean; record?: boolean; ptw?: boolean; ps?: number }): bigint[] {
  const sl0 = (o.g === 12 ? 2 : 3) - o.start;
  const w = build(STE, 8, {
    V: 1, CONFIG: STE_CONFIG.S2_TRANS, S2VMID: o.vmid ?? 1, S2T0SZ: 64 - o.inBits, S2SL0: sl0, S2TG: TG0_ENC[o.g]!,
    S2PS: o.ps ?? 5, S2AA64: 1, S2R: o.record ?? true ? 1 : 0, S2AFFD: o.affd ? 1 : 0, S2PTW: o.ptw ? 1 : 0,
  });
  w[3] = BigInt(o.ttb);
  return w;
}

export function cdWords(o: { g: number; n: number; ttb: number; asid?: number; ips?: number; over?: Record<string, bigint | number | boolean> }): bigint[] {
  const w = build(CD, 8, {
    T0SZ: 64 - o.n, TG0: TG0_ENC[o.g]!, EPD1: 1, V: 1, IPS: o.ips ?? 5, AA64: 1, R: 1, A: 1, ASET: 1, ASID: o.asid ?? 1,
    ...(o.over ?? {}),
  });
  w[1] = w[1]! | BigInt(o.ttb);
  return w;
}

/** Program StreamID `sid` of the rig's SMMU directly (a stream with no master) and make the SMMU see it. */
export function programSte(smmu: ArmSmmuDevice, sid: number, ste: readonly bigint[]): void {
  if (!smmu.hw.readSte(sid)) smmu.hw.addStream(sid);
  smmu.hw.writeSte(sid, ste);
  smmu.hw.issue([cmd.make(OP.CFGI_STE, { SID: sid })]);
}
