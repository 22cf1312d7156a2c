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

export interface IommufdFile {
  /** "[iommufd-pgfault]", "[iommufd-viommu-event]", "[iommufd_test_staccess]". */
  readonly name: string;
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
    ucmd.emu.failPoint('ENOMEM'); // unused fd
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
