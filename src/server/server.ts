// The socket server: one process serving many shim clients (frames: wire.ts).
// Each open("/dev/iommu") in a client is one IommufdCtx whose lifetime is its
// anchor connection; ioctls arrive on the calling process's control connection
// and reach memory through /proc/<pid>/mem (procmem.ts). Handlers run
// synchronously, so one frame is one complete kernel call.
//
// Isolation: a process reaches a file (context or event file) only through an
// fd it holds, as in the kernel. Files are named by unguessable tokens, handed
// out only to holders of the fd (the OPEN/EVPREP reply travels on the fd
// itself; LOOKUP answers only for the caller's own fds), and every frame naming
// a file is checked against the files the sending process has shown it holds
// (opened, or verified once through /proc/<pid>/fd: inherited, dup'ed, received
// over SCM_RIGHTS). A frame naming a file its process does not hold is refused
// and the connection closed; the file's holders see nothing.
import { settingsFromBits } from '../core/fault_inject.js';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { IommufdCtx } from '../core/context.js';
import { Emulator } from '../core/emulator.js';
import { POLLIN, vfsPoll, vfsRead, vfsWrite, type FdTable, type IommufdFile } from '../core/file.js';
import { vfioOf } from '../core/vfio.js';
import type { BarMapping } from '../core/vfio_device.js';
import type { EventFdCtx, FdObject, FdResolver, VfioCaller, VfioFile } from '../core/vfio_file.js';
import type { AccessSize } from '../devices/device.js';
import { iommufdMmap, type MmapHandle } from '../core/mmap.js';
import { PAGE_SIZE, type PhysPage } from '../core/usermem.js';
import { errnoName, fail, isErrno, ERRNO } from '../uapi/errno.js';
import type { ProfileName } from '../uapi/profiles.js';
import { fdRules, KINDS } from './fdrules.js';
import { ClientProcess } from './credentials.js';
import { FdHelper } from './fdhelper.js';
import { PageRegistry, ProcMemory, type InlineWindow } from './procmem.js';
import { writeMachineView } from './sysfs.js';
import { loadServerAddon } from './native.js';
import { DEFAULT_SERVER_SPIN_US, UnixTransport, type Link, type LinkEvents, type Transport } from './transport.js';
import * as W from './wire.js';

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
  /** How frames move (default: the Unix socket at socketPath, with the fast path unless turned off). */
  transport?: Transport;
  /**
   * Where to write the machine's sysfs and /dev/vfio view (sysfs.ts) that the
   * shim serves those paths from (default: a private directory, removed on close).
   */
  viewDir?: string;
  /**
   * The shared-memory fast path (transport.ts). Default: on, unless the
   * environment says IOMMUFD_EMU_FASTPATH=0 (which the shim reads too).
   */
  fastPath?: boolean;
  /** The server's idle window on the fast path, microseconds (default: $IOMMUFD_EMU_SERVER_SPIN_US, else DEFAULT_SERVER_SPIN_US). */
  spinUs?: number;
}

/** Whether the environment leaves the fast path on (IOMMUFD_EMU_FASTPATH=0 turns it off, for server and shim). */
export function fastPathWanted(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.IOMMUFD_EMU_FASTPATH !== '0';
}

/** Reasons the fast path is off, logged once per server process. */
let fastPathWhyLogged = false;

function defaultTransport(opts: ServerOptions, log: (m: string) => void): Transport {
  if (!(opts.fastPath ?? fastPathWanted())) return new UnixTransport(opts.socketPath);
  const mapper = loadServerAddon();
  if (typeof mapper === 'string') {
    if (!fastPathWhyLogged) log(`fast path off (Unix socket only): ${mapper}`);
    fastPathWhyLogged = true;
    return new UnixTransport(opts.socketPath);
  }
  const env = Number(process.env.IOMMUFD_EMU_SERVER_SPIN_US);
  // One CPU: spinning would only keep the client from running.
  const spinUs = opts.spinUs ?? (process.env.IOMMUFD_EMU_SERVER_SPIN_US && env >= 0 ? env
    : os.availableParallelism() < 2 ? 0 : DEFAULT_SERVER_SPIN_US);
  return new UnixTransport(opts.socketPath, { mapper, spinUs });
}

export type CapName = 'sys_resource' | 'ipc_lock' | 'sys_rawio';
export const CAP_NAMES: readonly CapName[] = ['sys_resource', 'ipc_lock', 'sys_rawio'];
const CAP_BITS: Record<CapName, number> = {
  sys_resource: W.CAP.SYS_RESOURCE, ipc_lock: W.CAP.IPC_LOCK, sys_rawio: W.CAP.SYS_RAWIO,
};

function errText(neg: number): string {
  return errnoName(-neg) ?? `errno ${-neg}`;
}

/** EPROTO (outside the uAPI's errno table): a shim built for another wire version. */
const EPROTO = 71;


/** A fresh unguessable token (never 0, which means "none" on the wire). */
function newToken(): bigint {
  for (;;) {
    const t = randomBytes(8).readBigUInt64LE(0);
    if (t !== 0n) return t;
  }
}

/** The inode of the socket behind the client's fd, from /proc (null: not a socket, or gone). */
function socketInode(pid: number, fd: number): bigint | null {
  if (fd < 0) return null;
  let link: string;
  try {
    link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
  } catch {
    return null;
  }
  const m = /^socket:\[(\d+)\]$/.exec(link);
  return m ? BigInt(m[1]!) : null;
}

/** A BAR mapping of a VFIO device file (trapped MMIO): the file stays alive while it is mapped. */
interface BarEntry {
  mapping: BarMapping;
  binding: EventBinding;
  /** VMA pieces (MREF) in the mapping process. */
  pieces: number;
  /** The mapping process (its children inherit the mapping). */
  pid: number;
}

