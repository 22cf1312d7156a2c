// The typed TypeScript API: methods that build the decoded struct and call the
// same handlers as the raw ioctl entry (IommufdCtx.call), returning outputs or
// throwing the errno error (IommufdError).
import { IommufdCtx, type Caller } from './core/context.js';
import { Emulator, type EmulatorOptions } from './core/emulator.js';
import { SimpleFdTable, type FdTable } from './core/file.js';
import { SimMemory } from './core/simmem.js';
import type { UserMemory } from './core/usermem.js';
import { MAP_FLAGS, TEST_OP } from './uapi/enums.js';
import { structSize, type Decoded, type StructDef } from './uapi/layout.js';
import * as S from './uapi/structs.js';
import { TEST_OP_VIEWS } from './core/selftest.js';
import './core/main.js';
import { iommufdMmap, MAP_SHARED, type MmapHandle } from './core/mmap.js';
import { IommufdError } from './uapi/errno.js';

const templates = new WeakMap<StructDef, { base: Record<string, unknown>; arrays: string[] }>();

/** A full decoded struct with every field zero (size = sizeof), then `over` applied. */
export function zeroed<T extends StructDef>(s: T, over: Partial<Decoded<T>> = {}): Decoded<T> {
  let t = templates.get(s);
  if (!t) {
    const base: Record<string, unknown> = {};
    const arrays: string[] = [];
    for (const [name, f] of Object.entries(s.fields)) {
      const z = f.type === 'u64' ? 0n : 0;
      base[name] = f.count ? new Array(f.count).fill(z) : z;
      if (f.count) arrays.push(name);
    }
    base.size = structSize(s);
    templates.set(s, (t = { base, arrays }));
  }
  const out: Record<string, unknown> = { ...t.base };
  for (const a of t.arrays) out[a] = (t.base[a] as unknown[]).slice();
  return Object.assign(out, over) as Decoded<T>;
}

export interface MapArgs {
  ioasId: number;
  userVa: bigint;
  length: bigint;
  /** Fixed IOVA; omit for automatic placement. */
  iova?: bigint;
  /** Defaults to READABLE|WRITEABLE (FIXED_IOVA is added when iova is given). */
  flags?: number;
}

/** One open /dev/iommu, typed. */
export class IommuFd {
  readonly caller: Caller;
  constructor(readonly ctx: IommufdCtx, mem: UserMemory, fds: FdTable = new SimpleFdTable()) {
    this.caller = { mem, fds };
  }

  get mem(): UserMemory {
    return this.caller.mem;
  }

  private call<T extends StructDef>(name: string, s: T, over: Partial<Decoded<T>>): Decoded<T> {
    const cmd = zeroed(s, over);
    this.ctx.call(name, cmd, this.caller);
    return cmd;
  }

  close(): void {
    this.ctx.put();
  }

  destroy(id: number): void {
    this.call('DESTROY', S.iommu_destroy, { id });
  }

