// Raw-entry helpers for the vIOMMU-family tests (vIOMMU, vDEVICE, nested HWPT
// on a vIOMMU, vIOMMU invalidation, vEVENTQ, HW queue, mmap, the v1 seed ABI).
// Every ioctl goes through IommufdCtx.ioctl(IO(nr), addr, caller) with the
// struct laid out by encode() from the uAPI table (test_helpers.rawTry).
import assert from 'node:assert/strict';
import {
  destroy, errOf, hwptAllocArgs, ioasAlloc, mapFixed, mockDomain, raw, rawTry, selftestData, setup, testCmd, testCmdTry,
  type T,
} from '../drivers/mock/test_helpers.js';
import { mockDriverOf, type MockDevice } from '../drivers/mock/mock.js';
import type { DriverDevice, IommuDriver, PagingDomain, ViommuDriver, ViommuOps } from '../drivers/driver.js';
import type { ErrnoName } from '../uapi/errno.js';
import { HWPT_ALLOC, MOCK, TEST_OP } from '../uapi/enums.js';
import { decode, encode, encodeInto, structSize } from '../uapi/layout.js';
import type { Profile, ProfileName } from '../uapi/profiles.js';
import { IO, IOCTL_BY_NAME } from '../uapi/ioctls.js';
import { Emulator } from './emulator.js';
import * as S from '../uapi/structs.js';
import { deviceBind, type Device } from './device.js';
import { PAGE_SIZE } from './usermem.js';

export { destroy, errOf, hwptAllocArgs, ioasAlloc, mapFixed, mockDomain, raw, rawTry, selftestData, setup, testCmd, testCmdTry, type T };
export { HWPT_ALLOC, MOCK, TEST_OP, S };

export const PS = BigInt(PAGE_SIZE);
export const U64_MAX = (1n << 64n) - 1n;
export const NEST = HWPT_ALLOC.NEST_PARENT;
/** The IOVA every fixture maps two pages at (inside the mock aperture). */
export const BASE_IOVA = MOCK.APERTURE_START;

/** errno name of a raw call, or 0. */
export function code(r: { err: { code: ErrnoName } | null }): ErrnoName | 0 {
  return r.err ? r.err.code : 0;
}


export interface Fx extends T {
  ioas: number;
  va: bigint;
  stdev: number;
  idev: number;
  autoHwpt: number;
  parent: number;
}

/**
 * IOAS (1) with two pages mapped at BASE_IOVA, a mock device attached to it
 * (stdev 2, idev 3, auto HWPT 4), a nest-parent HWPT (5).
 */
export function fixture(profile: ProfileName = 'mainline'): Fx {
  const t = setup(profile);
  const ioas = ioasAlloc(t);
  // Physically contiguous: the HW-queue tests use both pages as one queue (the kernel requires that).
  const va = mapFixed(t, ioas, BASE_IOVA, 2 * PAGE_SIZE, { contiguous: true });
  const md = mockDomain(t, ioas);
  const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: NEST });
  return Object.assign(t, { ioas, va, stdev: md.stdevId, idev: md.idevId, autoHwpt: md.hwptId, parent });
}

export function hwptAlloc(t: T, a: Parameters<typeof hwptAllocArgs>[1]): number {
  return raw(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, hwptAllocArgs(t, a)).out_hwpt_id;
}

export function hwptAllocTry(t: T, a: Parameters<typeof hwptAllocArgs>[1], extra: Record<string, unknown> = {}) {
  return rawTry(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc, { ...hwptAllocArgs(t, a), ...extra });
}

export interface ViommuArgs {
  devId: number;
  hwptId: number;
  type?: number;
  flags?: number;
  dataLen?: number;
  dataUptr?: bigint;
  reserved?: number;
}

export function viommuAllocTry(t: T, a: ViommuArgs, size?: number) {
  return rawTry(t, 'VIOMMU_ALLOC', S.iommu_viommu_alloc, {
    flags: a.flags ?? 0, type: a.type ?? MOCK.VIOMMU_TYPE_SELFTEST, dev_id: a.devId, hwpt_id: a.hwptId,
    data_len: a.dataLen ?? 0, data_uptr: a.dataUptr ?? 0n, __reserved: a.reserved ?? 0,
  }, size);
}