/** Is `pid` a descendant of `ancestor` (the parent chain in /proc)? */
function descendantOf(pid: number, ancestor: number): boolean {
  for (let p = pid, i = 0; p > 1 && i < 64; i++) {
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${p}/stat`, 'latin1');
    } catch {
      return false;
    }
    p = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (p === ancestor) return true;
  }
  return false;
}

interface ProcState {
  pid: number;
  conn: Conn;
  mem: ProcMemory;
  /** Given to this process image only (PROVE reply): OPEN and EVPREP show it. */
  session: bigint;
  /** Tokens of files this process image has shown it holds an fd to. */
  held: Set<bigint>;
  /** This process image's iommufd mappings: handle -> one reference per VMA piece. */
  maps: MapTable;
}

/** One iommufd mapping: one MmapHandle per VMA piece (vm_ops open/close), and the memfd it maps. */
interface Mapping {
  pieces: MmapHandle[];
  region: RegionFd | null;
}

/** Mappings of iommufd fds a connection owns, by handle. */
type MapTable = Map<bigint, Mapping>;

/** A fork's holder socket: the child inherits it and holds its copies of the parent's mappings through it. */
interface HolderEntry extends FileEntry {
  pid: number;
  maps: MapTable;
}

/** Most VMA pieces one MREF may add (a split adds one or two). */
const MREF_MAX = 1 << 16;

function closeMapping(m: Mapping): void {
  for (const h of m.pieces) h.close();
  m.pieces.length = 0;
  m.region?.put();
  m.region = null;
}

function closeMaps(maps: MapTable): void {
  for (const m of maps.values()) closeMapping(m);
  maps.clear();
}

/** Something a client fd is: the socket (anchor or event connection) is that fd. */
interface FileEntry {
  token: bigint;
  /** Inode of the client's socket: how /proc/<pid>/fd shows a holder. */
  ino: bigint;
  conn: Conn;
}

interface CtxEntry extends FileEntry {
  ctx: IommufdCtx;
}

interface EventBinding extends FileEntry {
  /** The process that prepared it: only its calls may install a file in it. */
  pid: number;
  file: IommufdFile | null;
  /** The file's reference was dropped (fd closed everywhere, or rolled back). */
  released: boolean;
  /** One readiness byte is sitting in the client's socket buffer. */
  signalled: boolean;
  /** BAR mappings of the file (VFIO devices): its release waits for them. */
  mapped?: number;
  /** The fd is gone everywhere but a mapping still holds the file. */
  releasePending?: boolean;
  /** The file position (VFIO files: read/write without one use and advance it). */
  pos?: bigint;
}

/** Is `f` a VFIO file (device, group): ioctls, positional I/O, trapped mmap. */
function isVfio(f: IommufdFile | null): f is VfioFile {
  return !!f && typeof (f as Partial<VfioFile>).ioctl === 'function';
}

/** Why a frame is refused: its connection is closed with this reason logged. */
class Forged extends Error {}

class Conn implements LinkEvents {
  kind: W.ConnKind = 'new';
  pid = 0;
  onEnd: (() => void) | null = null;
  /** Between HELLO and PROVE: the state to publish and the nonce it must show. */
  pendingHello: { st: ProcState; nonce: Buffer } | null = null;
  /** A holder connection's entry. */
  holder: HolderEntry | null = null;

  constructor(readonly server: IommufdServer, readonly link: Link) {}

  get id(): number {
    return this.link.id;
  }

  send(b: Uint8Array): void {
    this.link.send(b);
  }

  private describe(): string {
    return `connection ${this.id} (${this.kind}${this.pid ? `, pid ${this.pid}` : ''})`;
  }

  /** Close this connection only, with a logged reason. */
  reject(reason: string): void {
    this.server.log(`${this.describe()}: ${reason}; closing it`);
    this.link.destroy();
  }

  header(len: number, type: number): string | null {
    const def = W.REQ_BY_TYPE.get(type);
    if (!def) return `unknown type ${type}`;
    const why = W.badLength(def, len);
    return why ? `${def.name} of ${why}` : null;
  }

  frame(f: Buffer): void {
    try {
      this.server.handle(this, f);
    } catch (e) {
      if (e instanceof Forged) {
        // a clear answer before the close: refused (the frame's reply would be the wrong size anyway)
        this.send(W.encodeReply({ type: f.readUInt32LE(4) }, W.REP.status, { status: -ERRNO.EPERM }));
        return this.reject(`refused: ${e.message}`);
      }
      this.server.bug(`connection ${this.id}: ${W.REQ_BY_TYPE.get(f.readUInt32LE(4))?.name ?? 'frame'}`, e);
      this.reject('internal error');
    }
  }

  malformed(reason: string): void {
    this.server.log(`${this.describe()}: ${reason}; closing it`);
  }

  end(truncated: number): void {
    if (truncated) this.server.log(`connection ${this.id} (${this.kind}): truncated frame (${truncated} bytes) at EOF`);
    const cb = this.onEnd;
    this.onEnd = null;
    try {
      cb?.();
    } catch (e) {
      this.server.bug(`connection ${this.id}: teardown`, e);
    }
  }
}

/** The FdTable of one call: install() hands out the event fd the shim prepared. */
class CallFdTable implements FdTable, FdResolver {
  installed = false;
  constructor(private readonly server: IommufdServer, private readonly st: ProcState,
    private readonly evfd: number, private readonly ev: EventBinding | undefined,
    private readonly hintFd = -1, private readonly hint: EventBinding | undefined = undefined) {}

  /**
   * The binding behind the caller's fd `fd`. The shim names the one it
   * expects the call to look up (FDRULE.NAMES; checked like every file the
   * frame names); any other fd is resolved through /proc/<pid>/fd.
   */
  private bindingOf(fd: number): EventBinding | undefined {
    if (fd >= 0 && fd === this.hintFd) return this.hint;
    return this.server.bindingOfFd(this.st, fd);
  }

  /** The installed fd is not close-on-exec (the shim clears the flag the prepared socket has). */
  keepOnExec = false;

  install(file: IommufdFile, opts?: { cloexec?: boolean }): number {
    const b = this.ev;
    if (this.installed || this.evfd < 0 || !b || b.file || b.released) fail('ENOMEM', 'no event fd prepared by the shim');
    this.server.bindFile(b, file);
    this.installed = true;
    this.keepOnExec = opts?.cloexec === false;
    return this.evfd;
  }

  lookup(fd: number): IommufdFile | undefined {
    if (this.installed && fd === this.evfd) return this.ev?.file ?? undefined;
    const b = this.bindingOf(fd);
    return b && !b.released ? b.file ?? undefined : undefined;
  }

  isOpen(fd: number): boolean {
    if (fd < 0) return false;
    if (this.installed && fd === this.evfd) return true;
    try {
      fs.lstatSync(`/proc/${this.st.pid}/fd/${fd}`);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * What the caller's fd `fd` is, as VFIO asks (an fd number inside a struct):
   * one of our files (its socket), an eventfd (taken through the fd helper), or other.
   */
  resolve(fd: number): FdObject | undefined {
    if (fd < 0) return undefined;
    if (this.installed && fd === this.evfd) {
      const f = this.ev?.file ?? null;
      return isVfio(f) ? { kind: 'vfio', file: f } : { kind: 'other' };
    }
    const ctx = this.server.ctxOfFd(this.st, fd);
    if (ctx) return { kind: 'iommufd', ctx };
    const b = this.bindingOf(fd);
    if (b && b.file && !b.released) return isVfio(b.file) ? { kind: 'vfio', file: b.file } : { kind: 'other' };
    let link: string;
    try {
      link = fs.readlinkSync(`/proc/${this.st.pid}/fd/${fd}`);
    } catch {
      return undefined;
    }
    if (link !== 'anon_inode:[eventfd]') return { kind: 'other' };
    return { kind: 'eventfd', get: () => this.server.eventfdCtx(this.st.pid, fd) };
  }

  close(fd: number): void {
    let b: EventBinding | undefined;
    if (this.installed && fd === this.evfd) {
      b = this.ev;
      this.installed = false;
    } else {
      b = this.bindingOf(fd);
    }
    if (!b || !b.file || b.released) fail('EBADF');
    this.server.releaseBinding(b);
  }
}

type ReqHandler<K extends W.RequestName> = (s: IommufdServer, c: Conn, f: W.ReqValues<K>, raw: Buffer) => void;

/** One handler per request of wire.ts (on which connections it is accepted is part of the description). */
const HANDLERS: { [K in W.RequestName]: ReqHandler<K> } = {
  HELLO: (s, c, f) => s.hello(c, f),
  PROVE: (s, c, f) => s.prove(c, f),
  OPEN: (s, c, f, raw) => s.open(c, f, raw),
  EVPREP: (s, c, f) => s.evprep(c, f),
  IOCTL: (s, c, f, raw) => s.ioctl(c, f, raw),
  SYNC: (s, c, f) => s.sync(c, f),
  REGION: (s, c, f) => s.region(c, f),
  UNMAP: (s, c, f) => s.unmap(c, f),
  FILEOP: (s, c, f) => s.fileop(c, f),
  LOOKUP: (s, c, f) => s.lookup(c, f),
  MMAP: (s, c, f) => s.mmap(c, f),
  MREF: (s, c, f) => s.mref(c, f),
  HOLDER: (s, c, f) => s.holderConn(c, f),
  MDUP: (s, c, f) => s.mdup(c, f),
  PROCSTAT: (s, c, f) => s.procstat(c, f),
  MACHINE: (s, c) => s.machine(c),
  MMIO: (s, c, f) => s.mmio(c, f),
  FAST: (s, c, f) => s.fast(c, f),
};

export class IommufdServer {
  readonly emu: Emulator;
  readonly registry = new PageRegistry();
  readonly procs = new Map<number, ProcState>();
  readonly ctxs = new Map<bigint, CtxEntry>();
  readonly events = new Map<bigint, EventBinding>();
  private readonly eventsByIno = new Map<bigint, EventBinding>();
  private readonly anchorsByIno = new Map<bigint, CtxEntry>();
  private readonly holders = new Map<bigint, HolderEntry>();
  private nextHandle = 1n;
  private readonly transport: Transport;
  readonly socketPath: string;
  readonly log: (msg: string) => void;
  private readonly grantCaps: readonly CapName[];
  /** The granted capabilities as CAP bits, added to what every frame reports. */
  private readonly grants: number;
  /** The PROVE reply's tables (kinds, fd rules), encoded once. */
  private readonly tables: { nkinds: number; nrules: number; bytes: Buffer };
  /** The machine's sysfs and /dev/vfio view (sysfs.ts); made private when not given. */
  private viewDir: string;
  private readonly ownView: boolean;
  /** Eventfds of clients held for VFIO (fdhelper.ts), started on first use. */
  private readonly fdHelper: FdHelper;
  /** Trapped BAR mappings by handle (any process may use one its fd holder mapped; MMIO checks the file). */
  private readonly bars = new Map<bigint, BarEntry>();

  constructor(opts: ServerOptions) {
    this.grantCaps = opts.grantCaps ?? [];
    this.grants = this.grantCaps.reduce((m, g) => m | CAP_BITS[g], 0);
    this.emu = opts.emulator ?? new Emulator({ profile: opts.profile ?? 'mainline' });
    this.socketPath = opts.socketPath;
    this.log = opts.log ?? ((m) => process.stderr.write(`[iommufd-emu] ${m}\n`));
    this.transport = opts.transport ?? defaultTransport(opts, this.log);
    // VMA lookups by PROCMAP_QUERY whenever the addon is there, whichever the transport.
    const addon = loadServerAddon();
    if (typeof addon !== 'string') this.registry.vmaQuery = addon.vmas;
    const rules = fdRules(this.emu);
    const k = W.RECORD.kind;
    const r = W.RECORD.fdrule;
    const bytes = Buffer.alloc(KINDS.length * k.size + rules.length * r.size);
    KINDS.forEach((v, i) => W.encodeInto(k, v, bytes, i * k.size));
    rules.forEach((v, i) => W.encodeInto(r, v, bytes, KINDS.length * k.size + i * r.size));
    if (bytes.length > W.REP.prove.tailMax) throw new Error(`PROVE tables of ${bytes.length} bytes exceed the frame's tail`);
    this.tables = { nkinds: KINDS.length, nrules: rules.length, bytes };
    this.ownView = !opts.viewDir;
    this.viewDir = opts.viewDir ?? '';
    this.fdHelper = new FdHelper(this.log);
  }

  /** Listen on the socket path (mode 0600; a stale socket file is replaced). */
  async listen(): Promise<void> {
    if (this.ownView) this.viewDir = fs.mkdtempSync(path.join(path.dirname(this.socketPath), '.iommufd-emu-machine-'));
    writeMachineView(this.viewDir, vfioOf(this.emu));
    await this.transport.listen((link) => new Conn(this, link));
  }

  /** Stop listening and drop every connection (contexts are torn down). */
  async close(): Promise<void> {
    await this.transport.close();
    this.fdHelper.close();
    if (this.ownView) fs.rmSync(this.viewDir, { recursive: true, force: true });
  }

  /** The directory the machine's view was written to (the shim's MACHINE answer). */
  get machineView(): string {
    return this.viewDir;
  }

  /** An eventfd reference (eventfd_ctx) on fd `fd` of process `pid`, held by the fd helper. */
  eventfdCtx(pid: number, fd: number): EventFdCtx {
    const id = this.fdHelper.get(pid, fd);
    let put = false;
    return {
      signal: () => {
        if (!put) this.fdHelper.signal(id);
      },
      put: () => {
        if (put) return;
        put = true;
        this.fdHelper.put(id);
      },
    };
  }

  /** The context behind the client's fd `fd`, if it is one of our anchors (socket inode via /proc). */
  ctxOfFd(st: ProcState, fd: number): IommufdCtx | undefined {
    const ino = socketInode(st.pid, fd);
    const a = ino === null ? undefined : this.anchorsByIno.get(ino);
    if (!a || this.ctxs.get(a.token) !== a) return undefined;
    st.held.add(a.token);
    return a.ctx;
  }

  /** An operation on an emulated fd outside the core (open, read/write, mmap, teardown), as a trace `note`. */
  private note(pid: number, tid: number, text: string): void {
    this.emu.bus.emit({ t: 'note', pid, tid, text });
  }

  /** Control connections on the fast path now, whether the server is polling them, frames taken from slots so far (tests). */
  get fastPath(): { links: number; spinning: boolean; frames: number } {
    const t = this.transport;
    return t instanceof UnixTransport ? { links: t.fastLinks, spinning: t.fastSpinning, frames: t.slotFrames }
      : { links: 0, spinning: false, frames: 0 };
  }

  /** Number of live contexts (tests). */
  get liveContexts(): number {
    return this.ctxs.size;
  }

  // ---- frames -------------------------------------------------------------------

  handle(c: Conn, raw: Buffer): void {
    const def = W.REQ_BY_TYPE.get(raw.readUInt32LE(4))!; // header() let only known types through
    const why = W.badLength(def, raw.length, W.tailLength(def, raw));
    if (why) return c.reject(`malformed frame: ${def.name} of ${why}`);
    if (!def.on.includes(c.kind)) {
      const want = def.on.join('/');
      return c.reject(c.kind === 'new' || c.kind === 'hello'
        ? `${def.name} before ${c.kind === 'new' ? 'HELLO/OPEN/EVPREP' : 'PROVE'}`
        : `unexpected ${def.name} on ${c.kind} connection (accepted on ${want})`);
    }
    const f = W.decode(def, raw);
    (HANDLERS[def.name as W.RequestName] as ReqHandler<W.RequestName>)(this, c, f as never, raw);
  }

  private reply<F extends Record<string, W.WireType>>(c: Conn, req: { readonly type: number }, rep: W.WireStruct<F>,
    v: Partial<W.Values<F>>, tail?: Uint8Array): void {
    c.send(W.encodeReply(req, rep, v, tail));
  }

  private status(c: Conn, req: { readonly type: number }, status: number): void {
    this.reply(c, req, W.REP.status, { status });
  }

  /** The control connection's process; every control frame comes from a proven one. */
  private procOf(c: Conn): ProcState {
    const st = this.procs.get(c.pid);
    if (!st || st.conn !== c) throw new Forged('frame on a control connection whose process image was replaced');
    return st;
  }

  /**
   * Does `st`'s process hold `file`? Known holders are remembered; otherwise
   * the fd the frame names must be a socket with the file's inode.
   */
  private holds(st: ProcState, file: FileEntry, fd: number): boolean {
    if (st.held.has(file.token)) return true;
    if (socketInode(st.pid, fd) !== file.ino) return false;
    st.held.add(file.token);
    return true;
  }

  /** The file a frame names, checked: undefined if it is gone; Forged if the process does not hold it. */
  private named<T extends FileEntry>(st: ProcState, map: Map<bigint, T>, token: bigint, fd: number, what: string): T | undefined {
    const file = map.get(token);
    if (!file) {
      // Closed meanwhile (another thread), or never existed: a guessed token is refused.
      if (st.held.has(token)) return undefined;
      throw new Forged(`${what} names a file that pid ${st.pid} does not hold`);
    }
    if (!this.holds(st, file, fd)) throw new Forged(`${what} names a file that pid ${st.pid} does not hold (fd ${fd})`);
    return file;
  }

  hello(c: Conn, f: W.ReqValues<'HELLO'>): void {
    const req = W.REQ.HELLO;
    if (f.version !== W.WIRE_VERSION) {
      this.reply(c, req, W.REP.hello, { status: -EPROTO });
      return c.reject(`HELLO of wire version ${f.version} (this server speaks ${W.WIRE_VERSION}: rebuild the shim)`);
    }
    const pid = f.pid;
    const info = new ClientProcess(pid, f.uid, f.caps | this.grants, f.memlock);
    let mem: ProcMemory;
    try {
      mem = new ProcMemory(info, this.registry);
    } catch (e) {
      this.reply(c, req, W.REP.hello, { status: -ERRNO.EPERM });
      return c.reject(`cannot open /proc/${pid}/mem: ${(e as Error).message}`);
    }
    c.kind = 'hello';
    c.pid = pid;
    const st: ProcState = { pid, conn: c, mem, session: newToken(), held: new Set(), maps: new Map() };
    const nonce = randomBytes(16);
    c.pendingHello = { st, nonce };
    c.onEnd = () => mem.exit();
    this.reply(c, req, W.REP.hello, { nonce });
  }

  /**
   * The client claims a pid; before its memory is served it must show the
   * nonce at an address of that process (only the process itself, or one
   * that could ptrace it anyway, can).
   */
  prove(c: Conn, f: W.ReqValues<'PROVE'>): void {
    const pending = c.pendingHello!;
    let seen: Uint8Array | null = null;
    try {
      seen = pending.st.mem.read(f.addr, 16);
    } catch { /* unreadable */ }
    if (!seen || !Buffer.from(seen).equals(pending.nonce)) {
      this.reply(c, W.REQ.PROVE, W.REP.prove, { status: -ERRNO.EPERM });
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
      closeMaps(st.maps); // exit or exec: every VMA is gone
      for (const [h, e] of this.bars) if (e.pid === pid) this.barUnref(h, e.pieces);
      mem.exit();
    };
    const t = this.tables;
    this.reply(c, W.REQ.PROVE, W.REP.prove, { nkinds: t.nkinds, nrules: t.nrules, session: st.session }, t.bytes);
  }

  /** OPEN and EVPREP come on a fresh socket: the process must show its session key, and the socket must be its fd. */
  private claimant(c: Conn, what: string, pid: number, session: bigint, fd: number, ino: bigint): ProcState {
    const st = this.procs.get(pid);
    if (!st || st.session !== session) throw new Forged(`${what} claiming pid ${pid} without its session key`);
    if (socketInode(pid, fd) !== ino) throw new Forged(`${what}: fd ${fd} of pid ${pid} is not socket ${ino}`);
    c.pid = pid;
    return st;
  }

  open(c: Conn, f: W.ReqValues<'OPEN'>, raw: Buffer): void {
    const req = W.REQ.OPEN;
    const { pid, fd: clientFd, ino } = f;
    const st = this.claimant(c, 'OPEN', pid, f.session, clientFd, ino);
    let node = '/dev/iommu';
    if (f.node === W.NODE.PATH) {
      node = `/dev/${Buffer.from(raw.subarray(W.REQ.OPEN.size)).toString('latin1')}`;
      if (node !== '/dev/vfio/vfio') return this.openVfioNode(c, f, st, node);
    } else if (f.node !== W.NODE.IOMMU) {
      this.reply(c, req, W.REP.open, { err: -ERRNO.ENODEV, failnth: f.failnth });
      return c.reject(`OPEN of unknown node ${f.node}`);
    }
    let ctx: IommufdCtx | null = null;
    const vfioContainer = node === '/dev/vfio/vfio';
    const r = this.emulate(f.failnth, f.fault, () => `open from pid ${pid}`, () => {
      // /dev/vfio/vfio is iommufd's VFIO container (IOMMUFD_VFIO_CONTAINER)
      ctx = vfioContainer ? vfioOf(this.emu).openContainer(st.mem) : this.emu.open(st.mem);
      return 0;
    });
    c.kind = 'anchor';
    if (!ctx) {
      if (this.emu.bus.on) this.note(pid, f.tid, `open("${node}") = ${errText(r.ret)}`);
      this.reply(c, req, W.REP.open, { err: r.ret, failnth: r.failnth });
      return;
    }
    const live: IommufdCtx = ctx;
    if (this.emu.bus.on) this.note(pid, f.tid, `open("${node}") = ${clientFd}`);
    const token = newToken();
    const entry: CtxEntry = { token, ino, ctx: live, conn: c };
    this.ctxs.set(token, entry);
    this.anchorsByIno.set(ino, entry);
    st.held.add(token);
    c.onEnd = () => {
      if (this.emu.bus.on) this.note(pid, pid, `context of open() = ${clientFd} released (last reference to its fd closed)`);
      this.ctxs.delete(token);
      if (this.anchorsByIno.get(ino) === entry) this.anchorsByIno.delete(ino);
      live.put();
    };
    // /dev/iommu has no poll method: the kernel reports it always readable and
    // writable. One byte left unread in the socket gives the same answer (sent
    // in the same write as the reply, so it is there when open() returns).
    c.send(Buffer.concat([W.encodeReply(req, W.REP.open, { token, failnth: r.failnth, kind: W.KIND.IOMMUFD }), Buffer.from([0])]));
  }

  /**
   * open() of a VFIO node other than the container: the device cdev
   * (/dev/vfio/devices/vfioN) or a group (/dev/vfio/<N>). The socket is the
   * fd, like an event file's, with the file bound from the start.
   */
  private openVfioNode(c: Conn, f: W.ReqValues<'OPEN'>, st: ProcState, node: string): void {
    const req = W.REQ.OPEN;
    const vfio = vfioOf(this.emu);
    const opened: { file: VfioFile | null } = { file: null };
    const r = this.emulate(f.failnth, f.fault, () => `open(${node}) from pid ${st.pid}`, () => {
      const cdev = /^\/dev\/vfio\/devices\/vfio(\d+)$/.exec(node);
      const group = /^\/dev\/vfio\/(\d+)$/.exec(node);
      if (cdev) opened.file = vfio.openCdev(Number(cdev[1]));
      else if (group) opened.file = vfio.openGroup(Number(group[1]));
      else fail('ENOENT', `${node}: no such device node`);
      return 0;
    });
    const file = opened.file;
    if (this.emu.bus.on) this.note(st.pid, f.tid, `open("${node}") = ${file ? f.fd : errText(r.ret)}`);
    if (!file) {
      c.kind = 'anchor';
      this.reply(c, req, W.REP.open, { err: r.ret, failnth: r.failnth });
      return;
    }
    const token = newToken();
    const b: EventBinding = { token, ino: f.ino, conn: c, pid: st.pid, file, released: false, signalled: true };
    this.events.set(token, b);
    this.eventsByIno.set(f.ino, b);
    st.held.add(token);
    c.kind = 'event';
    c.onEnd = () => {
      if (this.emu.bus.on) this.note(st.pid, st.pid, `${node} of open() = ${f.fd} released (last reference to its fd closed)`);
      this.events.delete(token);
      if (this.eventsByIno.get(f.ino) === b) this.eventsByIno.delete(f.ino);
      this.releaseBinding(b);
    };
    // No poll method: always readable and writable (one byte left in the socket, as for /dev/iommu).
    c.send(Buffer.concat([W.encodeReply(req, W.REP.open, { token, failnth: r.failnth, kind: W.KIND.VFIO }), Buffer.from([0])]));
  }

  evprep(c: Conn, f: W.ReqValues<'EVPREP'>): void {
    const st = this.claimant(c, 'EVPREP', f.pid, f.session, f.fd, f.ino);
    const token = newToken();
    const ino = f.ino;
    const b: EventBinding = { token, ino, conn: c, pid: st.pid, file: null, released: false, signalled: false };
    this.events.set(token, b);
    this.eventsByIno.set(ino, b);
    st.held.add(token);
    c.kind = 'event';
    c.onEnd = () => {
      this.events.delete(token);
      if (this.eventsByIno.get(ino) === b) this.eventsByIno.delete(ino);
      if (b.file && !b.released) this.releaseBinding(b);
    };
    this.reply(c, W.REQ.EVPREP, W.REP.evprep, { token });
  }

  /**
   * mmap of an iommufd: the core validates and takes the references; the
   * region's current content is copied into the memfd the shim then maps.
   */
  mmap(c: Conn, f: W.ReqValues<'MMAP'>): void {
    const st = this.procOf(c);
    if (!this.ctxs.has(f.token) && this.events.has(f.token)) return this.barMmap(c, st, f);
    const entry = this.named(st, this.ctxs, f.token, f.fd, 'MMAP');
    let handle = 0n;
    let err: number;
    if (!entry) err = -ERRNO.EBADF;
    else {
      const r = this.emulate(0, 0, () => `mmap from pid ${c.pid}`, () => {
        const h = iommufdMmap(entry.ctx, f.offset, f.length, f.flags, f.prot);
        let region: RegionFd | null = null;
        try {
          let fd: number;
          try {
            fd = fs.openSync(`/proc/${c.pid}/fd/${f.memfd}`, 'r+');
          } catch {
            fail('EBADF', `memfd ${f.memfd} of pid ${c.pid} cannot be opened`);
          }
          if (h.pages.length === 0) fs.closeSync(fd);
          else region = new RegionFd(fd, h.pages, this.registry);
        } catch (e) {
          h.close();
          throw e;
        }
        handle = this.nextHandle++;
        st.maps.set(handle, { pieces: [h], region });
        return 0;
      });
      err = r.ret;
    }
    if (this.emu.bus.on) this.note(c.pid, c.pid,
      `mmap(iommufd, offset=0x${f.offset.toString(16)}, length=0x${f.length.toString(16)}) = ${err ? errText(err) : 0}`);
    this.reply(c, W.REQ.MMAP, W.REP.mmap, { err, handle });
  }

  /**
   * mmap of a VFIO device file: a BAR mapping whose loads and stores the shim
   * traps (PROT_NONE pages, MMIO frames). The mapping holds the file.
   */
  private barMmap(c: Conn, st: ProcState, f: W.ReqValues<'MMAP'>): void {
    const b = this.named(st, this.events, f.token, f.fd, 'MMAP');
    let handle = 0n;
    const MAP_SHARED = 0x01;
    const MAP_SHARED_VALIDATE = 0x03;
    const type = f.flags & 0x0f; // MAP_TYPE
    const r = this.emulate(0, 0, () => `mmap from pid ${c.pid}`, () => {
      const file = b && !b.released ? b.file : null;
      if (!b || !file) fail('EBADF', 'the file is closed');
      // a group file has no mmap method
      if (!isVfio(file) || typeof (file as { mmap?: unknown }).mmap !== 'function') fail('ENODEV', `${file.name} has no mmap`);
      const m = (file as VfioFile & { mmap(o: bigint, l: bigint, s: boolean): BarMapping })
        .mmap(f.offset, f.length, type === MAP_SHARED || type === MAP_SHARED_VALIDATE);
      handle = this.nextHandle++;
      this.bars.set(handle, { mapping: m, binding: b, pieces: 1, pid: st.pid });
      b.mapped = (b.mapped ?? 0) + 1;
      return 0;
    });
    if (this.emu.bus.on) this.note(c.pid, c.pid,
      `mmap(${b?.file?.name ?? '?'}, offset=0x${f.offset.toString(16)}, length=0x${f.length.toString(16)}) = ${r.ret ? errText(r.ret) : 'trapped BAR mapping'}`);
    this.reply(c, W.REQ.MMAP, W.REP.mmap, { err: r.ret, handle });
  }

  /** A trapped BAR mapping lost `n` VMA pieces (or all: the process is gone). */
  private barUnref(handle: bigint, n: number): void {
    const e = this.bars.get(handle);
    if (!e) return;
    e.pieces -= n;
    if (e.pieces > 0) return;
    this.bars.delete(handle);
    const b = e.binding;
    b.mapped = (b.mapped ?? 1) - 1;
    if (!b.mapped && b.releasePending) {
      b.releasePending = false;
      this.releaseBinding(b);
    }
  }

  /** One load or store through a trapped BAR mapping (the shim decoded the faulting MOV). */
  mmio(c: Conn, f: W.ReqValues<'MMIO'>): void {
    const st = this.procOf(c);
    const e = this.bars.get(f.handle);
    let status = 0;
    let value = 0n;
    if (!e || e.binding.token !== f.token || (f.size !== 1 && f.size !== 2 && f.size !== 4 && f.size !== 8)) {
      status = -ERRNO.EINVAL;
    } else if (e.pid !== st.pid && !this.holds(st, e.binding, f.fd) && !descendantOf(st.pid, e.pid)) {
      // not the mapper, not a holder of the file, not a child that inherited the mapping
      throw new Forged(`MMIO on a BAR mapping of pid ${e.pid} that pid ${st.pid} neither holds nor inherited`);
    } else {
      const size = f.size as AccessSize;
      const r = this.emulate(0, 0, () => `MMIO from pid ${c.pid}`, () => {
        if (f.write) e.mapping.write(Number(f.off), size, f.value);
        else value = e.mapping.read(Number(f.off), size);
        return 0;
      });
      status = r.ret;
      if (this.emu.bus.on) {
        const at = `${e.binding.file?.name ?? '?'}, BAR${e.mapping.bar}+0x${(e.mapping.start + Number(f.off)).toString(16)}`;
        const res = status ? errText(status) : f.write ? 'ok' : `0x${value.toString(16)}`;
        this.note(st.pid, f.tid || st.pid, `mmio(${at}, ${f.write ? `write${f.size} 0x${f.value.toString(16)}` : `read${f.size}`}) = ${res}`);
      }
      if (this.events.size) for (const b of this.events.values()) this.signal(b);
    }
    this.reply(c, W.REQ.MMIO, W.REP.mmio, { status, value });
  }

  /** Where the machine's view is: the shim serves /sys/bus/pci/devices/<BDF>, /dev/vfio, ... from it. */
  machine(c: Conn): void {
    this.procOf(c);
    this.reply(c, W.REQ.MACHINE, W.REP.machine, { status: 0 }, Buffer.from(this.viewDir, 'utf8'));
  }

  /** The mapping table of a connection that owns mappings (a process's control connection, or a holder). */
  private mapsOf(c: Conn): MapTable {
    return c.kind === 'holder' ? c.holder!.maps : this.procOf(c).maps;
  }

  /** VMA pieces of a mapping appeared (split, move) or went (munmap): one reference each. */
  mref(c: Conn, f: W.ReqValues<'MREF'>): void {
    const bar = this.bars.get(f.handle);
    if (bar) {
      const ok = f.delta !== 0 && f.delta <= MREF_MAX && -f.delta <= bar.pieces;
      if (ok && f.delta > 0) bar.pieces += f.delta;
      else if (ok) this.barUnref(f.handle, -f.delta);
      return this.status(c, W.REQ.MREF, ok ? 0 : -ERRNO.EINVAL);
    }
    const maps = this.mapsOf(c);
    const m = maps.get(f.handle);
    let status = 0;
    if (!m || f.delta === 0 || f.delta > MREF_MAX || -f.delta > m.pieces.length) {
      status = -ERRNO.EINVAL;
    } else if (f.delta > 0) {
      for (let i = 0; i < f.delta; i++) m.pieces.push(m.pieces[0]!.open());
    } else {
      for (let i = 0; i < -f.delta; i++) m.pieces.pop()!.close();
      if (m.pieces.length === 0) {
        closeMapping(m);
        maps.delete(f.handle);
      }
    }
    this.status(c, W.REQ.MREF, status);
  }

  /** fork: a socket the child inherits, holding the child's copies of the parent's mappings. */
  holderConn(c: Conn, f: W.ReqValues<'HOLDER'>): void {
    const st = this.claimant(c, 'HOLDER', f.pid, f.session, f.fd, f.ino);
    const h: HolderEntry = { token: newToken(), ino: f.ino, conn: c, pid: st.pid, maps: new Map() };
    this.holders.set(h.token, h);
    c.kind = 'holder';
    c.holder = h;
    c.onEnd = () => {
      this.holders.delete(h.token);
      closeMaps(h.maps);
    };
    this.reply(c, W.REQ.HOLDER, W.REP.holder, { token: h.token });
  }

  /** fork: the holder gets `pieces` references of its own to a mapping of this connection. */
  mdup(c: Conn, f: W.ReqValues<'MDUP'>): void {
    const h = this.holders.get(f.holder);
    // The holder must be the sending process's, and a holder connection the sender's own fd.
    const pid = c.kind === 'holder' ? h?.pid : this.procOf(c).pid;
    if (!h || h.pid !== pid || (c.kind === 'holder' && socketInode(h.pid, f.fd) !== c.holder!.ino)) {
      throw new Forged(`MDUP into holder ${f.holder} that the sender did not make`);
    }
    const m = this.mapsOf(c).get(f.handle);
    let err = 0;
    let handle = 0n;
    if (!m || f.pieces === 0 || f.pieces > MREF_MAX) err = -ERRNO.EINVAL;
    else {
      handle = this.nextHandle++;
      const copies: MmapHandle[] = [];
      for (let i = 0; i < f.pieces; i++) copies.push(m.pieces[0]!.open());
      m.region?.get(); // the child maps the same memfd
      h.maps.set(handle, { pieces: copies, region: m.region });
    }
    this.reply(c, W.REQ.MDUP, W.REP.mmap, { err, handle });
  }

  /**
   * The control connection moves to the fast path: the slot is the
   * process's own memfd (opened through /proc/<pid>/fd of the proven pid;
   * sealed, checked by the mapper). Frames through it reach this same
   * connection, so every check a frame gets is the same.
   */
  fast(c: Conn, f: W.ReqValues<'FAST'>): void {
    const st = this.procOf(c);
    const req = W.REQ.FAST;
    if (!c.link.upgrade) return this.status(c, req, -ERRNO.EOPNOTSUPP); // no fast path here: the shim keeps to the socket
    if (f.size !== W.SLOT.SIZE) return this.status(c, req, -ERRNO.EINVAL);
    let fd: number;
    try {
      fd = fs.openSync(`/proc/${st.pid}/fd/${f.memfd}`, 'r+');
    } catch {
      return this.status(c, req, -ERRNO.EBADF);
    }
    let why: string | null;
    try {
      why = c.link.upgrade(fd, W.encodeReply(req, W.REP.status, { status: 0 }));
    } finally {
      fs.closeSync(fd);
    }
    if (why) {
      this.log(`FAST from pid ${st.pid}: ${why}`);
      this.status(c, req, -ERRNO.EINVAL);
    }
  }

  /** The VmPin/VmLck counts of a process for its /proc status (readable by whoever can open that file). */
  procstat(c: Conn, f: W.ReqValues<'PROCSTAT'>): void {
    this.procOf(c);
    const p = this.procs.get(f.pid)?.mem.process as ClientProcess | undefined;
    if (!p) return this.reply(c, W.REQ.PROCSTAT, W.REP.procstat, { status: -ERRNO.ENOENT });
    // The kernel's counters are unsigned: a count that went below zero (a CHANGE_PROCESS of
    // pages charged to nobody, see ioas.ts) shows wrapped, as there.
    const u64 = (n: number): bigint => BigInt.asUintN(64, BigInt(n));
    this.reply(c, W.REQ.PROCSTAT, W.REP.procstat, { status: 0, pinned: u64(p.pinnedPages), locked: u64(p.lockedPages) });
  }

  /** Which emulated file is the caller's fd: answered only if the fd really is that socket in the caller. */
  lookup(c: Conn, f: W.ReqValues<'LOOKUP'>): void {
    const st = this.procOf(c);
    const ino = socketInode(st.pid, f.fd);
    let v: Partial<W.Values<typeof W.REP.lookup.spec>> = { kind: W.KIND.NONE };
    if (ino !== null) {
      const anchor = this.anchorsByIno.get(ino);
      const ev = this.eventsByIno.get(ino);
      if (anchor && this.ctxs.get(anchor.token) === anchor) v = { kind: W.KIND.IOMMUFD, token: anchor.token };
      else if (ev && ev.file && !ev.released) v = { kind: isVfio(ev.file) ? W.KIND.VFIO : W.KIND.EVENT, token: ev.token };
      if (v.token) st.held.add(v.token);
    }
    this.reply(c, W.REQ.LOOKUP, W.REP.lookup, v);
  }

  bindFile(b: EventBinding, file: IommufdFile): void {
    b.file = file;
    file.onReadiness = () => this.signal(b);
  }

  releaseBinding(b: EventBinding): void {
    if (b.released) return;
    if (b.mapped) {
      b.releasePending = true; // a BAR mapping still holds the file
      return;
    }
    b.released = true;
    const f = b.file;
    if (f) {
      f.onReadiness = undefined;
      f.release();
    }
  }

  /** The event binding behind the client's fd `fd` (socket inode via /proc). */
  bindingOfFd(st: ProcState, fd: number): EventBinding | undefined {
    const ino = socketInode(st.pid, fd);
    const b = ino === null ? undefined : this.eventsByIno.get(ino);
    if (b) st.held.add(b.token);
    return b;
  }

  /** Put one readiness byte in the client's socket while the file is readable. */
  private signal(b: EventBinding): void {
    if (!b.file || b.released || b.signalled) return;
    if (b.file.poll() & POLLIN) {
      b.signalled = true;
      b.conn.send(Buffer.from([1]));
    }
  }

  ioctl(c: Conn, f: W.ReqValues<'IOCTL'>, raw: Buffer): void {
    const st = this.procOf(c);
    const { request, arg, tid } = f;
    const pid = st.pid;
    // an iommufd (or the VFIO container), or a VFIO file (cdev, group, device fd)
    const vfioB = this.ctxs.has(f.token) ? undefined : this.events.get(f.token);
    const entry = vfioB ? undefined : this.named(st, this.ctxs, f.token, f.fd, 'IOCTL');
    if (vfioB) this.named(st, this.events, f.token, f.fd, 'IOCTL');
    let ev: EventBinding | undefined;
    if (f.evfd >= 0) {
      ev = this.events.get(f.evtoken);
      if (!ev || ev.pid !== pid || ev.file) throw new Forged(`IOCTL offers event file ${f.evtoken} that pid ${pid} did not prepare`);
    }
    const hint = f.hintfd >= 0 ? this.named(st, this.events, f.hinttoken, f.hintfd, 'IOCTL hint') : undefined;
    let ret: number;
    let outFailnth = f.failnth;
    let fdt: CallFdTable | null = null;
    let written: InlineWindow | null = null;
    const vfioFile = vfioB && !vfioB.released && isVfio(vfioB.file) ? vfioB.file : null;
    if (!entry && !vfioFile) {
      ret = vfioB?.file && !vfioB.released ? -ERRNO.ENOTTY : -ERRNO.EBADF;
    } else {
      const proc = st.mem.process as ClientProcess;
      proc.beginCall(f, this.grants);
      st.mem.setGeneration(f.mapgen);
      // The struct's first bytes came inline: reads of them are served from
      // that copy, writes to them go back with the reply (see ProcMemory).
      const base = W.REQ.IOCTL.size;
      st.mem.beginInline(arg, raw, base, raw.length - base);
      try {
        fdt = new CallFdTable(this, st, f.evfd, ev, f.hintfd, hint);
        const calls = fdt;
        const caller: VfioCaller = { mem: st.mem, fds: calls, files: calls, tid };
        ({ ret, failnth: outFailnth } = this.emulate(f.failnth, f.fault, () => `ioctl 0x${request.toString(16)} from pid ${pid}`,
          () => (vfioFile ? vfioFile.ioctl(request, arg, caller) : entry!.ctx.ioctl(request, arg, caller))));
        written = st.mem.endInline();
      } finally {
        proc.endCall();
        st.mem.flushInline(); // only if something above threw: no reply will carry the bytes
      }
    }
    if (ret < 0 && fdt?.installed) {
      // The handler installed the fd and then failed without closing it: roll back.
      if (ev) this.releaseBinding(ev);
      fdt.installed = false;
    }
    if (this.events.size) for (const b of this.events.values()) this.signal(b);
    // With the bytes the call wrote to the inline copy of the struct: the shim stores them.
    const tail = written ? written.data.subarray(written.lo, written.hi) : undefined;
    this.reply(c, W.REQ.IOCTL, W.REP.ioctl, {
      ret: BigInt(ret), failnth: outFailnth, woff: written ? written.lo : 0,
      evused: fdt?.installed ? W.EVUSED.INSTALLED | (fdt.keepOnExec ? W.EVUSED.KEEP_ON_EXEC : 0) : 0,
    }, tail);
  }

  /**
   * Run one emulated call with the client thread's fail-nth counter armed
   * (0 = off) and return its result as the kernel would (negative errno on
   * failure) plus the counter to hand back. Anything but an errno is an
   * emulator bug: logged, answered EIO, and the server keeps serving. Every
   * path into the emulator (open, ioctl, file ops, mmap) goes through here.
   */
  /** Emulator bugs logged so far (the soak reports them). */
  bugs = 0;
  /** Calls into the emulator served (open, ioctl, file op, mmap). */
  calls = 0;

  /** An exception that is not an errno: an emulator bug, logged loudly the same way on every path. */
  bug(what: string, e: unknown): void {
    this.bugs++;
    this.log(`${what}: emulator bug: ${(e as Error)?.stack ?? e}`);
  }

  private emulate(failnth: number, fault: number, what: () => string, fn: () => number): { ret: number; failnth: number } {
    let ret: number;
    this.calls++;
    this.emu.failNth = failnth;
    // The caller's debugfs switches (its private debugfs, read by the shim while fail-nth is armed).
    if (failnth) this.emu.faults.settings = settingsFromBits(fault);
    try {
      ret = fn();
    } catch (e) {
      if (isErrno(e)) ret = -e.errno;
      else {
        this.bug(what(), e);
        ret = -ERRNO.EIO;
      }
    }
    const left = failnth > 0 ? this.emu.failNth : failnth;
    this.emu.failNth = 0;
    return { ret, failnth: left };
  }

  fileop(c: Conn, f: W.ReqValues<'FILEOP'>): void {
    const st = this.procOf(c);
    st.mem.setGeneration(f.mapgen);
    const b = this.named(st, this.events, f.token, f.fd, 'FILEOP');
    let ret: number;
    let failnth = f.failnth;
    let drain = 0;
    if (!b || !b.file || b.released) {
      ret = -ERRNO.EBADF;
    } else {
      const file = b.file;
      const F = W.FILEOP;
      const positional = f.op === F.PREAD || f.op === F.PWRITE;
      const write = f.op === F.WRITE || f.op === F.PWRITE;
      // The VFS's checks (method present, access_ok, count clamp) come first (src/core/file.ts).
      // VFIO files have a position (region index << 40 + offset) that read/write use and advance;
      // the others have none (the shim answers ESPIPE for their positional I/O).
      const vfio = isVfio(file);
      const pos = positional ? f.pos : vfio ? b.pos ?? 0n : 0n;
      const r = this.emulate(f.failnth, f.fault, () => `file op on ${file.name}`,
        () => (f.op === F.POLL ? vfsPoll(file) : write ? vfsWrite(file, st.mem, f.buf, f.count, pos)
          : vfsRead(file, st.mem, f.buf, f.count, pos)));
      ret = r.ret;
      failnth = r.failnth;
      if (vfio && !positional && f.op !== F.POLL && ret > 0) b.pos = pos + BigInt(ret);
      const what = (positional ? 'p' : '') + (f.op === F.POLL ? 'poll' : write ? 'write' : 'read');
      const at = vfio && f.op !== F.POLL ? `, 0x${pos.toString(16)}` : '';
      if (this.emu.bus.on) this.note(c.pid, f.tid || c.pid, `${what}(${file.name}, ${f.count}${at}) = ${ret >= 0 ? ret : errText(ret)}`);
      if (b.signalled && !(file.poll() & POLLIN)) {
        b.signalled = false;
        drain = 1; // the client takes the readiness byte back
      }
    }
    for (const e of this.events.values()) this.signal(e);
    this.reply(c, W.REQ.FILEOP, W.REP.fileop, { ret: BigInt(ret), failnth, drain });
  }

  /**
   * Reply once every hang-up that happened before this request was processed:
   * the shim closes the fd first, then syncs, so teardown is done on return.
   */
  sync(c: Conn, f: W.ReqValues<'SYNC'>): void {
    const st = this.procOf(c);
    if (f.forget) st.held.delete(f.forget);
    setImmediate(() => setImmediate(() => {
      this.registry.collect();
      this.status(c, W.REQ.SYNC, 0);
    }));
  }

  region(c: Conn, f: W.ReqValues<'REGION'>): void {
    const st = this.procOf(c);
    let status = 0;
    try {
      const obj = this.registry.openShared(c.pid, f.memfd, !!(f.flags & W.REGION.HUGE));
      st.mem.addRegion(f.va, f.length, obj, f.off);
    } catch (e) {
      if (isErrno(e)) {
        status = -e.errno;
        this.log(`REGION from pid ${c.pid}: ${e.message}`);
      } else {
        this.bug(`REGION from pid ${c.pid}`, e);
        status = -ERRNO.EIO;
      }
    }
    this.status(c, W.REQ.REGION, status);
  }

  unmap(c: Conn, f: W.ReqValues<'UNMAP'>): void {
    this.procOf(c).mem.removeRange(f.va, f.length);
    this.registry.collect();
    this.status(c, W.REQ.UNMAP, 0);
  }
}

