// One open /dev/iommu: its object table, its options, and the ioctl dispatcher
// (size rule, E2BIG tail, copy-back) -- the analogue of the kernel's main.c.
import { fail, IommufdError, isErrno, type ErrnoName } from '../uapi/errno.js';
import { decode, encode, encodeInto, type StructDef } from '../uapi/layout.js';
import { traceSpan } from '../uapi/trace.js';
import type { Profile } from '../uapi/profiles.js';
import type { ProfileIoctl } from '../uapi/ioctls.js';
import type { FdTable } from './file.js';
import { IommufdObject, ObjectTable, ObjType } from './object.js';
import { tryRead, type UserMemory } from './usermem.js';
import type { Emulator } from './emulator.js';
import { decodeTestUnion, encodeTestUnion } from './selftest.js';

/** Who is calling: the analogue of `current` (memory, fd table). */
export interface Caller {
  readonly mem: UserMemory;
  readonly fds: FdTable;
  /** The calling thread, where a front end knows it (traces only). */
  readonly tid?: number;
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
  /** iommufd_ucmd_respond(): the copy of the struct back to user space (a fault point on either entry). */
  respond(): void {
    this.emu.copyPoint();
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
  if (userSize > knownSize && !checkZeroedUser(mem, arg + BigInt(knownSize), userSize - knownSize)) fail('E2BIG', `the caller's struct is larger than the kernel's and its tail is not zero`);
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
  readonly objects: ObjectTable;
  /** Objects looked up by the ioctl in progress (their short-term users), released when it returns. */
  private readonly shortterm: IommufdObject[] = [];
  private inCall = 0;
  /** IOMMU_OPTION_RLIMIT_MODE: 0 = per-user, 1 = per-process accounting. */
  accountMode = 0;
  /** IOMMU_VFIO_IOAS: the compat IOAS (no reference held). */
  vfioIoas: IommufdObject | null = null;
  /** References keeping the context alive: the fd(s), event files, mmaps, bound devices. */
  private refs = 1;
  closed = false;
  /** Extension state owned by feature modules (vfio compat mode, mmap regions...). */
  readonly ext = new Map<string, unknown>();

  /** `seq` numbers the emulator's contexts (trace events, the inspector's graph). */
  constructor(readonly emu: Emulator, readonly owner: UserMemory, readonly seq = 0) {
    this.objects = new ObjectTable(this);
  }

  get profile(): Profile {
    return this.emu.profile;
  }

  // ---- object helpers used by every handler module ---------------------------

  /** Reserve an ID for a new object: the object's allocation, then xa_alloc()'s nodes (fault points). */
  allocObj<T extends IommufdObject>(obj: T): T {
    this.emu.allocPoint();
    const id = this.objects.peekId();
    if (id !== undefined) this.emu.faults.xaNodes(this.objects.xa.newNodes(id));
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

  /** Look an object up for the ioctl in progress (a short-term user until it returns, see traced()). */
  get<T extends IommufdObject>(id: number, type: ObjType): T {
    this.emu.iommufdPoint('ENOENT'); // iommufd_get_object()'s own failure point
    const obj = this.objects.get(id, type) as T;
    if (this.inCall) {
      obj.shortUsers++;
      this.shortterm.push(obj);
    }
    return obj;
  }

  // ---- dispatch ---------------------------------------------------------------

  /** The raw entry: ioctl(fd, request, arg). Returns the ioctl's value or throws the errno. */
  ioctl(request: number, arg: bigint, caller: Caller): number {
    if (this.emu.bus.on) return this.tracedIoctl(request, arg, caller);
    return this.rawIoctl(request, arg, caller);
  }

  private rawIoctl(request: number, arg: bigint, caller: Caller): number {
    if (this.closed) fail('EBADF', 'the iommufd is closed');
    const nr = request & 0xff;
    const table = this.emu.table;
    if (nr < 0x80 || nr > this.emu.lastNr) return this.emu.compatIoctl(this, request, arg, caller);
    const h = caller.mem.read(arg, 4);
    const userSize = (h[0]! | (h[1]! << 8) | (h[2]! << 16) | (h[3]! << 24)) >>> 0;
    const op = table.get(nr);
    if (!op || op.request !== (request >>> 0)) fail('ENOTTY', `no ioctl 0x${(request >>> 0).toString(16)} in ABI ${this.profile.name}`);
    if (userSize < op.minSize) fail('EINVAL', `${op.name}: size ${userSize} is below the minimum ${op.minSize}`);
    const kbuf = copyStructFromUser(caller.mem, arg, userSize, op.knownSize);
    return this.run(op, kbuf, caller, userSize, (cmd) => {
      encodeInto(op.struct, cmd as Record<string, unknown>, kbuf, this.profile.version);
      if (op.name === 'TEST_CMD') encodeTestUnion(cmd, kbuf);
      caller.mem.write(arg, kbuf.subarray(0, Math.min(userSize, op.knownSize)));
    }, arg);
  }

  /** The raw entry with an `ioctl` event: the caller's struct before and after, the result and the reason. */
  private tracedIoctl(request: number, arg: bigint, caller: Caller): number {
    const bus = this.emu.bus;
    const req = request >>> 0;
    const op = this.emu.table.get(req & 0xff);
    const known = op && op.request === req ? op : undefined;
    const span = traceSpan(this.profile, req, tryRead(caller.mem, arg, 4));
    const inBytes = span ? tryRead(caller.mem, arg, span) : null;
    bus.emit({ t: 'begin', ctx: this.seq, pid: caller.mem.process.pid, name: known?.name });
    let ret: number | undefined;
    let err: IommufdError | undefined;
    try {
      ret = this.traced(known?.name, () => this.rawIoctl(request, arg, caller));
    } catch (e) {
      if (!isErrno(e)) throw e;
      err = e;
    }
    const outBytes = inBytes ? tryRead(caller.mem, arg, inBytes.length) : null;
    bus.emit({
      t: 'ioctl', ctx: this.seq, pid: caller.mem.process.pid, tid: caller.tid, request: req, name: known?.name,
      typed: false, inBytes, outBytes, ret, errno: err?.code, reason: err?.reason,
    });
    if (err) throw err;
    return ret!;
  }

  /** The typed entry: the decoded struct goes straight to the same handler. */
  call<T extends object>(opName: string, cmd: T, caller: Caller): number {
    if (this.closed) fail('EBADF', 'the iommufd is closed');
    const op = this.emu.byName.get(opName);
    if (!op) fail('ENOTTY', `no ioctl ${opName} in ABI ${this.profile.name}`);
    if (this.emu.bus.on) return this.tracedCall(op, cmd, caller);
    return this.run(op, null, caller, op.knownSize, null, 0n, cmd);
  }

  /** The typed entry with an `ioctl` event (the struct encoded as the raw entry would have it). */
  private tracedCall(op: ProfileIoctl, cmd: object, caller: Caller): number {
    const bus = this.emu.bus;
    const bytes = (): Uint8Array | null => {
      try {
        const b = encode(op.struct, cmd as Record<string, unknown>, this.profile.version);
        if (op.name === 'TEST_CMD') encodeTestUnion(cmd as Record<string, unknown>, b);
        return b;
      } catch {
        return null; // a typed caller's value the codec cannot lay out: the handler will say what is wrong
      }
    };
    const inBytes = bytes();
    bus.emit({ t: 'begin', ctx: this.seq, pid: caller.mem.process.pid, name: op.name });
    let ret: number | undefined;
    let err: IommufdError | undefined;
    try {
      ret = this.traced(op.name, () => this.run(op, null, caller, op.knownSize, null, 0n, cmd));
    } catch (e) {
      if (!isErrno(e)) throw e;
      err = e;
    }
    bus.emit({
      t: 'ioctl', ctx: this.seq, pid: caller.mem.process.pid, tid: caller.tid, request: op.request, name: op.name,
      typed: true, inBytes, outBytes: bytes(), ret, errno: err?.code, reason: err?.reason,
    });
    if (err) throw err;
    return ret!;
  }

  private run(op: ProfileIoctl, kbuf: Uint8Array | null, caller: Caller, userSize: number,
    sink: ((cmd: any) => void) | null, arg: bigint, typed?: object): number {
    const handler = this.emu.handlers.get(op.name);
    if (!handler) fail('ENOTTY', `${op.name} has no handler`);
    this.emu.copyPoint(); // copy_struct_from_user() of the command, on either entry
    const cmd = (typed ?? decode(op.struct, kbuf!, this.profile.version)) as Record<string, unknown>;
    if (!typed && op.name === 'TEST_CMD') decodeTestUnion(cmd, kbuf!);
    const ucmd = new Ucmd(this, cmd as Record<string, unknown>, caller, sink, userSize, arg);
    try {
      const r = handler(ucmd);
      return typeof r === 'number' ? r : 0;
    } catch (e) {
      // The reason names the ioctl whichever helper's check failed.
      if (e instanceof IommufdError) e.inOp(op.name);
      throw e;
    }
  }

  /**
   * Run one traced call: failing checks become `fail` events and lookups count
   * as short-term users until it returns. Short-term users can only be seen
   * from inside a call, that is by a trace listener, so they are only counted
   * while someone listens.
   */
  private traced<T>(op: string | undefined, fn: () => T): T {
    const mark = this.shortterm.length;
    this.inCall++;
    try {
      return this.emu.bus.watchFailures(this.seq, op, fn);
    } finally {
      this.inCall--;
      while (this.shortterm.length > mark) this.shortterm.pop()!.shortUsers--;
    }
  }

  // ---- lifetime ---------------------------------------------------------------

  ref(): void {
    this.refs++;
  }

  /** References keeping the context alive (fds, event files, mmaps, bound devices). */
  get references(): number {
    return this.refs;
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
    this.emu.contexts.delete(this);
    const bus = this.emu.bus;
    if (bus.on) bus.emit({ t: 'ctx', op: 'release', ctx: this.seq, pid: this.owner.process.pid });
  }
}

/** Convert any thrown value of a handler into an errno name; non-errno errors are emulator bugs. */
export function errnoOf(e: unknown): ErrnoName {
  if (isErrno(e)) return e.code;
  throw e;
}

export { IommufdError };
export type { StructDef };
