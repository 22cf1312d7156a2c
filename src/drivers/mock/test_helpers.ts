// Raw-entry helpers for the DEVICE/HWPT/FAULT/mock tests: structs are laid out
// with encode() from the uAPI table at user addresses of a SimMemory and passed
// to IommufdCtx.ioctl(IO(nr), addr, caller), exactly like a C program would.
import { Emulator } from '../../core/emulator.js';
import { SimpleFdTable } from '../../core/file.js';
import { defaultProcess, SimMemory } from '../../core/simmem.js';
import type { ProcessInfo } from '../../core/usermem.js';
import { TEST_OP_VIEWS } from '../../core/selftest.js';
import '../../core/main.js';
import type { IommufdCtx, Caller } from '../../core/context.js';
import { isErrno, type ErrnoName, type IommufdError } from '../../uapi/errno.js';
import { IO, IOCTL_BY_NAME, type IoctlName } from '../../uapi/ioctls.js';
import { decode, encode, encodeInto, structSize, type Decoded, type StructDef } from '../../uapi/layout.js';
import type { ProfileName } from '../../uapi/profiles.js';
import * as S from '../../uapi/structs.js';
import { MOCK, TEST_OP } from '../../uapi/enums.js';

export interface T {
  emu: Emulator;
  mem: SimMemory;
  fds: SimpleFdTable;
  caller: Caller & { fds: SimpleFdTable };
  ctx: IommufdCtx;
  profile: ProfileName;
}

