// FAULT objects and their fds (01 §4.17): I/O page-fault groups reported by a
// device on a fault-capable HWPT are queued here, read by user space as
// iommu_hwpt_pgfault records and answered with iommu_hwpt_page_response writes.
// The analogue of the FAULT half of the kernel's eventq.c.
import { fail, IommufdError, isErrno } from '../uapi/errno.js';
import { PAGE_RESP, PGFAULT_FLAGS } from '../uapi/enums.js';
import { decode, encode, type Decoded } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { IommufdCtx, Ucmd } from './context.js';
import { fdCloseEvent, installFile, POLLIN, POLLOUT, POLLRDNORM, type IommufdFile } from './file.js';
import { IommufdObject, ObjType, refget, refput } from './object.js';
import type { UserMemory } from './usermem.js';
import type { AttachHandle, Device } from './device.js';

/** One page request as the device reported it. */
export interface IopfFault {
  readonly flags: number;
  readonly pasid: number;
  readonly grpid: number;
  readonly perm: number;
  readonly addr: bigint;
}

/** A PRI page-request group: answered as a whole. */
export interface IopfGroup {
  readonly faults: readonly IopfFault[];
  /** The attachment the group was routed through (auto-responses match on it). */
  readonly handle: AttachHandle;
  /** Cookie while awaiting a response; 0 while queued. */
  cookie: number;
}

const RECORD_SIZE = 40;
const RESPONSE_SIZE = 8;
const COOKIE_MAX = 0xffffffff;

/** Tell the device's driver that a group was answered. */
export function respondGroup(group: IopfGroup, code: number): void {
  const idev = group.handle.device;
  const dev = idev.dev;
  const last = group.faults[group.faults.length - 1]!;
  const bus = idev.ctx.emu.bus;
  if (bus.on) {
    bus.emit({ t: 'fault', op: 'respond', ctx: idev.ctx.seq, dev: idev.id, pasid: last.pasid, grpid: last.grpid,
      fault: group.handle.hwpt.fault?.id, code });
  }
  dev.driver.pageResponse?.(dev, last.grpid, last.pasid, code);
}

export class FaultObj extends IommufdObject {
  readonly type = ObjType.FAULT;
  /** Groups not yet read, oldest first. */
  readonly deliver: IopfGroup[] = [];
  /** Groups read and awaiting a response, by cookie. */
  readonly response = new Map<number, IopfGroup>();
  file: FaultFile | null = null;

  constructor(readonly ctx: IommufdCtx) {
    super();
  }

  /** The iopf handler of a fault-capable domain: queue a group. */
  enqueue(group: IopfGroup): void {
    this.deliver.push(group);
    this.file?.onReadiness?.();
  }

  private allocCookie(): number {
    let c = 1;
    while (this.response.has(c)) c++;
    if (c > COOKIE_MAX) fail('EBUSY', 'no free response cookie');
    return c;
  }

  /**
   * read(2): whole groups only, cookies lowest-free from 1; never blocks. A first
   * group that does not fit (a count of 0 included) is EINVAL.
   */
  read(mem: UserMemory, buf: bigint, count: number, pos: bigint): number {
    if (pos !== 0n || count % RECORD_SIZE) fail('ESPIPE', 'fault reads are at position 0, in whole records');
    let done = 0;
    while (this.deliver.length > 0) {
      const group = this.deliver[0]!;
      if (done >= count || group.faults.length * RECORD_SIZE > count - done) {
        if (done === 0) fail('EINVAL', 'fault read: the first group does not fit');
        break;
      }
      this.ctx.emu.allocPoint(); // the response cookie (xa_alloc)
      const cookie = this.allocCookie();
      const bytes = new Uint8Array(group.faults.length * RECORD_SIZE);
      group.faults.forEach((f, i) => {
        bytes.set(encode(S.iommu_hwpt_pgfault, {
          flags: f.flags, dev_id: group.handle.device.id, pasid: f.pasid, grpid: f.grpid, perm: f.perm,
          __reserved: 0, addr: f.addr, length: 0, cookie,
        }), i * RECORD_SIZE);
      });
      try {
        mem.write(buf + BigInt(done), bytes);
      } catch (e) {
        if (!isErrno(e) || done === 0) throw e;
        break;
      }
      this.deliver.shift();
      group.cookie = cookie;
      this.response.set(cookie, group);
      done += bytes.length;
    }
    return done;
  }

  /** write(2): 8-byte responses in order; stops at the first bad one. */
  write(mem: UserMemory, buf: bigint, count: number, pos: bigint): number {
    if (pos !== 0n || count % RESPONSE_SIZE) fail('ESPIPE', 'fault responses are written at position 0, in whole responses');
    let done = 0;
    let err: IommufdError | null = null;
    while (count > done) {
      let resp: Decoded<typeof S.iommu_hwpt_page_response>;
      try {
        resp = decode(S.iommu_hwpt_page_response, mem.read(buf + BigInt(done), RESPONSE_SIZE));
      } catch (e) {
        if (!isErrno(e)) throw e;
        err = e;
        break;
      }
      const group = this.response.get(resp.cookie);
      if ((resp.code !== PAGE_RESP.SUCCESS && resp.code !== PAGE_RESP.INVALID) || !group) {
        err = new IommufdError('EINVAL', 'fault response: unknown cookie or a code other than SUCCESS/INVALID');
        break;
      }
      this.response.delete(resp.cookie);
      respondGroup(group, resp.code);
      done += RESPONSE_SIZE;
    }
    if (done === 0 && err) throw err;
    return done;
  }