  ioasAlloc(): number {
    return this.call('IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id;
  }

  ioasMap(a: MapArgs): bigint {
    const flags = (a.flags ?? MAP_FLAGS.READABLE | MAP_FLAGS.WRITEABLE) | (a.iova !== undefined ? MAP_FLAGS.FIXED_IOVA : 0);
    return this.call('IOAS_MAP', S.iommu_ioas_map, {
      flags, ioas_id: a.ioasId, user_va: a.userVa, length: a.length, iova: a.iova ?? 0n,
    }).iova;
  }

  ioasUnmap(ioasId: number, iova: bigint, length: bigint): bigint {
    return this.call('IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: ioasId, iova, length }).length;
  }

  ioasCopy(a: { dstIoasId: number; srcIoasId: number; srcIova: bigint; length: bigint; dstIova?: bigint; flags?: number }): bigint {
    const flags = (a.flags ?? MAP_FLAGS.READABLE | MAP_FLAGS.WRITEABLE) | (a.dstIova !== undefined ? MAP_FLAGS.FIXED_IOVA : 0);
    return this.call('IOAS_COPY', S.iommu_ioas_copy, {
      flags, dst_ioas_id: a.dstIoasId, src_ioas_id: a.srcIoasId, length: a.length, dst_iova: a.dstIova ?? 0n,
      src_iova: a.srcIova,
    }).dst_iova;
  }

  /** IOAS_IOVA_RANGES with the probe-then-fetch pattern; returns the ranges and the alignment. */
  ioasIovaRanges(ioasId: number): { ranges: [bigint, bigint][]; alignment: bigint } {
    let cap = 8;
    for (;;) {
      const buf = this.scratch(cap * 16);
      try {
        const r = this.call('IOAS_IOVA_RANGES', S.iommu_ioas_iova_ranges, { ioas_id: ioasId, num_iovas: cap, allowed_iovas: buf });
        const bytes = this.mem.read(buf, r.num_iovas * 16);
        const dv = new DataView(bytes.buffer);
        const ranges: [bigint, bigint][] = [];
        for (let i = 0; i < r.num_iovas; i++) ranges.push([dv.getBigUint64(i * 16, true), dv.getBigUint64(i * 16 + 8, true)]);
        return { ranges, alignment: r.out_iova_alignment };
      } catch (e) {
        if ((e as { code?: string }).code !== 'EMSGSIZE') throw e;
        cap *= 2;
      }
    }
  }

  ioasAllowIovas(ioasId: number, ranges: [bigint, bigint][]): void {
    const buf = this.scratch(Math.max(1, ranges.length) * 16);
    const bytes = new Uint8Array(ranges.length * 16);
    const dv = new DataView(bytes.buffer);
    ranges.forEach(([s, l], i) => { dv.setBigUint64(i * 16, s, true); dv.setBigUint64(i * 16 + 8, l, true); });
    this.mem.write(buf, bytes);
    this.call('IOAS_ALLOW_IOVAS', S.iommu_ioas_allow_iovas, { ioas_id: ioasId, num_iovas: ranges.length, allowed_iovas: buf });
  }

  option(optionId: number, op: number, objectId: number, val64 = 0n): bigint {
    return this.call('OPTION', S.iommu_option, { option_id: optionId, op, object_id: objectId, val64 }).val64;
  }

  hwptAlloc(a: { devId: number; ptId: number; flags?: number; dataType?: number; data?: Uint8Array; faultId?: number }): number {
    let uptr = 0n;
    if (a.data) {
      uptr = this.scratch(a.data.length);
      this.mem.write(uptr, a.data);
    }
    return this.call('HWPT_ALLOC', S.iommu_hwpt_alloc, {
      flags: a.flags ?? 0, dev_id: a.devId, pt_id: a.ptId, data_type: a.dataType ?? 0, data_len: a.data?.length ?? 0,
      data_uptr: uptr, fault_id: a.faultId ?? 0,
    }).out_hwpt_id;
  }

  faultQueueAlloc(): { faultId: number; faultFd: number } {
    const r = this.call('FAULT_QUEUE_ALLOC', S.iommu_fault_alloc, {});
    return { faultId: r.out_fault_id, faultFd: r.out_fault_fd };
  }

  /** GET_HW_INFO: returns the driver data (up to `dataLen` bytes) and the outputs. */
  getHwInfo(devId: number, a: { dataLen?: number; inDataType?: number; flags?: number } = {}) {
    const len = a.dataLen ?? 64;
    const uptr = len ? this.scratch(len) : 0n;
    const r = this.call('GET_HW_INFO', S.iommu_hw_info, {
      flags: a.flags ?? 0, dev_id: devId, data_len: len, data_uptr: uptr, out_data_type: a.inDataType ?? 0,
    });
    return {
      dataType: r.out_data_type, dataLen: r.data_len, capabilities: r.out_capabilities,
      maxPasidLog2: r.out_max_pasid_log2, data: len ? this.mem.read(uptr, Math.min(len, r.data_len)) : new Uint8Array(),
    };
  }

  /** HWPT_INVALIDATE on a nested HWPT or a vIOMMU: returns entries handled; on error the IommufdError carries `.handled`. */
  hwptInvalidate(hwptId: number, dataType: number, entryLen: number, entries: Uint8Array[]): number {
    const uptr = entries.length ? this.scratch(entryLen * entries.length) : 0n;
    entries.forEach((e, i) => this.mem.write(uptr + BigInt(i * entryLen), e));
    const cmd = zeroed(S.iommu_hwpt_invalidate, {
      hwpt_id: hwptId, data_uptr: uptr, data_type: dataType, entry_len: entryLen, entry_num: entries.length,
    });
    try {
      this.ctx.call('HWPT_INVALIDATE', cmd, this.caller);
    } catch (e) {
      (e as { handled?: number }).handled = cmd.entry_num;
      throw e;
    }
    return cmd.entry_num;
  }

  viommuAlloc(a: { devId: number; hwptId: number; type: number; data?: Uint8Array; flags?: number }): { viommuId: number; data?: Uint8Array } {
    let uptr = 0n;
    if (a.data) {
      uptr = this.scratch(a.data.length);
      this.mem.write(uptr, a.data);
    }
    const r = this.call('VIOMMU_ALLOC', S.iommu_viommu_alloc, {
      flags: a.flags ?? 0, type: a.type, dev_id: a.devId, hwpt_id: a.hwptId, data_len: a.data?.length ?? 0, data_uptr: uptr,
    });
    return { viommuId: r.out_viommu_id, data: a.data ? this.mem.read(uptr, a.data.length) : undefined };
  }

  vdeviceAlloc(viommuId: number, devId: number, virtId: bigint): number {
    return this.call('VDEVICE_ALLOC', S.iommu_vdevice_alloc, { viommu_id: viommuId, dev_id: devId, virt_id: virtId }).out_vdevice_id;
  }

  veventqAlloc(viommuId: number, type: number, depth: number): { veventqId: number; veventqFd: number } {
    const r = this.call('VEVENTQ_ALLOC', S.iommu_veventq_alloc, { viommu_id: viommuId, type, veventq_depth: depth });
    return { veventqId: r.out_veventq_id, veventqFd: r.out_veventq_fd };
  }

  hwQueueAlloc(a: { viommuId: number; type: number; index: number; iova: bigint; length: bigint }): number {
    return this.call('HW_QUEUE_ALLOC', S.iommu_hw_queue_alloc, {
      viommu_id: a.viommuId, type: a.type, index: a.index, nesting_parent_iova: a.iova, length: a.length,
    }).out_hw_queue_id;
  }

  /** read(2) on an fd this context handed out (fault queue, vEVENTQ): returns the bytes read. */
  readFd(fd: number, count: number): Uint8Array {
    const file = this.caller.fds.lookup(fd);
    if (!file) throw new IommufdError('EBADF');
    const buf = this.scratch(Math.max(count, 1));
    const n = file.read(this.mem, buf, count, 0n);
    return this.mem.read(buf, n);
  }

  /** write(2) on an fd this context handed out (fault responses). */
  writeFd(fd: number, data: Uint8Array): number {
    const file = this.caller.fds.lookup(fd);
    if (!file) throw new IommufdError('EBADF');
    const buf = this.scratch(Math.max(data.length, 1));
    this.mem.write(buf, data);
    return file.write(this.mem, buf, data.length, 0n);
  }

  pollFd(fd: number): number {
    const file = this.caller.fds.lookup(fd);
    if (!file) throw new IommufdError('EBADF');
    return file.poll();
  }

  closeFd(fd: number): void {
    this.caller.fds.close(fd);
  }

  /** mmap(fd, offset, length) of a driver region (MAP_SHARED, read/write). */
  mmap(offset: bigint, length: bigint, flags = MAP_SHARED, prot = 3): MmapHandle {
    return iommufdMmap(this.ctx, offset, length, flags, prot);
  }

  /** IOMMU_TEST_CMD: `u` is the op's union member (fields by name). Returns the struct after the call. */
  testCmd(op: number, id: number, u: Record<string, unknown> = {}): Record<string, any> {
    const view = TEST_OP_VIEWS[op];
    const cmd = { size: S.IOMMU_TEST_CMD_SIZE, op, id, __reserved: 0, last: 0, u: view ? { ...zeroed(view), ...u } : {} };
    this.ctx.call('TEST_CMD', cmd, this.caller);
    return cmd.u;
  }

  /** Create a mock device attached to `ptId` (IOAS or HWPT). */
  mockDomain(ptId: number, devFlags?: number): { stdevId: number; hwptId: number; idevId: number } {
    const u = devFlags === undefined
      ? this.testCmd(TEST_OP.MOCK_DOMAIN, ptId)
      : this.testCmd(TEST_OP.MOCK_DOMAIN_FLAGS, ptId, { dev_flags: devFlags });
    return { stdevId: u.out_stdev_id, hwptId: u.out_hwpt_id, idevId: u.out_idev_id };
  }

  private scratchBuf: { addr: bigint; len: number } | null = null;
  /** A reusable buffer in the caller's memory for arrays the typed API passes by pointer. */
  private scratch(len: number): bigint {
    if (!this.scratchBuf || this.scratchBuf.len < len) {
      const sim = this.mem as SimMemory;
      if (typeof sim.alloc !== 'function') throw new Error('typed API array arguments need a SimMemory caller');
      this.scratchBuf = { addr: sim.alloc(len), len: Math.ceil(len / 4096) * 4096 };
    }
    return this.scratchBuf.addr;
  }
}

/** Open a context in a fresh emulator (or a given one), with in-process memory. */
export function openIommufd(opts: { emu?: Emulator; mem?: SimMemory } & EmulatorOptions = {}): IommuFd & { readonly mem: SimMemory } {
  const emu = opts.emu ?? new Emulator(opts);
  const mem = opts.mem ?? new SimMemory();
  return new IommuFd(emu.open(mem), mem) as IommuFd & { readonly mem: SimMemory };
}
