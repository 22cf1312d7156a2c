// An in-process "process" for VFIO tests: SimMemory, an fd table holding
// iommufds, VFIO files and eventfds, and raw ioctls with structs laid out from
// the uAPI table -- the calls a C program makes, without the shim.
import { errOf } from '../drivers/mock/test_helpers.js';
import { VFIO_REQ } from '../uapi/vfio.js';
import { IO, IOCTL_BY_NAME, type IoctlName } from '../uapi/ioctls.js';
import { decode, encodeInto, structSize, type Decoded, type StructDef } from '../uapi/layout.js';
import { buildMachine, loadMachine, resolveMachine, type BuiltMachine, type MachineDesc } from '../machine/machine.js';
import type { IommufdCtx } from './context.js';
import { Emulator } from './emulator.js';
import type { FdTable, IommufdFile } from './file.js';
import './main.js';
import { defaultProcess, SimMemory } from './simmem.js';
import type { ProcessInfo } from './usermem.js';
import { vfioOf } from './vfio.js';
import type { BarMapping, VfioDeviceFile } from './vfio_device.js';
import type { EventFdCtx, FdObject, FdResolver, VfioCaller, VfioFile } from './vfio_file.js';
import type { ProfileName } from '../uapi/profiles.js';

/** An eventfd: a counter; references are counted so tests can see releases. */
export class SimEventFd {
  count = 0n;
  refs = 0;
  ctx(): EventFdCtx {
    this.refs++;
    let put = false;
    return {
      signal: () => {
        this.count++;
      },
      put: () => {
        if (put) throw new Error('eventfd ctx put twice');
        put = true;
        this.refs--;
      },
    };
  }
  /** read(2) of 8 bytes: the count, reset; EAGAIN (non-blocking) when 0. */
  read(): bigint | 'EAGAIN' {
    if (!this.count) return 'EAGAIN';
    const v = this.count;
    this.count = 0n;
    return v;
  }
}

type Entry =
  | { kind: 'iommufd'; ctx: IommufdCtx }
  | { kind: 'eventfd'; efd: SimEventFd }
  | { kind: 'file'; file: IommufdFile };

export class TestProcess implements FdTable, FdResolver {
  readonly mem: SimMemory;
  readonly caller: VfioCaller;
  private readonly fdt = new Map<number, Entry>();
  private next = 3;

  constructor(readonly emu: Emulator, proc: Partial<ProcessInfo> = {}) {
    this.mem = new SimMemory(defaultProcess(proc));
    this.caller = { mem: this.mem, fds: this, files: this };
  }

  private add(e: Entry): number {
    const fd = this.next++;
    this.fdt.set(fd, e);
    return fd;
  }

  // FdTable: files the emulator hands out (device fds, fault fds...).
  install(file: IommufdFile): number {
    return this.add({ kind: 'file', file });
  }
  lookup(fd: number): IommufdFile | undefined {
    const e = this.fdt.get(fd);
    return e?.kind === 'file' ? e.file : undefined;
  }
  close(fd: number): void {
    const e = this.fdt.get(fd);
    if (!e) throw new Error(`close: fd ${fd} not open`);
    this.fdt.delete(fd);
    if (e.kind === 'iommufd') e.ctx.put();
    else if (e.kind === 'file') e.file.release();
  }

  // FdResolver
  resolve(fd: number): FdObject | undefined {
    const e = this.fdt.get(fd);
    if (!e) return undefined;
    if (e.kind === 'iommufd') return { kind: 'iommufd', ctx: e.ctx };
    if (e.kind === 'eventfd') return { kind: 'eventfd', get: () => e.efd.ctx() };
    if ('ioctl' in e.file) return { kind: 'vfio', file: e.file as VfioFile };
    return { kind: 'other' };
  }

  openIommu(): number {
    return this.add({ kind: 'iommufd', ctx: this.emu.open(this.mem) });
  }
  openContainer(): number {
    return this.add({ kind: 'iommufd', ctx: vfioOf(this.emu).openContainer(this.mem) });
  }
  openCdev(index: number): number {
    return this.install(vfioOf(this.emu).openCdev(index));
  }
  openGroup(id: number): number {
    return this.install(vfioOf(this.emu).openGroup(id));
  }
  eventfd(): { fd: number; efd: SimEventFd } {
    const efd = new SimEventFd();
    return { fd: this.add({ kind: 'eventfd', efd }), efd };
  }
  /** An fd that is none of the above (a plain file). */
  plainFile(): number {
    return this.install({ name: 'plain', read: () => 0, write: () => 0, poll: () => 0, release: () => {} });
  }

  ctxOf(fd: number): IommufdCtx {
    const e = this.fdt.get(fd);
    if (e?.kind !== 'iommufd') throw new Error(`fd ${fd} is not an iommufd`);
    return e.ctx;
  }
  fileOf(fd: number): VfioDeviceFile {
    return this.lookup(fd) as VfioDeviceFile;
  }
  get openFds(): number {
    return this.fdt.size;
  }