  poll(): number {
    return POLLOUT | (this.deliver.length > 0 ? POLLIN | POLLRDNORM : 0);
  }

  /** Answer INVALID to every queued or awaiting group that came through `handle`. */
  autoRespond(handle: AttachHandle): void {
    const queued = this.deliver.length;
    for (let i = 0; i < this.deliver.length;) {
      const g = this.deliver[i]!;
      if (g.handle === handle) {
        this.deliver.splice(i, 1);
        respondGroup(g, PAGE_RESP.INVALID);
      } else {
        i++;
      }
    }
    for (const [cookie, g] of [...this.response]) {
      if (g.handle !== handle) continue;
      this.response.delete(cookie);
      respondGroup(g, PAGE_RESP.INVALID);
    }
    if (this.deliver.length !== queued) this.file?.onReadiness?.();
  }

  destroy(): void {
    for (const g of this.deliver.splice(0)) respondGroup(g, PAGE_RESP.INVALID);
    for (const [cookie, g] of [...this.response]) {
      this.response.delete(cookie);
      respondGroup(g, PAGE_RESP.INVALID);
    }
  }
}

/** "[iommufd-pgfault]": holds a user reference on the FAULT and a context reference. */
export class FaultFile implements IommufdFile {
  readonly name = '[iommufd-pgfault]';
  readonly has = { read: true, write: true, poll: true };
  onReadiness?: () => void;
  private released = false;
  constructor(readonly fault: FaultObj) {
    refget(fault, this, 'file');
    fault.ctx.ref();
    fault.file = this;
  }
  read(mem: UserMemory, buf: bigint, count: number, pos: bigint): number {
    return this.fault.read(mem, buf, count, pos);
  }
  write(mem: UserMemory, buf: bigint, count: number, pos: bigint): number {
    return this.fault.write(mem, buf, count, pos);
  }
  poll(): number {
    return this.fault.poll();
  }
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.fault.file === this) this.fault.file = null;
    fdCloseEvent(this.fault.ctx, this, this.fault);
    refput(this.fault, this, 'file');
    this.fault.ctx.put();
  }
}

/** IOMMU_FAULT_QUEUE_ALLOC (01 §4.17). */
export function iommufdFaultAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_fault_alloc>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.flags) fail('EOPNOTSUPP', 'flags must be 0');
  ctx.createObj(new FaultObj(ctx), (fault) => {
    installFile(ucmd, new FaultFile(fault), (fd) => {
      cmd.out_fault_id = fault.id;
      cmd.out_fault_fd = fd;
      ucmd.respond();
    }, fault);
  });
}

/**
 * A device reports an I/O page fault (the core's iommu_report_device_fault):
 * partial requests wait for their group's last page; the group is routed by
 * PASID (falling back to a nested RID attachment when the driver keeps PASID
 * tables in user-managed tables) and queued on the attached HWPT's FAULT, or
 * answered INVALID when nothing can take it. Dropped while the device has no
 * fault-capable attachment (I/O page faults not enabled).
 */
export function reportDeviceFault(idev: Device, fault: IopfFault): void {
  const bus = idev.ctx.emu.bus;
  const event = (op: 'report' | 'drop', faultObj?: FaultObj): void => {
    if (bus.on) {
      bus.emit({ t: 'fault', op, ctx: idev.ctx.seq, dev: idev.id, pasid: fault.pasid, grpid: fault.grpid, addr: fault.addr,
        fault: faultObj?.id });
    }
  };
  if (!idev.iopfEnabled) return event('drop');
  if (!(fault.flags & PGFAULT_FLAGS.LAST_PAGE)) {
    idev.partialFaults.push(fault);
    return;
  }
  const faults = idev.partialFaults.filter((f) => f.grpid === fault.grpid);
  idev.partialFaults = idev.partialFaults.filter((f) => f.grpid !== fault.grpid);
  faults.push(fault);
  let att = fault.flags & PGFAULT_FLAGS.PASID_VALID ? idev.attachment(fault.pasid) : idev.attachment(0);
  if (!att && fault.flags & PGFAULT_FLAGS.PASID_VALID && idev.dev.driver.userPasidTable) {
    const rid = idev.attachment(0);
    if (rid && rid.hwpt.type === ObjType.HWPT_NESTED) att = rid;
  }
  if (!att || !att.hwpt.fault) {
    const dev = idev.dev;
    event('drop');
    dev.driver.pageResponse?.(dev, fault.grpid, fault.pasid, PAGE_RESP.INVALID);
    return;
  }
  event('report', att.hwpt.fault);
  att.hwpt.fault.enqueue({ faults, handle: att.handle, cookie: 0 });
}
