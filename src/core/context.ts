// One open /dev/iommu: its object table, its options, and the ioctl dispatcher
// (size rule, E2BIG tail, copy-back) -- the analogue of the kernel's main.c.
import { fail, IommufdError, isErrno, type ErrnoName } from '../uapi/errno.js';
import { decode, encodeInto, type StructDef } from '../uapi/layout.js';
import type { Profile } from '../uapi/profiles.js';
import type { ProfileIoctl } from '../uapi/ioctls.js';
import type { FdTable } from './file.js';
import { IommufdObject, ObjectTable, ObjType } from './object.js';
import type { UserMemory } from './usermem.js';
import type { Emulator } from './emulator.js';
import { decodeTestUnion, encodeTestUnion } from './selftest.js';

/** Who is calling: the analogue of `current` (memory, fd table). */
export interface Caller {
  readonly mem: UserMemory;
  readonly fds: FdTable;
}

/**
 * One ioctl in flight: the decoded struct (`cmd`), the caller, and copy-back.
 * Handlers mutate `cmd` and call respond() to copy the whole struct back.
 */
export class Ucmd<T extends object = Record<string, unknown>> {
  constructor(
    readonly ctx: IommufdCtx,
    readonly cmd: T,
    readonly caller: Caller,
    /** Copies the (re-encoded) struct back to user space; null for the typed API. */
    private readonly sink: ((cmd: T) => void) | null,
    /** The caller's struct size (the kernel's for the typed API). */
    readonly userSize: number,
    /** The user address of the struct (0 for the typed API). */
    readonly arg: bigint = 0n,
  ) {}
  get mem(): UserMemory {
    return this.caller.mem;
  }
  get emu(): Emulator {
    return this.ctx.emu;
  }
  respond(): void {
    this.sink?.(this.cmd);
  }
}

export type Handler = (ucmd: Ucmd<any>) => number | void;

/**
 * copy_struct_from_user(): the bytes of a user struct the kernel reads. A
 * caller's struct longer than ours must have a zero tail (check_zeroed_user
 * first: E2BIG or EFAULT), then the common part is copied.
 */
export function copyStructFromUser(mem: UserMemory, arg: bigint, userSize: number, knownSize: number): Uint8Array {
  if (userSize > knownSize && !checkZeroedUser(mem, arg + BigInt(knownSize), userSize - knownSize)) fail('E2BIG');
  const kbuf = new Uint8Array(knownSize);
  kbuf.set(mem.read(arg, Math.min(userSize, knownSize)));
  return kbuf;
}

const PAGE = 4096n;
/** Bytes read per attempt while the tail stays readable. */
const ZERO_CHUNK = 1n << 16n;

/**
 * check_zeroed_user(): whether [from, from+size) is all zero, throwing EFAULT
 * for an unreadable byte found first. The kernel reads the range one aligned
 * word at a time (bytes of the first and last word outside the range masked
 * off) and stops at the first word with a non-zero byte of the range: a
 * non-zero byte before an unreadable page is E2BIG, an all-zero range running
 * into one is EFAULT. Aligned words never straddle pages, so reading page by
 * page decides exactly as word by word; readable stretches are read in bigger
 * chunks, and a chunk that faults is re-read page by page.
 */
function checkZeroedUser(mem: UserMemory, from: bigint, size: number): boolean {
  const end = from + BigInt(size);
  const nonZero = (b: Uint8Array): boolean => b.some((x) => x !== 0);
  for (let at = from; at < end;) {
    const stop = at + ZERO_CHUNK < end ? at + ZERO_CHUNK : end;
    let chunk: Uint8Array | null = null;
    try {
      chunk = mem.read(at, Number(stop - at));
    } catch (e) {
      if (!isErrno(e, 'EFAULT')) throw e;
    }
    if (chunk) {
      if (nonZero(chunk)) return false;
      at = stop;
      continue;
    }
    // Something in this chunk is unreadable: the first page that is decides.
    while (at < stop) {
      const pageEnd = (at / PAGE + 1n) * PAGE;
      const next = pageEnd < stop ? pageEnd : stop;
      if (nonZero(mem.read(at, Number(next - at)))) return false; // EFAULT propagates
      at = next;
    }
  }
  return true;
}

export class IommufdCtx {
  readonly objects = new ObjectTable();
  /** IOMMU_OPTION_RLIMIT_MODE: 0 = per-user, 1 = per-process accounting. */
  accountMode = 0;
  /** IOMMU_VFIO_IOAS: the compat IOAS (no reference held). */
  vfioIoas: IommufdObject | null = null;
  /** References keeping the context alive: the fd(s), event files, mmaps, bound devices. */
  private refs = 1;
  closed = false;
  /** Extension state owned by feature modules (vfio compat mode, mmap regions...). */
  readonly ext = new Map<string, unknown>();

