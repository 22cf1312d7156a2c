// Raw-entry helpers for the IOAS / access / VFIO-compat tests: every struct is
// laid out with encode() from the uAPI table at a user address of a SimMemory
// and passed to IommufdCtx.ioctl(request, addr, caller), as a C program would.
import type { ErrnoName } from '../uapi/errno.js';
import { TEST_OP } from '../uapi/enums.js';
import type { IoctlName } from '../uapi/ioctls.js';
import { decode, type Decoded, type StructDef } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import {
  destroy, errOf, ioasAlloc, mockDomain as mockDomainIds, rawTry, setup, testCmd, type T,
} from '../drivers/mock/test_helpers.js';
import type { SimMemory } from './simmem.js';
import { PAGE_SIZE } from './usermem.js';

export const U64_MAX = (1n << 64n) - 1n;
export const PS = BigInt(PAGE_SIZE);
export const MAP_RW = 2 | 4;
export const FIXED = 1;

/** The IOAS tests' name for the shared raw-entry fixture (drivers/mock/test_helpers.ts). */
export type Env = T;
export const env = setup;
export { errOf };

export interface RawOut<T> {
  out: T;
  ret: number;
  addr: bigint;
}

/** Issue ioctl `name` with `v` laid out as struct `s`; throws the errno. Bytes past `size` hold `fill`. */
export function raw<S extends StructDef>(e: Env, name: IoctlName, s: S, v: Partial<Decoded<S>>, size?: number,
  fill = 0): RawOut<Decoded<S>> {
  const r = rawTry(e, name, s, v, size, fill);
  if (r.err) throw r.err;
  return { out: decode(s, r.bytes, e.emu.profile.version), ret: r.ret, addr: r.addr };
}

/** The struct bytes as user memory holds them after a call that may have failed. */
export function rawErr<S extends StructDef>(e: Env, name: IoctlName, s: S, v: Partial<Decoded<S>>, size?: number):
  { err: ErrnoName | 0; out: Decoded<S>; bytes: Uint8Array } {
  const r = rawTry(e, name, s, v, size);
  return { err: r.err ? r.err.code : 0, out: decode(s, r.bytes, e.emu.profile.version), bytes: r.bytes };
}

export { testCmd };

export { ioasAlloc, destroy };

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
  const d = mockDomainIds(e, ptId);
  return { stdev: d.stdevId, hwpt: d.hwptId, idev: d.idevId };
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
