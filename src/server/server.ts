// The socket server: one process serving many shim clients (see protocol.ts).
// Each open("/dev/iommu") in a client is one IommufdCtx whose lifetime is its
// anchor connection; ioctls arrive on the calling process's control connection
// and reach memory through /proc/<pid>/mem (procmem.ts). Handlers run
// synchronously, so one frame is one complete kernel call.
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { IommufdCtx } from '../core/context.js';
import { Emulator } from '../core/emulator.js';
import { POLLIN, type FdTable, type IommufdFile } from '../core/file.js';
import { iommufdMmap, type MmapHandle } from '../core/mmap.js';
import { PAGE_SIZE, type PhysPage } from '../core/usermem.js';
import type { ProcessInfo } from '../core/usermem.js';
import { errnoName, fail, isErrno, ERRNO } from '../uapi/errno.js';
import type { ProfileName } from '../uapi/profiles.js';
import { PageRegistry, ProcMemory, type InlineWindow } from './procmem.js';
import * as P from './protocol.js';

export interface ServerOptions {
  socketPath: string;
  profile?: ProfileName;
  /** Use this emulator instead of making one (tests). */
  emulator?: Emulator;
  /** Diagnostics (malformed frames, emulator bugs). Default: stderr. */
  log?: (msg: string) => void;
  /**
   * Capabilities every client is treated as having in addition to its real
   * ones (opt-in, for containers that drop them; the default is faithful).
   */
  grantCaps?: readonly CapName[];
}

export type CapName = 'sys_resource' | 'ipc_lock' | 'sys_rawio';
export const CAP_NAMES: readonly CapName[] = ['sys_resource', 'ipc_lock', 'sys_rawio'];
const CAP_BITS: Record<CapName, number> = {
  sys_resource: P.CAP_BIT.SYS_RESOURCE, ipc_lock: P.CAP_BIT.IPC_LOCK, sys_rawio: P.CAP_BIT.SYS_RAWIO,
};

function errText(neg: number): string {
  return errnoName(-neg) ?? `errno ${-neg}`;
}

const U64_MAX = (1n << 64n) - 1n;

type ConnKind = 'new' | 'hello' | 'control' | 'anchor' | 'event';

interface ProcState {
  pid: number;
  conn: Conn;
  mem: ProcMemory;
  /** Live mmaps of iommufd fds by this process image (each holds its owner and the context). */
  mmaps: Map<number, MmapHandle>;
}

interface CtxEntry {
  token: number;
  ctx: IommufdCtx;
  conn: Conn;
}

interface EventBinding {
  token: number;
  ino: bigint;
  conn: Conn;
  file: IommufdFile | null;
  /** The file's reference was dropped (fd closed everywhere, or rolled back). */
  released: boolean;
  /** One readiness byte is sitting in the client's socket buffer. */
  signalled: boolean;
  /** Given to the shim that made the fd only: its hints (IOCTL) name this binding. */
  secret: bigint;
}

let connSeq = 0;

class Conn {
  readonly id = ++connSeq;
  kind: ConnKind = 'new';
  pid = 0;
  private pending: Buffer | null = null;
  private ended = false;
  onEnd: (() => void) | null = null;
  /** Between HELLO and PROVE: the state to publish and the nonce it must show. */
  pendingHello: { st: ProcState; nonce: Buffer } | null = null;

  constructor(readonly server: IommufdServer, readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('end', () => this.finish(null));
    socket.on('error', () => this.finish(null));
    socket.on('close', () => this.finish(null));
  }

