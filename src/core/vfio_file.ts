// What VFIO needs from the caller's process beyond memory: its fd table, as
// far as VFIO looks into it. fd numbers appear inside VFIO structs (the
// iommufd of BIND_IOMMUFD, the container of GROUP_SET_CONTAINER, the eventfds
// of SET_IRQS) and are resolved here, in the caller's table: in process by a
// test's table, through the server by the client's real fds (phase 2: passed
// with SCM_RIGHTS or pidfd_getfd). Plus the file interface VFIO files add to
// the emulator's anonymous files (ioctl, mmap).
import { fail, isErrno, type IommufdError } from '../uapi/errno.js';
import { traceSpan } from '../uapi/trace.js';
import type { Caller, IommufdCtx } from './context.js';
import type { Emulator } from './emulator.js';
import type { IommufdFile } from './file.js';
import { PAGE_SIZE, tryRead, type UserMemory } from './usermem.js';

/** A reference on an eventfd (eventfd_ctx): signal adds 1 to its counter; put drops the reference. */
export interface EventFdCtx {
  signal(): void;
  put(): void;
}

/** What an fd of the caller is, as VFIO tells them apart. */
export type FdObject =
  | { readonly kind: 'iommufd'; readonly ctx: IommufdCtx }
  | { readonly kind: 'eventfd'; get(): EventFdCtx }
  | { readonly kind: 'vfio'; readonly file: VfioFile }
  | { readonly kind: 'other' };

export interface FdResolver {
  /** The object behind `fd` (undefined: not an open fd). */
  resolve(fd: number): FdObject | undefined;
}

/** A VFIO caller: memory, the fd table for files the emulator hands out, and the resolver. */
export interface VfioCaller extends Caller {
  readonly files: FdResolver;
}

/** An emulated file VFIO hands out or serves: anonymous-file ops plus ioctl. */
export interface VfioFile extends IommufdFile {
  ioctl(request: number, arg: bigint, caller: VfioCaller): number;
}

/** eventfd_ctx_fdget: EBADF for no fd, EINVAL for an fd that is not an eventfd. */
export function eventfdCtxFdget(caller: VfioCaller, fd: number): EventFdCtx {
  const o = fd < 0 ? undefined : caller.files.resolve(fd);
  if (!o) fail('EBADF', `fd ${fd} is not open`);
  if (o.kind !== 'eventfd') fail('EINVAL', `fd ${fd} is not an eventfd`);
  return o.get();
}

/** iommufd_ctx_from_fd: EBADF for no fd, EBADFD for an fd that is not an iommufd; takes a context reference. */
export function iommufdCtxFromFd(caller: VfioCaller, fd: number): IommufdCtx {
  const o = fd < 0 ? undefined : caller.files.resolve(fd);
  if (!o) fail('EBADF', `fd ${fd} is not open`);
  if (o.kind !== 'iommufd' || o.ctx.closed) fail('EBADFD', `fd ${fd} is not an iommufd`);
  o.ctx.ref();
  return o.ctx;
}

/**
 * A VFIO group or device ioctl with an `ioctl` event on the trace bus (when
 * anyone listens): the caller's struct before and after, as the iommufd entry
 * emits them, tagged with the file kind (VFIO request numbers repeat across
 * container, group and device files).
 */
export function tracedVfioIoctl(emu: Emulator, file: 'group' | 'device', ctx: number, request: number, arg: bigint,
  caller: VfioCaller, run: () => number): number {
  const bus = emu.bus;
  if (!bus.on) return run();
  const req = request >>> 0;
  const span = traceSpan(emu.profile, req, tryRead(caller.mem, arg, 4), file);
  const inBytes = span ? tryRead(caller.mem, arg, span) : null;
  let ret: number | undefined;
  let err: IommufdError | undefined;
  try {
    ret = run();
  } catch (e) {
    if (!isErrno(e)) throw e;
    err = e;
  }
  const outBytes = inBytes ? tryRead(caller.mem, arg, inBytes.length) : null;
  bus.emit({
    t: 'ioctl', ctx, pid: caller.mem.process.pid, tid: caller.tid, request: req, file, typed: false, inBytes, outBytes, ret,
    errno: err?.code, reason: err?.reason,
  });
  if (err) throw err;
  return ret!;
}


// ---- user copies (copy_from_user / copy_to_user and friends) --------------------------------

export function copyFromUser(emu: Emulator, mem: UserMemory, addr: bigint, n: number): Uint8Array {
  emu.copyPoint();
  return mem.read(addr, n);
}

export function copyToUser(emu: Emulator, mem: UserMemory, addr: bigint, bytes: Uint8Array): void {
  emu.copyPoint();
  mem.write(addr, bytes);
}

export function getUserU32(emu: Emulator, mem: UserMemory, addr: bigint): number {
  const b = copyFromUser(emu, mem, addr, 4);
  return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
}

/** strndup_user(addr, PAGE_SIZE): EFAULT when unreadable, EINVAL when no NUL within the limit. */
export function strndupUser(emu: Emulator, mem: UserMemory, addr: bigint, max = PAGE_SIZE): string {
  emu.copyPoint();
  const bytes: number[] = [];
  for (let i = 0; i <= max; i++) {
    // Read up to the end of the current page at once.
    const a = addr + BigInt(i);
    const n = Math.min(max + 1 - i, PAGE_SIZE - Number(a % BigInt(PAGE_SIZE)));
    const chunk = mem.read(a, n);
    const z = chunk.indexOf(0);
    if (z >= 0) {
      for (let j = 0; j < z; j++) bytes.push(chunk[j]!);
      return Buffer.from(bytes).toString('latin1');
    }
    for (const b of chunk) bytes.push(b);
    i += n - 1;
  }
  fail('EINVAL', 'string longer than a page');
}
