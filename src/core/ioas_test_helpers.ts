// Raw-entry helpers for the IOAS / access / VFIO-compat tests: every struct is
// laid out with encode() from the uAPI table at a user address of a SimMemory
// and passed to IommufdCtx.ioctl(request, addr, caller), as a C program would.
import { isErrno, type ErrnoName } from '../uapi/errno.js';
import { TEST_OP } from '../uapi/enums.js';
import { IO, IOCTL_BY_NAME, type IoctlName } from '../uapi/ioctls.js';
import { decode, encode, encodeInto, structSize, type Decoded, type StructDef } from '../uapi/layout.js';
import type { ProfileName } from '../uapi/profiles.js';
import * as S from '../uapi/structs.js';
import type { Caller, IommufdCtx } from './context.js';
import { Emulator } from './emulator.js';
import { SimpleFdTable } from './file.js';
import { defaultProcess, SimMemory } from './simmem.js';
import { TEST_OP_VIEWS } from './selftest.js';
import { PAGE_SIZE, type ProcessInfo } from './usermem.js';
import './main.js';

export const U64_MAX = (1n << 64n) - 1n;
export const PS = BigInt(PAGE_SIZE);
export const MAP_RW = 2 | 4;
export const FIXED = 1;

export interface Env {
  emu: Emulator;
  mem: SimMemory;
  fds: SimpleFdTable;
  caller: Caller;
  ctx: IommufdCtx;
  profile: ProfileName;
}

export function env(profile: ProfileName = 'mainline', proc: Partial<ProcessInfo> = {}, emu?: Emulator): Env {
  const e = emu ?? new Emulator({ profile });
  const mem = new SimMemory(defaultProcess(proc));
  const fds = new SimpleFdTable();
  const caller = { mem, fds };
  const ctx = e.open(mem);
  return { emu: e, mem, fds, caller, ctx, profile };
}

/** Run `fn`; the errno name it threw, or 0. Non-errno exceptions propagate (emulator bugs). */
export function errOf(fn: () => unknown): ErrnoName | 0 {
  try {
    fn();
    return 0;
  } catch (e) {
    if (isErrno(e)) return e.code;
    throw e;
  }
}

export interface RawOut<T> {
  out: T;
  ret: number;
  addr: bigint;
}

/** Issue ioctl `name` with `v` laid out as struct `s` (size = the profile's sizeof unless given). */
export function raw<T extends StructDef>(e: Env, name: IoctlName, s: T, v: Partial<Decoded<T>>, size?: number,
  fill = 0): RawOut<Decoded<T>> {
  const def = IOCTL_BY_NAME.get(name)!;
  const n = size ?? structSize(s, e.emu.profile.version);
  const addr = e.mem.alloc(Math.max(n, 64));
  const buf = new Uint8Array(Math.max(n, 64)).fill(fill);
  buf.fill(0, 0, n);
  encodeInto(s, { ...v, size: v.size ?? n } as Record<string, unknown>, buf.subarray(0, Math.max(n, 4)), e.emu.profile.version);
  e.mem.write(addr, buf);
  const ret = e.ctx.ioctl(IO(def.nr), addr, e.caller);
  const back = new Uint8Array(Math.max(structSize(s), n));
  back.set(e.mem.read(addr, back.length));
  return { out: decode(s, back, e.emu.profile.version), ret, addr };
}

/** The struct bytes as user memory holds them after a call that may have failed. */
export function rawErr<T extends StructDef>(e: Env, name: IoctlName, s: T, v: Partial<Decoded<T>>, size?: number):
  { err: ErrnoName | 0; out: Decoded<T>; bytes: Uint8Array } {
  const def = IOCTL_BY_NAME.get(name)!;
  const n = size ?? structSize(s, e.emu.profile.version);
  const addr = e.mem.alloc(Math.max(n, 64));
  const buf = new Uint8Array(Math.max(n, 64));
  encodeInto(s, { ...v, size: v.size ?? n } as Record<string, unknown>, buf.subarray(0, Math.max(n, 4)), e.emu.profile.version);
  e.mem.write(addr, buf);
  const err = errOf(() => e.ctx.ioctl(IO(def.nr), addr, e.caller));
  const bytes = e.mem.read(addr, buf.length);
  return { err, out: decode(s, bytes, e.emu.profile.version), bytes };
}