  send(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  /** Close this connection only, with a logged reason. */
  reject(reason: string): void {
    this.server.log(`connection ${this.id} (${this.kind}${this.pid ? `, pid ${this.pid}` : ''}): ${reason}; closing it`);
    this.finish(reason);
    this.socket.destroy();
  }

  private finish(reason: string | null): void {
    if (this.ended) return;
    this.ended = true;
    if (reason === null && this.pending && this.pending.length > 0) {
      this.server.log(`connection ${this.id} (${this.kind}): truncated frame (${this.pending.length} bytes) at EOF`);
    }
    this.pending = null;
    const cb = this.onEnd;
    this.onEnd = null;
    try {
      cb?.();
    } catch (e) {
      this.server.log(`connection ${this.id}: teardown failed: ${(e as Error).stack ?? e}`);
    }
  }

  private onData(d: Buffer): void {
    if (this.ended) return;
    let buf = this.pending && this.pending.length ? Buffer.concat([this.pending, d]) : d;
    let off = 0;
    while (buf.length - off >= 8) {
      const len = buf.readUInt32LE(off);
      const type = buf.readUInt32LE(off + 4);
      if (len < 8 || len > P.MAX_FRAME) return this.reject(`malformed frame: length ${len}`);
      const want = P.REQ_SIZE[type];
      if (want === undefined) return this.reject(`malformed frame: unknown type ${type}`);
      const tail = P.REQ_TAIL[type];
      if (tail ? len < want || len > want + tail.max : len !== want) {
        const expected = tail ? `${want} to ${want + tail.max}` : `${want}`;
        return this.reject(`malformed frame: ${P.NAMES[type]} of ${len} bytes (expected ${expected})`);
      }
      if (buf.length - off < len) break;
      const frame = buf.subarray(off, off + len);
      if (tail && frame.readUInt32LE(tail.at) !== len - want) {
        return this.reject(`malformed frame: ${P.NAMES[type]} of ${len} bytes announces a ${frame.readUInt32LE(tail.at)}-byte tail`);
      }
      off += len;
      try {
        this.server.handle(this, type, frame);
      } catch (e) {
        this.server.log(`connection ${this.id}: internal error: ${(e as Error).stack ?? e}`);
        return this.reject('internal error');
      }
      if (this.ended) return;
    }
    this.pending = off < buf.length ? Buffer.from(buf.subarray(off)) : null;
  }
}

/** The FdTable of one call: install() hands out the event fd the shim prepared. */
class CallFdTable implements FdTable {
  installed = false;
  constructor(private readonly server: IommufdServer, private readonly pid: number,
    private readonly evfd: number, private readonly evtoken: number,
    private readonly hintFd = -1, private readonly hintToken = 0, private readonly hintSecret = 0n) {}

  /**
   * The binding behind the caller's fd `fd`. The shim names the one it
   * expects the call to look up (checked against the fd's inode just before
   * the call, with the secret only holders of the fd know); any other fd is
   * resolved through /proc/<pid>/fd.
   */
  private bindingOf(fd: number): EventBinding | undefined {
    if (fd >= 0 && fd === this.hintFd) {
      const b = this.server.events.get(this.hintToken);
      if (b && b.secret === this.hintSecret) return b;
    }
    return this.server.bindingOfFd(this.pid, fd);
  }

  install(file: IommufdFile): number {
    const b = this.server.events.get(this.evtoken);
    if (this.installed || this.evfd < 0 || !b || b.file || b.released) fail('ENOMEM', 'no event fd prepared by the shim');
    this.server.bindFile(b, file);
    this.installed = true;
    return this.evfd;
  }

  lookup(fd: number): IommufdFile | undefined {
    if (this.installed && fd === this.evfd) return this.server.events.get(this.evtoken)?.file ?? undefined;
    const b = this.bindingOf(fd);
    return b && !b.released ? b.file ?? undefined : undefined;
  }

