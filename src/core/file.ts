// Anonymous files that ioctls hand out (fault queue, vEVENTQ, selftest access).
// The core exposes read/write/poll/release on them; an fd table of the caller's
// process (in-process or in the shim's client) maps numbers to them.
import { fail } from '../uapi/errno.js';
import type { UserMemory } from './usermem.js';
import type { IommufdCtx, Ucmd } from './context.js';
import type { IommufdObject } from './object.js';

export const POLLIN = 0x001;
export const POLLOUT = 0x004;
export const POLLRDNORM = 0x040;
export const POLLWRNORM = 0x100;
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
/** What poll reports for a file without a poll method. */
export const DEFAULT_POLLMASK = POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM;
/** read/write counts are clamped to this (INT_MAX rounded down to a page). */
export const MAX_RW_COUNT = 0x7ffff000;
/** The highest user address + 1 of x86-64 with 4-level paging (TASK_SIZE_MAX). */
export const TASK_SIZE_MAX = (1n << 47n) - 4096n;

/** access_ok(addr, size): the range lies below TASK_SIZE_MAX and does not wrap. */
export function accessOk(addr: bigint, size: bigint): boolean {
  const end = addr + size;
  return end <= TASK_SIZE_MAX && end >= addr;
}

/**
 * read(2) on one of our anonymous files, as the VFS does it before the driver:
 * not open for reading -> EBADF, no read method -> EINVAL, then access_ok on the buffer -> EFAULT, then the
 * count is clamped to MAX_RW_COUNT. (pread on these files is ESPIPE: the shim
 * answers it, anonymous-inode files have no positional I/O.)
 */
export function vfsRead(file: IommufdFile, mem: UserMemory, buf: bigint, count: bigint, pos = 0n): number {
  if (file.has.accmode === O_WRONLY) fail('EBADF', `read: ${file.name} is not open for reading`);
  if (!file.has.read) fail('EINVAL', `read: ${file.name} has no read method`);
  if (!accessOk(buf, count)) fail('EFAULT', 'read: access_ok on the buffer');
  return file.read(mem, buf, count > BigInt(MAX_RW_COUNT) ? MAX_RW_COUNT : Number(count), pos);
}

/** write(2): the same VFS checks as vfsRead. */
export function vfsWrite(file: IommufdFile, mem: UserMemory, buf: bigint, count: bigint, pos = 0n): number {
  if (file.has.accmode === O_RDONLY) fail('EBADF', `write: ${file.name} is not open for writing`);
  if (!file.has.write) fail('EINVAL', `write: ${file.name} has no write method`);
  if (!accessOk(buf, count)) fail('EFAULT', 'write: access_ok on the buffer');
  return file.write(mem, buf, count > BigInt(MAX_RW_COUNT) ? MAX_RW_COUNT : Number(count), pos);
}

/** The file's poll mask (before the caller's event mask is applied): DEFAULT_POLLMASK without a poll method. */
export function vfsPoll(file: IommufdFile): number {
  return file.has.poll ? file.poll() : DEFAULT_POLLMASK;
}

/** Which file_operations the kernel's file has: the VFS answers for the missing ones. */
export interface FileOps {
  readonly read: boolean;
  readonly write: boolean;
  readonly poll: boolean;
  /** The file's access mode (O_RDONLY, O_WRONLY, O_RDWR); absent: O_RDWR, as anon_inode_getfile's files here. */
  readonly accmode?: number;
}

export interface IommufdFile {
  /** "[iommufd-pgfault]", "[iommufd-viommu-event]", "[iommufd_test_staccess]". */
  readonly name: string;
  readonly has: FileOps;
  read(mem: UserMemory, buf: bigint, count: number, pos: bigint): number;
  write(mem: UserMemory, buf: bigint, count: number, pos: bigint): number;
  poll(): number;
  /** Last reference to the file dropped. */
  release(): void;
  /** Readiness may have changed (set by whoever exposes the file as a real fd). */
  onReadiness?: () => void;
}

/** A process's file-descriptor table, as far as emulated files are concerned. */
export interface FdTable {
  /** Install `file` and return its fd number (close-on-exec unless `cloexec` is false). */
  install(file: IommufdFile, opts?: { cloexec?: boolean }): number;
  /** The emulated file behind `fd`, if any. */
  lookup(fd: number): IommufdFile | undefined;
  /** Close `fd` (drops the file's reference if it was the last). */
  close(fd: number): void;
  /** Is `fd` open at all (any file, emulated or not)? Absent: only emulated fds are known. */
  isOpen?(fd: number): boolean;
}

/** A plain in-process fd table: numbers from 1000 up, one reference per fd. */
export class SimpleFdTable implements FdTable {
  private readonly files = new Map<number, IommufdFile>();
  private next = 1000;
  install(file: IommufdFile): number {
    const fd = this.next++;
    this.files.set(fd, file);
    return fd;
  }
  lookup(fd: number): IommufdFile | undefined {
    return this.files.get(fd);
  }
  close(fd: number): void {
    const f = this.files.get(fd);
    if (!f) fail('EBADF', 'not an open fd');
    this.files.delete(fd);
    f.release();
  }
  get open(): number {
    return this.files.size;
  }
}

/**
 * Give `file` to the caller as a new fd and let `publish` fill the outputs and
 * copy back; if anything fails the fd is closed again (or the file released)
 * before the error propagates, so a failed ioctl leaves no fd behind.
 */
export function installFile<T extends object>(ucmd: Ucmd<T>, file: IommufdFile, publish: (fd: number) => void,
  obj?: IommufdObject, opts?: { cloexec?: boolean }): void {
  let fd = -1;
  try {
    ucmd.emu.anonFilePoints();
    fd = ucmd.caller.fds.install(file, opts);
    fdOpenEvent(ucmd.ctx, fd, file, obj);
    publish(fd);
  } catch (e) {
    if (fd >= 0) ucmd.caller.fds.close(fd);
    else file.release();
    throw e;
  }
}

/** The `fd` open event of a file handed to the caller as `fd` (its object, if any). */
export function fdOpenEvent(ctx: IommufdCtx, fd: number, file: IommufdFile, obj?: IommufdObject): void {
  const bus = ctx.emu.bus;
  if (bus.on) bus.emit({ t: 'fd', op: 'open', ctx: ctx.seq, fd, file: file.name, obj: obj?.id ?? 0 });
}

/** The `fd` close event: the file's last reference went (every fd of it closed). */
export function fdCloseEvent(ctx: IommufdCtx, file: IommufdFile, obj?: IommufdObject): void {
  const bus = ctx.emu.bus;
  if (bus.on) bus.emit({ t: 'fd', op: 'close', ctx: ctx.seq, file: file.name, obj: obj?.id ?? 0 });
}