/**
 * The memfd behind a client's iommufd mapping (MMAP): the region's pages live
 * in it while it is mapped, so the driver and the client see each other's
 * writes. A page taken over by a newer mapping's memfd keeps that file's
 * content as its own. When every mapping of this memfd is gone (all VMA
 * pieces, in every process that inherited them), the pages it still holds get
 * their content back in their own storage and the fd is closed.
 */
const regionFdOf = new WeakMap<PhysPage, RegionFd>();

type PageIo = Pick<PhysPage, 'read' | 'write'>;

class RegionFd {
  /** Mappings (handle lists, in any process) using this memfd. */
  private users = 1;
  /** Pages whose content lives here: their own read/write, to restore. */
  private readonly own = new Map<PhysPage, PageIo>();
  private closed = false;

  constructor(private readonly fd: number, pages: readonly PhysPage[], registry: PageRegistry) {
    for (const [i, p] of pages.entries()) {
      fs.writeSync(fd, p.read(0, PAGE_SIZE), 0, PAGE_SIZE, i * PAGE_SIZE);
      const prev = regionFdOf.get(p);
      const orig = prev ? prev.release(p) : { read: p.read, write: p.write };
      this.own.set(p, orig);
      regionFdOf.set(p, this);
      const base = i * PAGE_SIZE;
      const page = p as PhysPage & PageIo;
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
    if (this.own.size === 0) this.close();
  }

  /** A newer mapping's memfd takes `p` over (its content already copied there): hand back its own I/O. */
  private release(p: PhysPage): PageIo {
    const orig = this.own.get(p)!;
    this.own.delete(p);
    if (this.own.size === 0) this.close();
    return orig;
  }

  get(): void {
    this.users++;
  }

  /** A mapping of this memfd is gone entirely. */
  put(): void {
    if (--this.users > 0 || this.closed) return;
    for (const [p, orig] of this.own) {
      const data = p.read(0, PAGE_SIZE);
      const page = p as PhysPage & PageIo;
      page.read = orig.read;
      page.write = orig.write;
      page.write(0, data);
      regionFdOf.delete(p);
    }
    this.own.clear();
    this.close();
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      fs.closeSync(this.fd);
    } catch { /* gone */ }
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