  close(fd: number): void {
    let b: EventBinding | undefined;
    if (this.installed && fd === this.evfd) {
      b = this.server.events.get(this.evtoken);
      this.installed = false;
    } else {
      b = this.bindingOf(fd);
    }
    if (!b || !b.file || b.released) fail('EBADF');
    this.server.releaseBinding(b);
  }
}

export class IommufdServer {
  readonly emu: Emulator;
  readonly registry = new PageRegistry();
  readonly procs = new Map<number, ProcState>();
  readonly ctxs = new Map<number, CtxEntry>();
  readonly events = new Map<number, EventBinding>();
  private readonly eventsByIno = new Map<bigint, EventBinding>();
  private readonly anchorsByIno = new Map<bigint, number>();
  private readonly conns = new Set<Conn>();
  private nextToken = 1;
  private netServer: net.Server | null = null;
  readonly socketPath: string;
  readonly log: (msg: string) => void;
  private readonly grantCaps: readonly CapName[];

  constructor(opts: ServerOptions) {
    this.grantCaps = opts.grantCaps ?? [];
    this.emu = opts.emulator ?? new Emulator({ profile: opts.profile ?? 'mainline' });
    this.socketPath = opts.socketPath;
    this.log = opts.log ?? ((m) => process.stderr.write(`[iommufd-emu] ${m}\n`));
  }