export function viommuAlloc(t: T, a: ViommuArgs, size?: number): number {
  const r = viommuAllocTry(t, a, size);
  if (r.err) throw r.err;
  return r.out.out_viommu_id;
}

/** VIOMMU_ALLOC with selftest driver data of `len` bytes ({in_data}); returns the id and the data after the call. */
export function viommuAllocData(t: T, devId: number, hwptId: number, inData: number, len = 24):
  { id: number; data: ReturnType<typeof decodeViommuData>; uptr: bigint } {
  const uptr = t.mem.alloc(64);
  t.mem.write(uptr, new Uint8Array(64).fill(0xee));
  t.mem.write(uptr, encode(S.iommu_viommu_selftest, { in_data: inData }).subarray(0, Math.min(len, 24)));
  const id = viommuAlloc(t, { devId, hwptId, dataLen: len, dataUptr: uptr });
  return { id, data: decodeViommuData(t.mem.read(uptr, 24)), uptr };
}

export function decodeViommuData(b: Uint8Array) {
  return decode(S.iommu_viommu_selftest, b);
}

export function vdevAllocTry(t: T, viommuId: number, devId: number, virtId: bigint, size?: number) {
  return rawTry(t, 'VDEVICE_ALLOC', S.iommu_vdevice_alloc, { viommu_id: viommuId, dev_id: devId, virt_id: virtId }, size);
}

export function vdevAlloc(t: T, viommuId: number, devId: number, virtId: bigint): number {
  const r = vdevAllocTry(t, viommuId, devId, virtId);
  if (r.err) throw r.err;
  return r.out.out_vdevice_id;
}

/** A nested HWPT on `ptId` (vIOMMU or parent) with selftest data {iotlb}. */
export function nestedAlloc(t: T, devId: number, ptId: number, o: { flags?: number; iotlb?: number; faultId?: number } = {}): number {
  return hwptAlloc(t, {
    devId, ptId, flags: o.flags ?? 0, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t, o.iotlb ?? MOCK.IOTLB_DEFAULT),
    faultId: o.faultId,
  });
}

/** MOCK_DOMAIN_REPLACE: errno or 0. */
export function replace(t: T, stdev: number, ptId: number): ErrnoName | 0 {
  const r = testCmdTry(t, TEST_OP.MOCK_DOMAIN_REPLACE, stdev, { pt_id: ptId });
  return r.err ? r.err.code : 0;
}

export function trigger(t: T, devId: number): ErrnoName | 0 {
  const r = testCmdTry(t, TEST_OP.TRIGGER_VEVENT, 0, { dev_id: devId });
  return r.err ? r.err.code : 0;
}

/** DEV_CHECK_CACHE: true when cache[id] == value. */
export function devCache(t: T, idev: number, id: number, value: number): boolean {
  const r = testCmdTry(t, TEST_OP.DEV_CHECK_CACHE, idev, { id, cache: value });
  if (r.err && r.err.code !== 'EINVAL') throw r.err;
  return !r.err;
}

/** The four per-device cache entries, probed through DEV_CHECK_CACHE with the two values they can hold. */
export function devCacheAll(t: T, idev: number): number[] {
  return [0, 1, 2, 3].map((i) => (devCache(t, idev, i, 0) ? 0 : devCache(t, idev, i, MOCK.DEV_CACHE_DEFAULT) ? MOCK.DEV_CACHE_DEFAULT : -1));
}

export function iotlb(t: T, hwptId: number, id: number, value: number): boolean {
  const r = testCmdTry(t, TEST_OP.MD_CHECK_IOTLB, hwptId, { id, iotlb: value });
  if (r.err && r.err.code !== 'EINVAL') throw r.err;
  return !r.err;
}

export interface InvEntry {
  flags?: number;
  vdev_id?: number;
  cache_id?: number;
}