/** IOMMU_TEST_CMD with the op's union member; returns the union after the call (throws the errno). */
export function testCmd(e: Env, op: number, id: number, u: Record<string, unknown> = {}): any {
  const view = TEST_OP_VIEWS[op];
  const addr = e.mem.alloc(S.IOMMU_TEST_CMD_SIZE);
  const buf = encode(S.iommu_test_cmd, { size: S.IOMMU_TEST_CMD_SIZE, op, id }, Infinity, S.IOMMU_TEST_CMD_SIZE);
  if (view) encodeInto(view, u, buf);
  e.mem.write(addr, buf);
  e.ctx.ioctl(IO(0xa0), addr, e.caller);
  return view ? decode(view, e.mem.read(addr, S.IOMMU_TEST_CMD_SIZE)) : {};
}

export function ioasAlloc(e: Env): number {
  return raw(e, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out.out_ioas_id;
}

export function map(e: Env, ioasId: number, va: bigint, length: bigint, o: { iova?: bigint; flags?: number } = {}): bigint {
  const flags = (o.flags ?? MAP_RW) | (o.iova !== undefined ? FIXED : 0);
  return raw(e, 'IOAS_MAP', S.iommu_ioas_map, { flags, ioas_id: ioasId, user_va: va, length, iova: o.iova ?? 0n }).out.iova;
}

export function unmap(e: Env, ioasId: number, iova: bigint, length: bigint): bigint {
  return raw(e, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: ioasId, iova, length }).out.length;
}

export function copy(e: Env, dst: number, src: number, srcIova: bigint, length: bigint,
  o: { dstIova?: bigint; flags?: number } = {}): bigint {
  const flags = (o.flags ?? MAP_RW) | (o.dstIova !== undefined ? FIXED : 0);
  return raw(e, 'IOAS_COPY', S.iommu_ioas_copy, {
    flags, dst_ioas_id: dst, src_ioas_id: src, length, dst_iova: o.dstIova ?? 0n, src_iova: srcIova,
  }).out.dst_iova;
}

export function iovaRanges(e: Env, ioasId: number, cap = 16): { ranges: [bigint, bigint][]; align: bigint } {
  const buf = e.mem.alloc(cap * 16);
  const r = raw(e, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: ioasId, num_iovas: cap, allowed_iovas: buf });
  const bytes = e.mem.read(buf, r.out.num_iovas * 16);
  const dv = new DataView(bytes.buffer);
  const ranges: [bigint, bigint][] = [];
  for (let i = 0; i < r.out.num_iovas; i++) ranges.push([dv.getBigUint64(i * 16, true), dv.getBigUint64(i * 16 + 8, true)]);
  return { ranges, align: r.out.out_iova_alignment };
}

export function rangesBuf(e: Env, ranges: [bigint, bigint][]): bigint {
  const addr = e.mem.alloc(Math.max(1, ranges.length) * 16);
  const b = new Uint8Array(ranges.length * 16);
  const dv = new DataView(b.buffer);
  ranges.forEach(([s, l], i) => {
    dv.setBigUint64(i * 16, s, true);
    dv.setBigUint64(i * 16 + 8, l, true);
  });
  e.mem.write(addr, b);
  return addr;
}

export function allow(e: Env, ioasId: number, ranges: [bigint, bigint][]): void {
  raw(e, 'IOAS_ALLOW_IOVAS', S.iommu_ioas_allow_iovas, {
    ioas_id: ioasId, num_iovas: ranges.length, allowed_iovas: rangesBuf(e, ranges),
  });
}

export function option(e: Env, optionId: number, op: number, objectId: number, val64 = 0n): bigint {
  return raw(e, 'OPTION', S.iommu_option, { option_id: optionId, op, object_id: objectId, val64 }).out.val64;
}

/** A mock device attached to `ptId` (selftest MOCK_DOMAIN). */
export function mockDomain(e: Env, ptId: number): { stdev: number; hwpt: number; idev: number } {
  const u = testCmd(e, TEST_OP.MOCK_DOMAIN, ptId);
  return { stdev: u.out_stdev_id, hwpt: u.out_hwpt_id, idev: u.out_idev_id };
}

export function destroy(e: Env, id: number): void {
  raw(e, 'DESTROY', S.iommu_destroy, { id });
}

/** Long-term pin counts of the pages backing [va, va+len). */
export function pins(e: Env, va: bigint, len: bigint, mem: SimMemory = e.mem): number[] {
  const n = Number((len + PS - 1n) / PS);
  return mem.getPages(va - (va % PS), n, false).map((p) => p.pins);
}

/** MD_CHECK_REFS as the selftests use it. */
export function checkRefs(e: Env, va: bigint, length: bigint, refs: number): void {
  testCmd(e, TEST_OP.MD_CHECK_REFS, 0, { length, uptr: va, refs });
}