  /** ioctl(fd, request, arg): the ioctl's value, or throws the errno. */
  ioctl(fd: number, request: number, arg: bigint): number {
    const e = this.fdt.get(fd);
    if (!e) throw new Error(`ioctl: fd ${fd} not open`);
    if (e.kind === 'iommufd') return e.ctx.ioctl(request, arg, this.caller);
    if (e.kind === 'file' && 'ioctl' in e.file) return (e.file as VfioFile).ioctl(request, arg, this.caller);
    throw new Error(`ioctl: fd ${fd} has no ioctl`);
  }

  pread(fd: number, count: number, pos: bigint): Uint8Array {
    const buf = this.mem.alloc(Math.max(count, 1));
    const n = this.lookup(fd)!.read(this.mem, buf, count, pos);
    return this.mem.read(buf, n);
  }
  pwrite(fd: number, data: Uint8Array, pos: bigint): number {
    const buf = this.mem.alloc(Math.max(data.length, 1));
    this.mem.write(buf, data);
    return this.lookup(fd)!.write(this.mem, buf, data.length, pos);
  }
  /** VFIO_GROUP_SET_CONTAINER with a pointer to `containerFd`. */
  setContainer(groupFd: number, containerFd: number): number {
    const a = this.mem.alloc(4);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, containerFd, true);
    this.mem.write(a, b);
    return this.ioctl(groupFd, VFIO_REQ.GROUP_SET_CONTAINER, a);
  }
  /** VFIO_GROUP_GET_DEVICE_FD with the NUL-terminated `name`. */
  getDeviceFd(groupFd: number, name: string): number {
    const a = this.mem.alloc(name.length + 1);
    this.mem.write(a, Buffer.from(`${name}\0`, 'latin1'));
    return this.ioctl(groupFd, VFIO_REQ.GROUP_GET_DEVICE_FD, a);
  }
  mmap(fd: number, offset: bigint, length: bigint, shared = true): BarMapping {
    return this.fileOf(fd).mmap(offset, length, shared);
  }

  /** The process exits: every fd is closed (device release happens here). */
  exit(): void {
    for (const fd of [...this.fdt.keys()]) this.close(fd);
    this.mem.exit();
  }
}

export { errOf };

export interface StructCall<S extends StructDef> {
  out: Decoded<S>;
  ret: number;
  addr: bigint;
  /** The user buffer after the call. */
  bytes: Uint8Array;
}

/**
 * ioctl `request` on `fd` with `v` laid out as `s` in a user buffer of
 * `size` bytes (default sizeof); `tail` bytes follow (payloads, capability room).
 */
export function structCall<S extends StructDef>(p: TestProcess, fd: number, request: number, s: S,
  v: Partial<Decoded<S>>, opts: { size?: number; tail?: Uint8Array; room?: number } = {}): StructCall<S> {
  const n = opts.size ?? structSize(s, p.emu.profile.version);
  const total = Math.max(n, structSize(s)) + (opts.tail?.length ?? 0) + (opts.room ?? 0);
  const addr = p.mem.alloc(total);
  const buf = new Uint8Array(total);
  encodeInto(s, v as Record<string, unknown>, buf.subarray(0, Math.max(n, structSize(s))), p.emu.profile.version);
  buf.fill(0, n, Math.max(n, structSize(s)));
  if (opts.tail) buf.set(opts.tail, n);
  p.mem.write(addr, buf);
  const ret = p.ioctl(fd, request, addr);
  const bytes = p.mem.read(addr, total);
  const back = new Uint8Array(structSize(s));
  back.set(bytes.subarray(0, Math.min(n, back.length)));
  return { out: decode(s, back, p.emu.profile.version), ret, addr, bytes };
}

/** An iommufd ioctl by name (the uAPI table's struct). */
export function iommufdCall(p: TestProcess, fd: number, name: IoctlName, v: Record<string, unknown>): any {
  const def = IOCTL_BY_NAME.get(name)!;
  const size = structSize(def.struct, p.emu.profile.version);
  return structCall(p, fd, IO(def.nr), def.struct, { size, ...v } as never).out;
}

/** A fresh emulator with a machine (default: the one-IOAT preset) and a process. */
export function vfioSetup(opts: { profile?: ProfileName; machine?: string | MachineDesc; proc?: Partial<ProcessInfo> } = {}): {
  emu: Emulator; m: BuiltMachine; p: TestProcess;
} {
  const emu = new Emulator({ profile: opts.profile ?? 'mainline' });
  const desc = opts.machine ?? 'ioat';
  const m = buildMachine(emu, typeof desc === 'string' ? loadMachine(desc) : resolveMachine(desc));
  return { emu, m, p: new TestProcess(emu, opts.proc) };
}