/** Lay out vIOMMU invalidation entries of `entryLen` bytes (12-byte struct, zero/extra tail per `tail`). */
export function invArray(t: T, entries: (InvEntry | Uint8Array)[], entryLen = 12, tail?: (i: number) => Uint8Array): bigint {
  const total = Math.max(1, entries.length * entryLen);
  const uptr = t.mem.alloc(total);
  const buf = new Uint8Array(entries.length * entryLen);
  entries.forEach((e, i) => {
    const bytes = e instanceof Uint8Array ? e : encode(S.iommu_viommu_invalidate_selftest, { flags: 0, vdev_id: 0, cache_id: 0, ...e });
    buf.set(bytes.subarray(0, Math.min(bytes.length, entryLen)), i * entryLen);
    if (tail && entryLen > 12) buf.set(tail(i).subarray(0, entryLen - 12), i * entryLen + 12);
  });
  t.mem.write(uptr, buf);
  return uptr;
}

export interface InvArgs {
  hwptId: number;
  uptr?: bigint;
  dataType?: number;
  entryLen?: number;
  entryNum?: number;
  reserved?: number;
}

/** Raw HWPT_INVALIDATE: errno (or 0) and the entry_num copied back. */
export function invalidate(t: T, a: InvArgs): { err: ErrnoName | 0; entryNum: number } {
  const r = rawTry(t, 'HWPT_INVALIDATE', S.iommu_hwpt_invalidate, {
    hwpt_id: a.hwptId, data_uptr: a.uptr ?? 0n, data_type: a.dataType ?? MOCK.VIOMMU_INVALIDATE_DATA_SELFTEST,
    entry_len: a.entryLen ?? 12, entry_num: a.entryNum ?? 0, __reserved: a.reserved ?? 0,
  });
  return { err: code(r), entryNum: r.out.entry_num };
}

/** Invalidate `entries` on a vIOMMU with the standard 12-byte entries. */
export function invalidateEntries(t: T, hwptId: number, entries: InvEntry[], entryLen = 12): { err: ErrnoName | 0; entryNum: number } {
  return invalidate(t, { hwptId, uptr: invArray(t, entries, entryLen), entryLen, entryNum: entries.length });
}

export function veventqAllocTry(t: T, viommuId: number, o: { type?: number; depth?: number; flags?: number; reserved?: number } = {}, size?: number) {
  return rawTry(t, 'VEVENTQ_ALLOC', S.iommu_veventq_alloc, {
    flags: o.flags ?? 0, viommu_id: viommuId, type: o.type ?? MOCK.VEVENTQ_TYPE_SELFTEST, veventq_depth: o.depth ?? 2,
    __reserved: o.reserved ?? 0,
  }, size);
}

export function veventqAlloc(t: T, viommuId: number, o: { type?: number; depth?: number } = {}): { id: number; fd: number } {
  const r = veventqAllocTry(t, viommuId, o);
  if (r.err) throw r.err;
  return { id: r.out.out_veventq_id, fd: r.out.out_veventq_fd };
}

/** read(2) on an emulated fd into a fresh buffer; returns the bytes read (throws the errno). */
export function readFd(t: T, fd: number, count: number, pos = 0n, buf?: bigint): Uint8Array {
  const file = t.caller.fds.lookup(fd);
  assert.ok(file, `fd ${fd} is open`);
  const addr = buf ?? t.mem.alloc(Math.max(count, 1));
  const n = file.read(t.mem, addr, count, pos);
  return t.mem.read(addr, n);
}

export interface Vevent {
  flags: number;
  seq: number;
  virtId?: number;
}

/** Split vEVENTQ read bytes into records (selftest payload: 4 bytes; a LOST_EVENTS header has none). */
export function parseEvents(b: Uint8Array): Vevent[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: Vevent[] = [];
  let off = 0;
  while (off < b.length) {
    const flags = dv.getUint32(off, true);
    const seq = dv.getUint32(off + 4, true);
    off += 8;
    if (flags & 1) {
      out.push({ flags, seq });
    } else {
      out.push({ flags, seq, virtId: dv.getUint32(off, true) });
      off += 4;
    }
  }
  return out;
}

export function hwQueueAllocTry(t: T, viommuId: number, o: { type?: number; index?: number; iova?: bigint; length?: bigint; flags?: number } = {}, size?: number) {
  return rawTry(t, 'HW_QUEUE_ALLOC', S.iommu_hw_queue_alloc, {
    flags: o.flags ?? 0, viommu_id: viommuId, type: o.type ?? MOCK.HW_QUEUE_TYPE_SELFTEST, index: o.index ?? 0,
    nesting_parent_iova: o.iova ?? BASE_IOVA, length: o.length ?? PS,
  }, size);
}