  constructor(readonly emu: Emulator, readonly owner: UserMemory) {}

  get profile(): Profile {
    return this.emu.profile;
  }

  // ---- object helpers used by every handler module ---------------------------

  /** Reserve an ID for a new object; an allocation failure point. */
  allocObj<T extends IommufdObject>(obj: T): T {
    this.emu.failPoint('ENOMEM');
    return this.objects.alloc(obj);
  }

  /**
   * Run `build` on a reserved (unpublished) object; if it throws, the object is
   * aborted -- destructor run, ID freed -- and the error propagates (01 §5.6).
   */
  buildObj<T extends IommufdObject>(obj: T, build: (obj: T) => void): T {
    try {
      build(obj);
    } catch (e) {
      this.objects.abort(obj);
      throw e;
    }
    return obj;
  }

  /** The whole creation protocol: reserve the ID, build (copy-back included), publish; no trace on failure. */
  createObj<T extends IommufdObject>(obj: T, build: (obj: T) => void): T {
    this.buildObj(this.allocObj(obj), build);
    this.objects.finalize(obj);
    return obj;
  }

  get<T extends IommufdObject>(id: number, type: ObjType): T {
    return this.objects.get(id, type) as T;
  }

  // ---- dispatch ---------------------------------------------------------------

  /** The raw entry: ioctl(fd, request, arg). Returns the ioctl's value or throws the errno. */
  ioctl(request: number, arg: bigint, caller: Caller): number {
    if (this.closed) fail('EBADF');
    const nr = request & 0xff;
    const table = this.emu.table;
    if (nr < 0x80 || nr > this.emu.lastNr) return this.emu.compatIoctl(this, request, arg, caller);
    const h = caller.mem.read(arg, 4);
    const userSize = (h[0]! | (h[1]! << 8) | (h[2]! << 16) | (h[3]! << 24)) >>> 0;
    const op = table.get(nr);
    if (!op || op.request !== (request >>> 0)) fail('ENOTTY');
    if (userSize < op.minSize) fail('EINVAL');
    const kbuf = copyStructFromUser(caller.mem, arg, userSize, op.knownSize);
    return this.run(op, kbuf, caller, userSize, (cmd) => {
      encodeInto(op.struct, cmd as Record<string, unknown>, kbuf, this.profile.version);
      if (op.name === 'TEST_CMD') encodeTestUnion(cmd, kbuf);
      this.emu.failPoint('EFAULT');
      caller.mem.write(arg, kbuf.subarray(0, Math.min(userSize, op.knownSize)));
    }, arg);
  }

  /** The typed entry: the decoded struct goes straight to the same handler. */
  call<T extends object>(opName: string, cmd: T, caller: Caller): number {
    if (this.closed) fail('EBADF');
    const op = this.emu.byName.get(opName);
    if (!op) fail('ENOTTY');
    return this.run(op, null, caller, op.knownSize, null, 0n, cmd);
  }

  private run(op: ProfileIoctl, kbuf: Uint8Array | null, caller: Caller, userSize: number,
    sink: ((cmd: any) => void) | null, arg: bigint, typed?: object): number {
    const handler = this.emu.handlers.get(op.name);
    if (!handler) fail('ENOTTY');
    const cmd = (typed ?? decode(op.struct, kbuf!, this.profile.version)) as Record<string, unknown>;
    if (!typed && op.name === 'TEST_CMD') decodeTestUnion(cmd, kbuf!);
    const ucmd = new Ucmd(this, cmd as Record<string, unknown>, caller, sink, userSize, arg);
    const r = handler(ucmd);
    return typeof r === 'number' ? r : 0;
  }

  // ---- lifetime ---------------------------------------------------------------

  ref(): void {
    this.refs++;
  }

  /** Drop one reference; the last one tears the context down (01 §5.7). */
  put(): void {
    if (--this.refs > 0) return;
    this.release();
  }

  private release(): void {
    if (this.closed) return;
    this.closed = true;
    for (const hook of this.emu.releaseHooks) hook(this);
    this.objects.destroyAll();
    this.vfioIoas = null;
  }
}

/** Convert any thrown value of a handler into an errno name; non-errno errors are emulator bugs. */
export function errnoOf(e: unknown): ErrnoName {
  if (isErrno(e)) return e.code;
  throw e;
}

export { IommufdError };
export type { StructDef };