  /** Listen on the socket path (mode 0600; a stale socket file is replaced). */
  async listen(): Promise<void> {
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o700 });
    try {
      if (fs.statSync(this.socketPath).isSocket()) fs.unlinkSync(this.socketPath);
    } catch { /* absent */ }
    const srv = net.createServer({ allowHalfOpen: false }, (s) => {
      const c = new Conn(this, s);
      this.conns.add(c);
      s.on('close', () => this.conns.delete(c));
    });
    this.netServer = srv;
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(this.socketPath, () => resolve());
      });
    } finally {
      process.umask(oldMask);
    }
    fs.chmodSync(this.socketPath, 0o600);
  }

  /** Stop listening and drop every connection (contexts are torn down). */
  async close(): Promise<void> {
    for (const c of [...this.conns]) c.socket.destroy();
    await new Promise<void>((r) => (this.netServer ? this.netServer.close(() => r()) : r()));
    try {
      fs.unlinkSync(this.socketPath);
    } catch { /* gone */ }
  }

  /** An operation on an emulated fd outside the core (open, read/write, mmap, teardown), as a trace `note`. */
  private note(pid: number, tid: number, text: string): void {
    this.emu.bus.emit({ t: 'note', pid, tid, text });
  }

  /** Number of live contexts (tests). */
  get liveContexts(): number {
    return this.ctxs.size;
  }

  // ---- frames -------------------------------------------------------------------

  handle(c: Conn, type: number, f: Buffer): void {
    if (c.kind === 'new') {
      if (type === P.T_HELLO) return this.hello(c, f);
      if (type === P.T_OPEN) return this.open(c, f);
      if (type === P.T_EVPREP) return this.evprep(c, f);
      return c.reject(`${P.NAMES[type]} before HELLO/OPEN/EVPREP`);
    }
    if (c.kind === 'hello') {
      if (type === P.T_PROVE) return this.prove(c, f);
      return c.reject(`${P.NAMES[type]} before PROVE`);
    }
    if (c.kind !== 'control') return c.reject(`unexpected ${P.NAMES[type]} on ${c.kind} connection`);
    switch (type) {
      case P.T_IOCTL: return this.ioctl(c, f);
      case P.T_SYNC: return this.sync(c);
      case P.T_REGION: return this.region(c, f);
      case P.T_UNMAP: return this.unmap(c, f);
      case P.T_FILEOP: return this.fileop(c, f);
      case P.T_LOOKUP: return this.lookup(c, f);
      case P.T_MMAP: return this.mmap(c, f);
      case P.T_MRELEASE: return this.mrelease(c, f);
      default: return c.reject(`unexpected ${P.NAMES[type]} on control connection`);
    }
  }

  private hello(c: Conn, f: Buffer): void {
    const pid = f.readUInt32LE(8);
    const uid = f.readUInt32LE(16);
    let caps = f.readUInt32LE(20);
    for (const c of this.grantCaps) caps |= CAP_BITS[c];
    const memlock = f.readBigUInt64LE(24);
    const info: ProcessInfo = {
      pid, uid,
      capSysResource: !!(caps & P.CAP_BIT.SYS_RESOURCE),
      capIpcLock: !!(caps & P.CAP_BIT.IPC_LOCK),
      capSysRawio: !!(caps & P.CAP_BIT.SYS_RAWIO),
      memlockLimit: memlock === U64_MAX ? Infinity : Number(memlock),
      lockedPages: 0,
      alive: true,
    };
    let mem: ProcMemory;
    try {
      mem = new ProcMemory(info, this.registry);
    } catch (e) {
      c.send(P.statusReply(-ERRNO.EPERM));
      return c.reject(`cannot open /proc/${pid}/mem: ${(e as Error).message}`);
    }
    c.kind = 'hello';
    c.pid = pid;
    const st: ProcState = { pid, conn: c, mem, mmaps: new Map() };
    const nonce = randomBytes(16);
    c.pendingHello = { st, nonce };
    c.onEnd = () => mem.exit();
    const r = Buffer.alloc(P.REP_SIZE.hello);
    r.writeUInt32LE(r.length, 0);
    nonce.copy(r, 8);
    c.send(r);
  }

  /**
   * The client claims a pid; before its memory is served it must show the
   * nonce at an address of that process (only the process itself, or one
   * that could ptrace it anyway, can).
   */
  private prove(c: Conn, f: Buffer): void {
    const pending = c.pendingHello!;
    const addr = f.readBigUInt64LE(8);
    let seen: Uint8Array | null = null;
    try {
      seen = pending.st.mem.read(addr, 16);
    } catch { /* unreadable */ }
    if (!seen || !Buffer.from(seen).equals(pending.nonce)) {
      c.send(P.statusReply(-ERRNO.EPERM));
      return c.reject(`pid ${c.pid} did not prove its identity`);
    }
    c.pendingHello = null;
    const { st } = pending;
    const { pid, mem } = st;
    c.kind = 'control';
    const old = this.procs.get(pid);
    if (old) old.mem.exit(); // exec: the previous image is gone
    this.procs.set(pid, st);
    c.onEnd = () => {
      if (this.procs.get(pid) === st) this.procs.delete(pid);
      for (const h of st.mmaps.values()) h.close();
      st.mmaps.clear();
      mem.exit();
    };
    c.send(P.statusReply(0));
  }

  private open(c: Conn, f: Buffer): void {
    const pid = f.readUInt32LE(8);
    const failnth = f.readInt32LE(16);
    const clientFd = f.readInt32LE(20);
    const ino = f.readBigUInt64LE(24);
    const reply = Buffer.alloc(P.REP_SIZE.open);
    reply.writeUInt32LE(reply.length, 0);
    const st = this.procs.get(pid);
    if (!st) {
      reply.writeInt32LE(-ERRNO.ENXIO, 4);
      c.send(reply);
      return c.reject(`OPEN from pid ${pid} without a control connection`);
    }
    c.pid = pid;
    let ctx: IommufdCtx | null = null;
    const r = this.emulate(failnth, () => `open from pid ${pid}`, () => {
      ctx = this.emu.open(st.mem);
      return 0;
    });
    const err = r.ret;
    reply.writeInt32LE(r.failnth, 12);
    if (!ctx) {
      if (this.emu.bus.on) this.note(pid, f.readUInt32LE(12), `open("/dev/iommu") = ${errText(err)}`);
      reply.writeInt32LE(err, 4);
      c.send(reply);
      c.kind = 'anchor';
      return;
    }
    if (this.emu.bus.on) this.note(pid, f.readUInt32LE(12), `open("/dev/iommu") = ${clientFd}`);
    const token = this.nextToken++;
    const entry: CtxEntry = { token, ctx, conn: c };
    this.ctxs.set(token, entry);
    if (ino) this.anchorsByIno.set(ino, token);
    c.kind = 'anchor';
    c.onEnd = () => {
      if (this.emu.bus.on) this.note(pid, pid, `context of open() = ${clientFd} released (last reference to its fd closed)`);
      this.ctxs.delete(token);
      if (this.anchorsByIno.get(ino) === token) this.anchorsByIno.delete(ino);
      ctx!.put();
    };
    reply.writeUInt32LE(token, 8);
    // /dev/iommu has no poll method: the kernel reports it always readable and
    // writable. One byte left unread in the socket gives the same answer (sent
    // in the same write as the reply, so it is there when open() returns).
    c.send(Buffer.concat([reply, Buffer.from([0])]));
  }

  /**
   * mmap of an iommufd: the core validates and takes the references; the
   * region's current content is copied into the memfd the shim then maps.
   */
  private mmap(c: Conn, f: Buffer): void {
    const token = f.readUInt32LE(8);
    const prot = f.readUInt32LE(12);
    const offset = f.readBigUInt64LE(16);
    const length = f.readBigUInt64LE(24);
    const flags = f.readUInt32LE(32);
    const memfd = f.readInt32LE(36);
    const r = Buffer.alloc(P.REP_SIZE.mmap);
    r.writeUInt32LE(r.length, 0);
    const st = this.procs.get(c.pid);
    const entry = this.ctxs.get(token);
    let err = 0;
    if (!st || !entry) err = -ERRNO.EBADF;
    else {
      let h: MmapHandle | null = null;
      try {
        h = iommufdMmap(entry.ctx, offset, length, flags, prot);
        const fd = fs.openSync(`/proc/${c.pid}/fd/${memfd}`, 'r+');
        if (h.pages.length === 0) fs.closeSync(fd);
        else shareRegion(h.pages, fd, this.registry);
        const id = this.nextToken++;
        st.mmaps.set(id, h);
        r.writeUInt32LE(id, 8);
      } catch (e) {
        h?.close();
        err = isErrno(e) ? -e.errno : -ERRNO.ENOMEM;
      }
    }
    if (this.emu.bus.on) this.note(c.pid, c.pid,
      `mmap(iommufd, offset=0x${offset.toString(16)}, length=0x${length.toString(16)}) = ${err ? errText(err) : 0}`);
    r.writeInt32LE(err, 4);
    c.send(r);
  }

  private mrelease(c: Conn, f: Buffer): void {
    const id = f.readUInt32LE(8);
    const st = this.procs.get(c.pid);
    const h = st?.mmaps.get(id);
    if (h) {
      st!.mmaps.delete(id);
      h.close();
    }
    c.send(P.statusReply(h ? 0 : -ERRNO.EINVAL));
  }

  private lookup(c: Conn, f: Buffer): void {
    const ino = f.readBigUInt64LE(8);
    const r = Buffer.alloc(P.REP_SIZE.lookup);
    r.writeUInt32LE(r.length, 0);
    const anchor = this.anchorsByIno.get(ino);
    const ev = this.eventsByIno.get(ino);
    if (anchor !== undefined && this.ctxs.has(anchor)) {
      r.writeUInt32LE(P.LOOKUP_IOMMUFD, 4);
      r.writeUInt32LE(anchor, 8);
    } else if (ev && ev.file && !ev.released) {
      r.writeUInt32LE(P.LOOKUP_EVENT, 4);
      r.writeUInt32LE(ev.token, 8);
    }
    c.send(r);
  }

  private evprep(c: Conn, f: Buffer): void {
    const ino = f.readBigUInt64LE(8);
    const token = this.nextToken++;
    const secret = randomBytes(8);
    const b: EventBinding = {
      token, ino, conn: c, file: null, released: false, signalled: false, secret: secret.readBigUInt64LE(0),
    };
    this.events.set(token, b);
    if (ino) this.eventsByIno.set(ino, b);
    c.kind = 'event';
    c.onEnd = () => {
      this.events.delete(token);
      if (this.eventsByIno.get(ino) === b) this.eventsByIno.delete(ino);
      if (b.file && !b.released) this.releaseBinding(b);
    };
    const r = Buffer.alloc(P.REP_SIZE.evprep);
    r.writeUInt32LE(r.length, 0);
    r.writeUInt32LE(token, 4);
    secret.copy(r, 8);
    c.send(r);
  }

  bindFile(b: EventBinding, file: IommufdFile): void {
    b.file = file;
    file.onReadiness = () => this.signal(b);
  }

  releaseBinding(b: EventBinding): void {
    if (b.released) return;
    b.released = true;
    const f = b.file;
    if (f) {
      f.onReadiness = undefined;
      f.release();
    }
  }

  /** The event binding behind the client's fd `fd` (socket inode via /proc). */
  bindingOfFd(pid: number, fd: number): EventBinding | undefined {
    if (fd < 0) return undefined;
    let link: string;
    try {
      link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      return undefined;
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    return m ? this.eventsByIno.get(BigInt(m[1]!)) : undefined;
  }

  /** Put one readiness byte in the client's socket while the file is readable. */
  private signal(b: EventBinding): void {
    if (!b.file || b.released || b.signalled) return;
    if (b.file.poll() & POLLIN) {
      b.signalled = true;
      b.conn.send(Buffer.from([1]));
    }
  }

  private ioctl(c: Conn, f: Buffer): void {
    const token = f.readUInt32LE(8);
    const pid = f.readUInt32LE(12);
    const tid = f.readUInt32LE(16);
    const request = f.readUInt32LE(20);
    const arg = f.readBigUInt64LE(24);
    const failnth = f.readInt32LE(32);
    const evfd = f.readInt32LE(36);
    const evtoken = f.readUInt32LE(40);
    const gen = f.readUInt32LE(44);
    const memlockLo = f.readUInt32LE(48);
    const memlockHi = f.readUInt32LE(52);
    const hintFd = f.readInt32LE(60);
    const st = this.procs.get(c.pid);
    const entry = this.ctxs.get(token);
    let ret: number;
    let outFailnth = 0;
    let fdt: CallFdTable | null = null;
    let written: InlineWindow | null = null;
    if (!st || st.conn !== c) {
      ret = -ERRNO.EBADF;
    } else if (!entry) {
      ret = -ERRNO.EBADF;
    } else {
      st.mem.process.memlockLimit = memlockLo === 0xffffffff && memlockHi === 0xffffffff ? Infinity : memlockHi * 2 ** 32 + memlockLo;
      st.mem.setGeneration(gen);
      // The struct's first bytes came inline: reads of them are served from
      // that copy, writes to them go back with the reply (see ProcMemory).
      const base = P.REQ_SIZE[P.T_IOCTL]!;
      st.mem.beginInline(arg, f, base, f.length - base);
      try {
        fdt = hintFd >= 0
          ? new CallFdTable(this, pid, evfd, evtoken, hintFd, f.readUInt32LE(64), f.readBigUInt64LE(72))
          : new CallFdTable(this, pid, evfd, evtoken);
        const calls = fdt;
        ({ ret, failnth: outFailnth } = this.emulate(failnth, () => `ioctl 0x${request.toString(16)} from pid ${pid}`,
          () => entry.ctx.ioctl(request, arg, { mem: st.mem, fds: calls, tid })));
        written = st.mem.endInline();
      } finally {
        st.mem.flushInline(); // only if something above threw: no reply will carry the bytes
      }
    }
    if (ret! < 0 && fdt?.installed) {
      // The handler installed the fd and then failed without closing it: roll back.
      const b = this.events.get(evtoken);
      if (b) this.releaseBinding(b);
      fdt.installed = false;
    }
    if (this.events.size) for (const b of this.events.values()) this.signal(b);
    // With the bytes the call wrote to the inline copy of the struct: the shim stores them.
    const wlen = written ? written.hi - written.lo : 0;
    const reply = Buffer.allocUnsafe(P.REP_SIZE.ioctl + wlen);
    reply.writeUInt32LE(reply.length, 0);
    reply.writeUInt32LE(0, 4);
    const retHi = Math.floor(ret! / 2 ** 32); // s64 ret, exact for every JS integer result
    reply.writeUInt32LE(ret! - retHi * 2 ** 32, 8);
    reply.writeInt32LE(retHi, 12);
    reply.writeInt32LE(outFailnth, 16);
    reply.writeUInt32LE(fdt?.installed ? 1 : 0, 20);
    reply.writeUInt32LE(written ? written.lo : 0, 24);
    reply.writeUInt32LE(wlen, 28);
    for (let i = 0; i < wlen; i++) reply[P.REP_SIZE.ioctl + i] = written!.data[written!.lo + i]!;
    c.send(reply);
  }

  /**
   * Run one emulated call with the client thread's fail-nth counter armed
   * (0 or negative = off) and return its result as the kernel would (negative
   * errno on failure) plus the counter to hand back. Anything but an errno is
   * an emulator bug: logged, answered EIO, and the server keeps serving.
   */
  private emulate(failnth: number, what: () => string, fn: () => number): { ret: number; failnth: number } {
    let ret: number;
    this.emu.failNth = failnth > 0 ? failnth : 0;
    try {
      ret = fn();
    } catch (e) {
      if (isErrno(e)) ret = -e.errno;
      else {
        this.log(`${what()}: emulator bug: ${(e as Error).stack ?? e}`);
        ret = -ERRNO.EIO;
      }
    }
    const left = failnth > 0 ? this.emu.failNth : failnth;
    this.emu.failNth = 0;
    return { ret, failnth: left };
  }

  private fileop(c: Conn, f: Buffer): void {
    const evtoken = f.readUInt32LE(8);
    const op = f.readUInt32LE(12);
    const buf = f.readBigUInt64LE(16);
    const count = f.readBigUInt64LE(24);
    const pos = f.readBigUInt64LE(32);
    const failnth = f.readInt32LE(40);
    const gen = f.readUInt32LE(44);
    const st = this.procs.get(c.pid);
    st?.mem.setGeneration(gen);
    const b = this.events.get(evtoken);
    const reply = Buffer.alloc(P.REP_SIZE.fileop);
    reply.writeUInt32LE(reply.length, 0);
    let ret: number;
    if (!st || !b || !b.file || b.released) {
      ret = -ERRNO.EBADF;
    } else {
      const n = Number(count > 0x7ffff000n ? 0x7ffff000n : count);
      const file = b.file;
      const r = this.emulate(failnth, () => `file op on ${file.name}`,
        () => (op === P.FILEOP_WRITE ? file.write(st.mem, buf, n, pos) : file.read(st.mem, buf, n, pos)));
      ret = r.ret;
      reply.writeInt32LE(r.failnth, 16);
      if (this.emu.bus.on) this.note(c.pid, c.pid, `${op === P.FILEOP_WRITE ? 'write' : 'read'}(${b.file.name}, ${n}) = ${ret >= 0 ? ret : errText(ret)}`);
      if (b.signalled && !(b.file.poll() & POLLIN)) {
        b.signalled = false;
        reply.writeUInt32LE(1, 20); // the client takes the readiness byte back
      }
    }
    reply.writeBigInt64LE(BigInt(ret), 8);
    for (const e of this.events.values()) this.signal(e);
    c.send(reply);
  }

  /**
   * Reply once every hang-up that happened before this request was processed:
   * the shim closes the fd first, then syncs, so teardown is done on return.
   */
  private sync(c: Conn): void {
    setImmediate(() => setImmediate(() => {
      this.registry.collect();
      c.send(P.statusReply(0));
    }));
  }

  private region(c: Conn, f: Buffer): void {
    const va = f.readBigUInt64LE(8);
    const len = f.readBigUInt64LE(16);
    const off = f.readBigUInt64LE(24);
    const memfd = f.readInt32LE(32);
    const flags = f.readUInt32LE(36);
    const st = this.procs.get(c.pid);
    let status = 0;
    try {
      if (!st) fail('EBADF');
      const obj = this.registry.openShared(c.pid, memfd, !!(flags & P.REGION_HUGE));
      st.mem.addRegion(va, len, obj, off);
    } catch (e) {
      status = isErrno(e) ? -e.errno : -ERRNO.EINVAL;
      this.log(`REGION from pid ${c.pid}: ${(e as Error).message}`);
    }
    c.send(P.statusReply(status));
  }

  private unmap(c: Conn, f: Buffer): void {
    const va = f.readBigUInt64LE(8);
    const len = f.readBigUInt64LE(16);
    this.procs.get(c.pid)?.mem.removeRange(va, len);
    this.registry.collect();
    c.send(P.statusReply(0));
  }
}