export function hwQueueAlloc(t: T, viommuId: number, o: Parameters<typeof hwQueueAllocTry>[2] = {}): number {
  const r = hwQueueAllocTry(t, viommuId, o);
  if (r.err) throw r.err;
  return r.out.out_hw_queue_id;
}

export function unmapTry(t: T, ioasId: number, iova: bigint, length: bigint) {
  return rawTry(t, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: ioasId, iova, length });
}

export function destroyTry(t: T, id: number): ErrnoName | 0 {
  return code(rawTry(t, 'DESTROY', S.iommu_destroy, { id }));
}

/** The next ID the context would hand out (probe with an IOAS, then destroy it). */
export function nextId(t: T): number {
  const id = ioasAlloc(t);
  destroy(t, id);
  return id;
}

/** Long-term pins of the pages behind [va, va+len). */
export function pins(t: T, va: bigint, len: bigint): number[] {
  const n = Number((len + PS - 1n) / PS);
  return t.mem.getPages(va - (va % PS), n, false).map((p) => p.pins);
}

/** Close the context (the /dev/iommu fd). */
export function closeCtx(t: T): void {
  t.ctx.put();
}

// ---- a device behind another driver / another IOMMU instance ---------------------------

/** A minimal driver for foreign devices: no paging domains it can allocate, optional vIOMMU support. */
export function foreignDriver(viommu?: ViommuDriver): IommuDriver {
  return {
    name: 'foreign',
    capDirtyTracking: () => false,
    capEnforceCacheCoherency: () => false,
    domainAllocPaging: (): PagingDomain => {
      throw new Error('foreign driver: no paging domains');
    },
    attach: () => {},
    viommu,
  };
}

/** A vIOMMU driver supporting type 1 with no ops at all (no nesting, no invalidation, no HW queues). */
export const bareViommuDriver: ViommuDriver = {
  viommuSupported: (_dev, type) => type === 1,
  viommuInit: (): ViommuOps => ({}),
} as ViommuDriver;

/**
 * Bind a device that is not a selftest mock device: `driver` (default: a
 * driver without vIOMMU support) and its own IOMMU instance unless `instance`
 * says otherwise. Returns the DEVICE id.
 */
export function bindForeign(t: T, o: { driver?: IommuDriver; instance?: object } = {}): Device {
  const driver = o.driver ?? foreignDriver();
  const instance = o.instance ?? { name: 'another-iommu' };
  const dev: DriverDevice = {
    driver, iommuInstance: instance, maxPasids: 0, coherent: true, reservedRegions: () => [],
  };
  return deviceBind(t.ctx, dev, { mock: true });
}

/** A mock-driver device sitting behind a different physical IOMMU instance. */
export function bindMockOtherInstance(t: T): Device {
  return bindForeign(t, { driver: mockDriverOf(t.emu), instance: { name: 'second-mock-iommu' } });
}

export type { MockDevice };

/** Issue ioctl `name` with the struct in read-only user memory (the copy-back faults); returns the errno or 0. */
export function rawReadOnly<St extends import('../uapi/layout.js').StructDef>(t: T, name: import('../uapi/ioctls.js').IoctlName,
  s: St, v: Record<string, unknown>): ErrnoName | 0 {
  const def = IOCTL_BY_NAME.get(name)!;
  const n = structSize(s, t.emu.profile.version);
  const addr = t.mem.alloc(n);
  const buf = new Uint8Array(n);
  encodeInto(s, { ...v, size: n }, buf, t.emu.profile.version);
  t.mem.write(addr, buf);
  t.mem.mprotect(addr, 4096, 1);
  return errOf(() => t.ctx.ioctl(IO(def.nr), addr, t.caller));
}

/** A context on an emulator whose profile has some switches changed (e.g. the for-next invalidation loop). */
export function setupWith(profile: ProfileName, over: Partial<Profile>): T {
  const emu = new Emulator({ profile });
  Object.defineProperty(emu, 'profile', { value: { ...emu.profile, ...over } });
  return setup(profile, {}, emu);
}