/** A fresh context (in `emu`, or a new emulator of `profile`) owned by a process with `proc`'s traits. */
export function setup(profile: ProfileName = 'mainline', proc: Partial<ProcessInfo> = {}, emu?: Emulator): T {
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

export interface RawResult<S extends StructDef> {
  /** The struct as read back from user memory after the call. */
  out: Decoded<S>;
  err: IommufdError | null;
  ret: number;
  addr: bigint;
  /** The user buffer after the call: max(size, sizeof) bytes (tails included). */
  bytes: Uint8Array;
}

/**
 * Issue ioctl `name` with `v` encoded as struct `s` (size = the profile's
 * sizeof unless given; `v.size` overrides the size field only). Bytes past
 * `size` in the user buffer hold `fill`.
 */
export function rawTry<S extends StructDef>(t: T, name: IoctlName, s: S, v: Partial<Decoded<S>>, size?: number,
  fill = 0): RawResult<S> {
  const def = IOCTL_BY_NAME.get(name)!;
  const n = size ?? structSize(s, t.emu.profile.version);
  const span = Math.max(n, structSize(s), 64);
  const addr = t.mem.alloc(span);
  const buf = new Uint8Array(span).fill(fill);
  buf.fill(0, 0, n);
  encodeInto(s, { ...v, size: v.size ?? n } as Record<string, unknown>, buf.subarray(0, Math.max(n, 4)), t.emu.profile.version);
  t.mem.write(addr, buf);
  let err: IommufdError | null = null;
  let ret = 0;
  try {
    ret = t.ctx.ioctl(IO(def.nr), addr, t.caller);
  } catch (e) {
    if (!isErrno(e)) throw e;
    err = e;
  }
  const bytes = t.mem.read(addr, span);
  const back = new Uint8Array(structSize(s));
  back.set(bytes.subarray(0, Math.min(n, back.length)));
  return { out: decode(s, back, t.emu.profile.version), err, ret, addr, bytes };
}

/** Like rawTry but throws the errno. */
export function raw<S extends StructDef>(t: T, name: IoctlName, s: S, v: Partial<Decoded<S>>, size?: number): Decoded<S> {
  const r = rawTry(t, name, s, v, size);
  if (r.err) throw r.err;
  return r.out;
}

/** IOMMU_TEST_CMD: header + the op's union member; returns the union after the call. */
export function testCmdTry(t: T, op: number, id: number, u: Record<string, unknown> = {}): { u: any; err: IommufdError | null } {
  const view = TEST_OP_VIEWS[op];
  const addr = t.mem.alloc(S.IOMMU_TEST_CMD_SIZE);
  const buf = encode(S.iommu_test_cmd, { size: S.IOMMU_TEST_CMD_SIZE, op, id }, Infinity, S.IOMMU_TEST_CMD_SIZE);
  if (view) encodeInto(view, u, buf);
  t.mem.write(addr, buf);
  let err: IommufdError | null = null;
  try {
    t.ctx.ioctl(IO(0xa0), addr, t.caller);
  } catch (e) {
    if (!isErrno(e)) throw e;
    err = e;
  }
  const back = t.mem.read(addr, S.IOMMU_TEST_CMD_SIZE);
  return { u: view ? decode(view, back) : {}, err };
}

export function testCmd(t: T, op: number, id: number, u: Record<string, unknown> = {}): any {
  const r = testCmdTry(t, op, id, u);
  if (r.err) throw r.err;
  return r.u;
}

/** assert.throws predicate for an errno. */
export const errno = (code: ErrnoName) => (e: unknown): boolean => isErrno(e, code);

// ---- common sequences ------------------------------------------------------------------

export function ioasAlloc(t: T): number {
  return raw(t, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id;
}

export function mockDomain(t: T, ptId: number, devFlags?: number): { stdevId: number; hwptId: number; idevId: number } {
  const u = devFlags === undefined
    ? testCmd(t, TEST_OP.MOCK_DOMAIN, ptId)
    : testCmd(t, TEST_OP.MOCK_DOMAIN_FLAGS, ptId, { dev_flags: devFlags });
  return { stdevId: u.out_stdev_id, hwptId: u.out_hwpt_id, idevId: u.out_idev_id };
}

export function destroy(t: T, id: number): void {
  raw(t, 'DESTROY', S.iommu_destroy, { id });
}

export function hwptAlloc(t: T, a: { devId: number; ptId: number; flags?: number; dataType?: number; data?: Uint8Array;
  dataLen?: number; dataUptr?: bigint; faultId?: number }): number {
  return raw(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, hwptAllocArgs(t, a)).out_hwpt_id;
}

export function hwptAllocArgs(t: T, a: { devId: number; ptId: number; flags?: number; dataType?: number; data?: Uint8Array;
  dataLen?: number; dataUptr?: bigint; faultId?: number }): Partial<Decoded<typeof S.iommu_hwpt_alloc>> {
  let uptr = a.dataUptr ?? 0n;
  if (a.data) {
    uptr = t.mem.alloc(a.data.length);
    t.mem.write(uptr, a.data);
  }
  return {
    flags: a.flags ?? 0, dev_id: a.devId, pt_id: a.ptId, data_type: a.dataType ?? 0,
    data_len: a.dataLen ?? a.data?.length ?? 0, data_uptr: uptr, fault_id: a.faultId ?? 0,
  };
}

/** Nested HWPT payload {iotlb} (4 bytes on gen A, 8 on gen B). */
export function selftestData(t: T, iotlb: number = MOCK.IOTLB_DEFAULT): Uint8Array {
  const full = encode(S.iommu_hwpt_selftest, { iotlb, pagetable_type: 0 });
  return t.emu.profile.mockGen === 'A' ? full.subarray(0, 4) : full;
}

/** Map `length` bytes of fresh user memory at a fixed IOVA; returns the user address. */
export function mapFixed(t: T, ioasId: number, iova: bigint, length: number,
  opts: { hugetlb?: boolean; contiguous?: boolean } = {}): bigint {
  const va = t.mem.mmap(length, { hugetlb: opts.hugetlb, contiguous: opts.contiguous, shared: true });
  raw(t, 'IOAS_MAP', S.iommu_ioas_map, { flags: 1 | 2 | 4, ioas_id: ioasId, user_va: va, length: BigInt(length), iova });
  return va;
}

export function iovaRanges(t: T, ioasId: number): { ranges: [bigint, bigint][]; alignment: bigint } {
  const arr = t.mem.alloc(16 * 16);
  const r = raw(t, 'IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: ioasId, num_iovas: 16, allowed_iovas: arr });
  const bytes = t.mem.read(arr, r.num_iovas * 16);
  const dv = new DataView(bytes.buffer);
  const ranges: [bigint, bigint][] = [];
  for (let i = 0; i < r.num_iovas; i++) ranges.push([dv.getBigUint64(i * 16, true), dv.getBigUint64(i * 16 + 8, true)]);
  return { ranges, alignment: r.out_iova_alignment };
}

export function faultAlloc(t: T): { faultId: number; faultFd: number } {
  const r = raw(t, 'FAULT_QUEUE_ALLOC', S.iommu_fault_alloc, {});
  return { faultId: r.out_fault_id, faultFd: r.out_fault_fd };
}

export { TEST_OP, MOCK, S };