/**
 * Make the region's pages live in `fd` (the memfd the client maps): their
 * current content is copied in, then the page objects read and write the
 * memfd, so the driver and the client mapping see each other's writes. A page
 * moved from an earlier mapping's memfd keeps that file's content as its own.
 */
const regionFdOf = new WeakMap<PhysPage, number>();
const regionFdUsers = new Map<number, number>();

function shareRegion(pages: readonly PhysPage[], fd: number, registry: PageRegistry): void {
  for (const [i, p] of pages.entries()) {
    const data = p.read(0, PAGE_SIZE);
    fs.writeSync(fd, data, 0, PAGE_SIZE, i * PAGE_SIZE);
    const old = regionFdOf.get(p);
    if (old !== undefined) {
      const n = (regionFdUsers.get(old) ?? 1) - 1;
      if (n > 0) regionFdUsers.set(old, n);
      else {
        regionFdUsers.delete(old);
        fs.closeSync(old);
      }
    }
    regionFdOf.set(p, fd);
    regionFdUsers.set(fd, (regionFdUsers.get(fd) ?? 0) + 1);
    const base = i * PAGE_SIZE;
    const page = p as PhysPage & { read: PhysPage['read']; write: PhysPage['write'] };
    page.read = (offset: number, length: number): Uint8Array => {
      registry.flushInline(); // the memfd may be where the caller's struct lives
      const out = new Uint8Array(length);
      fs.readSync(fd, out, 0, length, base + offset);
      return out;
    };
    page.write = (offset: number, d: Uint8Array): void => {
      registry.flushInline();
      fs.writeSync(fd, d, 0, d.length, base + offset);
    };
  }
}

/**
 * Register the core's ioctl handlers (src/core/main.ts). Loaded dynamically so
 * that a core still under construction degrades to ENOTTY instead of failing
 * to start; the reason is logged.
 */
export async function loadHandlers(log: (m: string) => void = (m) => process.stderr.write(`[iommufd-emu] ${m}\n`)): Promise<boolean> {
  try {
    await import('../core/main.js');
    return true;
  } catch (e) {
    log(`warning: core handlers not loaded (${(e as Error).message}); ioctls will fail with ENOTTY`);
    return false;
  }
}

/** The default socket path: $XDG_RUNTIME_DIR/iommufd-emu.sock (or /tmp/iommufd-emu-<uid>/). */
export function defaultSocketPath(): string {
  const dir = process.env.XDG_RUNTIME_DIR || path.join('/tmp', `iommufd-emu-${process.getuid?.() ?? 0}`);
  return path.join(dir, 'iommufd-emu.sock');
}
