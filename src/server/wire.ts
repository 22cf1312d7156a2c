// The wire protocol between the LD_PRELOAD shim (native/shim.c) and the server,
// described once, as data. Everything else derives from this file: the
// server's frame decoding and encoding (decode/encode below), the C header the
// shim is compiled with (cHeader(), written into the build cache by
// native.ts), and the tests (a codec round trip in TypeScript and through C).
//
// Every frame, both directions, starts with `u32 len` (the whole frame) and
// `u32 type` (a reply echoes its request's type). Integers are little-endian,
// fields are packed and naturally aligned. A frame may end in a variable tail
// whose length is one of its u32 fields.
//
// Connection kinds (decided by the first frame; `on` lists where a request is
// accepted, `becomes` what the connection is afterwards):
//   new      -> HELLO -> hello -> PROVE -> control   (one per process image)
//   new      -> OPEN   -> anchor   (one per open() of an emulated node: the socket IS the fd)
//   new      -> EVPREP -> event    (one per fd an ioctl may hand out: the socket IS that fd)
//   new      -> HOLDER -> holder   (made at fork: holds the child's references to iommufd mappings)
// Anchor and event sockets are the client's fds, so dup/fork/exit/close come
// from the kernel; the server sees EOF when the last holder is gone. Calls on
// them travel on the calling process's control connection, naming the file by
// its token (unguessable, given only to holders of the fd).
//
// Extending (new fd kinds, new fd-returning or fd-passing requests): add a KIND
// and its OPS, and FDRULE rows in fdrules.ts; the shim learns both from the
// PROVE reply's tables, never from constants of its own.

import { FAULT_BITS } from '../core/fault_inject.js';

export type WireType = 'u32' | 's32' | 'u64' | 's64' | `u8[${number}]`;
export type ConnKind = 'new' | 'hello' | 'control' | 'anchor' | 'event' | 'holder';

type Val<T> = T extends 'u64' | 's64' ? bigint : T extends `u8[${number}]` ? Uint8Array : number;
type FieldSpec = Record<string, WireType>;
export type Values<F extends FieldSpec> = { -readonly [K in keyof F]: Val<F[K]> };

export interface WireField {
  readonly name: string;
  readonly type: WireType;
  readonly offset: number;
  readonly size: number;
}

export interface WireStruct<F extends FieldSpec = FieldSpec> {
  /** C struct name (wire_req_hello, wire_rep_hello, wire_fdrule...). */
  readonly cname: string;
  readonly spec: F;
  readonly fields: readonly WireField[];
  /** Fixed part, header included. */
  readonly size: number;
  /** The u32 field holding the length of the variable tail, if any. */
  readonly tail?: string;
  /** Most tail bytes a peer may send. */
  readonly tailMax: number;
  readonly doc: string;
}

export interface WireRequest<F extends FieldSpec = FieldSpec> extends WireStruct<F> {
  readonly name: string;
  readonly type: number;
  readonly on: readonly ConnKind[];
  readonly becomes?: ConnKind;
  readonly reply: WireStruct;
}

function sizeOf(t: WireType): { size: number; align: number } {
  if (t === 'u32' || t === 's32') return { size: 4, align: 4 };
  if (t === 'u64' || t === 's64') return { size: 8, align: 8 };
  const n = Number(/^u8\[(\d+)\]$/.exec(t)?.[1]);
  if (!(n > 0)) throw new Error(`bad wire type ${t}`);
  return { size: n, align: 1 };
}

function layout<F extends FieldSpec>(cname: string, spec: F, doc: string, tail?: keyof F & string, tailMax = 0): WireStruct<F> {
  const fields: WireField[] = [];
  let off = 0;
  for (const [name, type] of Object.entries(spec)) {
    const { size, align } = sizeOf(type);
    // Packed in C: every field must already be naturally aligned, or the two sides disagree.
    if (off % align) throw new Error(`${cname}.${name} at ${off} is not ${align}-aligned`);
    fields.push({ name, type, offset: off, size });
    off += size;
  }
  if (off % 8) throw new Error(`${cname} is ${off} bytes: not a multiple of 8`);
  if (tail !== undefined && spec[tail] !== 'u32') throw new Error(`${cname}: tail length ${tail} must be a u32`);
  return { cname, spec, fields, size: off, tail, tailMax, doc };
}

const HDR = { len: 'u32', type: 'u32' } as const;

function reply<F extends FieldSpec>(name: string, spec: F, doc: string, tail?: keyof F & string, tailMax = 0) {
  return layout(`wire_rep_${name}`, { ...HDR, ...spec }, doc, tail, tailMax);
}

/** Most bytes of the caller's struct an IOCTL frame carries inline. */
export const IOCTL_INLINE_MAX = 256;
/** Largest frame a peer may announce; anything else is malformed. */
export const MAX_FRAME = 4096;
/** Bumped on every incompatible change; HELLO carries the shim's. */
export const WIRE_VERSION = 6;

/**
 * The fast path (FAST): one request/reply slot per process image in a sealed
 * memfd both sides map. Page 0 holds the `wire_slot` words, page 1 the request
 * frame, page 2 the reply frame (each at most MAX_FRAME bytes). The control
 * socket then only carries doorbell bytes (either side asleep, see transport.ts).
 */
export const SLOT = { SIZE: 3 * 4096, REQ_OFF: 4096, REP_OFF: 2 * 4096 } as const;

// ---- constants shared by both sides ---------------------------------------------

/** Kinds of emulated fds (files the server owns). 0 is "not emulated". */
export const KIND = { NONE: 0, IOMMUFD: 1, EVENT: 2, VFIO: 3 } as const;
/**
 * What the shim forwards for an fd of a kind (anything else is answered locally).
 * PREAD: positional read/write reach the file (else ESPIPE); MMIO: mmap gives a
 * trapped mapping (PROT_NONE pages whose loads and stores become MMIO frames).
 */
export const OPS = { IOCTL: 1, READ: 2, WRITE: 4, MMAP: 8, PREAD: 16, MMIO: 32 } as const;
/** OPEN's node: 0 /dev/iommu; PATH: a device node of the machine, its path (under /dev) in the tail. */
export const NODE = { IOMMU: 0, PATH: 1 } as const;
/** Longest node path OPEN carries. */
export const NODE_PATH_MAX = 256;
/** What an fd rule says about a request (see fdrules.ts). */
export const FDRULE = {
  /** The call may hand out a new fd of `kind`: the shim prepares an event socket for it. */
  RETURNS: 1,
  /** The u32 at `field_off` is an fd the call may look up: the shim names it (token) in the frame. */
  NAMES: 2,
} as const;
export const CAP = { SYS_RESOURCE: 1, IPC_LOCK: 2, SYS_RAWIO: 4 } as const;
export const REGION = { HUGE: 1 } as const;
/**
 * READ/WRITE: at the file's position (files with one advance it); PREAD/PWRITE: at `pos` (kinds with
 * OPS.PREAD); POLL: the file's poll mask (the shim's poll/ppoll on an emulated event fd).
 */
export const FILEOP = { READ: 0, WRITE: 1, POLL: 2, PREAD: 3, PWRITE: 4 } as const;
/** IOCTL reply's evused: the prepared event fd was handed out; KEEP_ON_EXEC: without FD_CLOEXEC. */
export const EVUSED = { INSTALLED: 1, KEEP_ON_EXEC: 2 } as const;

export const CONSTANTS: Record<string, Record<string, number>> = {
  WIRE: { VERSION: WIRE_VERSION, IOCTL_INLINE_MAX, MAX_FRAME },
  WIRE_SLOT: SLOT,
  WIRE_FAULT: FAULT_BITS, WIRE_KIND: KIND, WIRE_OPS: OPS, WIRE_FDRULE: FDRULE, WIRE_CAP: CAP, WIRE_REGION: REGION, WIRE_FILEOP: FILEOP, WIRE_EVUSED: EVUSED,
  WIRE_NODE: { ...NODE, PATH_MAX: NODE_PATH_MAX },
};

// ---- replies and records --------------------------------------------------------

export const REP = {
  status: reply('status', { status: 's32', pad: 'u32' }, 'status: 0 or a negative errno'),
  hello: reply('hello', { status: 's32', pad: 'u32', nonce: 'u8[16]' },
    'the nonce the client must place in its own memory before PROVE'),
  prove: reply('prove', { status: 's32', nkinds: 'u32', nrules: 'u32', tablen: 'u32', session: 'u64' },
    'identity shown: the session key (OPEN and EVPREP carry it), then the tables: nkinds wire_kind, nrules wire_fdrule',
    'tablen', 1024),
  open: reply('open', { err: 's32', failnth: 'u32', token: 'u64', kind: 'u32', pad: 'u32' },
    'the file\'s token and KIND (followed by one readiness byte outside the frame)'),
  evprep: reply('evprep', { status: 's32', pad: 'u32', token: 'u64' }, 'the prepared file\'s token'),
  ioctl: reply('ioctl', { ret: 's64', failnth: 'u32', evused: 'u32', woff: 'u32', wlen: 'u32' },
    'result; then wlen bytes the call wrote at arg+woff (inside the inline copy), for the shim to store',
    'wlen', IOCTL_INLINE_MAX),
  fileop: reply('fileop', { ret: 's64', failnth: 'u32', drain: 'u32' },
    'result; drain: the shim takes the readiness byte back out of the socket'),
  lookup: reply('lookup', { kind: 'u32', pad: 'u32', token: 'u64' }, 'which emulated file the fd is (KIND.NONE: none)'),
  mmap: reply('mmap', { err: 's32', pad: 'u32', handle: 'u64' }, 'the mapping\'s handle (its references, see MREF)'),
  holder: reply('holder', { status: 's32', pad: 'u32', token: 'u64' }, 'the holder\'s token (MDUP names it)'),
  machine: reply('machine', { status: 's32', pathlen: 'u32' },
    'the directory holding the machine\'s view (sys/..., dev/vfio/...; owned: the prefixes it replaces), its path in the tail',
    'pathlen', 512),
  mmio: reply('mmio', { status: 's32', pad: 'u32', value: 'u64' }, 'a load\'s value (status < 0: the access faults, SIGBUS)'),
  procstat: reply('procstat', { status: 's32', pad: 'u32', pinned: 'u64', locked: 'u64' },
    'pages the emulator pinned for the process (VmPin) and charged to it as locked (VmLck); status -ENOENT: not a client'),
} as const;

export const RECORD = {
  kind: layout('wire_kind', { kind: 'u32', ops: 'u32' }, 'an fd kind and the OPS the shim forwards for it'),
  fdrule: layout('wire_fdrule', {
    request: 'u32', action: 'u32', kind: 'u32', when_off: 's32', when_value: 'u32', field_off: 's32',
  }, 'request: FDRULE action, when the u32 at when_off (-1: always) equals when_value; field_off: the fd field (-1: the return value)'),
  slot: layout('wire_slot', { seq_req: 'u32', seq_rep: 'u32', srv_spin: 'u32', cli_sleep: 'u32' },
    'the fast-path slot\'s words (page 0): seq_req: the client\'s request number, written after the request frame; '
    + 'seq_rep: the server\'s copy of it once the reply frame is written; srv_spin: the server polls this slot '
    + '(0: ring the doorbell); cli_sleep: the request number the client waits for asleep in recv (the server rings)'),
} as const;

// ---- requests ---------------------------------------------------------------------

function request<F extends FieldSpec>(name: string, type: number, on: readonly ConnKind[], rep: WireStruct,
  spec: F, doc: string, opts: { becomes?: ConnKind; tail?: keyof F & string; tailMax?: number } = {}): WireRequest<typeof HDR & F> {
  const s = layout(`wire_req_${name.toLowerCase()}`, { ...HDR, ...spec }, doc, opts.tail, opts.tailMax ?? 0);
  return { ...s, name, type, on, becomes: opts.becomes, reply: rep };
}

const CTL = ['control'] as const;
/** Connections that own iommufd mapping references: a process's control connection, a fork's holder. */
const MAP_OWNERS = ['control', 'holder'] as const;

export const REQ = {
  HELLO: request('HELLO', 1, ['new'], REP.hello, {
    pid: 'u32', ppid: 'u32', uid: 'u32', caps: 'u32', memlock: 'u64', version: 'u32', pad: 'u32',
  }, 'a process image introduces itself (caps: CAP bits, memlock: RLIMIT_MEMLOCK, all ones = infinity)', { becomes: 'hello' }),
  PROVE: request('PROVE', 12, ['hello'], REP.prove, { addr: 'u64' },
    'where the client put the HELLO nonce in its own memory', { becomes: 'control' }),
  OPEN: request('OPEN', 2, ['new'], REP.open, {
    pid: 'u32', tid: 'u32', failnth: 'u32', fd: 's32', node: 'u32', flags: 'u32', ino: 'u64', session: 'u64',
    pathlen: 'u32', fault: 'u32',
  }, 'this socket becomes an open() of node (NODE: /dev/iommu, or the device node whose path under /dev is the tail); '
    + 'fd: its number in the client, ino: its inode; fault: the fault-injection switches (FAULT bits) with failnth armed',
  { becomes: 'anchor', tail: 'pathlen', tailMax: NODE_PATH_MAX }),
  EVPREP: request('EVPREP', 7, ['new'], REP.evprep, { pid: 'u32', fd: 's32', ino: 'u64', session: 'u64' },
    'this socket is the fd the next call may hand out', { becomes: 'event' }),
  IOCTL: request('IOCTL', 3, CTL, REP.ioctl, {
    token: 'u64', fd: 's32', tid: 'u32', request: 'u32', failnth: 'u32', arg: 'u64',
    evfd: 's32', mapgen: 'u32', evtoken: 'u64', memlock: 'u64', hintfd: 's32', inl: 'u32', hinttoken: 'u64',
    caps: 'u32', fault: 'u32',
  }, 'ioctl(fd, request, arg) on the file `token`; evfd/evtoken: a prepared event socket (-1: none); '
    + 'fault: the fault-injection switches (FAULT bits: the debugfs files) when failnth is armed; '
    + 'hintfd/hinttoken: an fd the call may look up (FDRULE.NAMES); memlock, caps: the caller\'s RLIMIT_MEMLOCK '
    + 'and effective CAP bits now (the kernel checks them at the call); then inl bytes of our memory from arg on',
  { tail: 'inl', tailMax: IOCTL_INLINE_MAX }),
  SYNC: request('SYNC', 4, CTL, REP.status, { forget: 'u64' },
    'answered once every hang-up before it was processed; forget: a file token this process no longer holds (0: none)'),
  REGION: request('REGION', 5, CTL, REP.status, { va: 'u64', length: 'u64', off: 'u64', memfd: 's32', flags: 'u32' },
    'a MAP_SHARED mapping of a memfd/shmem/hugetlbfs file (REGION.HUGE)'),
  UNMAP: request('UNMAP', 6, CTL, REP.status, { va: 'u64', length: 'u64' }, 'shared mappings in the range are gone'),
  FILEOP: request('FILEOP', 8, CTL, REP.fileop, {
    token: 'u64', fd: 's32', op: 'u32', buf: 'u64', count: 'u64', pos: 'u64', failnth: 'u32', mapgen: 'u32', tid: 'u32', fault: 'u32',
  }, 'read/write (FILEOP op) on the file `token`; fault: as IOCTL\'s'),
  LOOKUP: request('LOOKUP', 9, CTL, REP.lookup, { fd: 's32', pad: 'u32' },
    'which emulated file is our fd (inherited across exec, received over SCM_RIGHTS)'),
  MMAP: request('MMAP', 10, CTL, REP.mmap, {
    token: 'u64', fd: 's32', prot: 'u32', offset: 'u64', length: 'u64', flags: 'u32', memfd: 's32',
  }, 'mmap of the file `token`; the region\'s pages go into memfd, which the shim then maps'),
  MREF: request('MREF', 11, MAP_OWNERS, REP.status, { handle: 'u64', delta: 's32', pad: 'u32' },
    'the mapping `handle` (of this connection) has delta more VMA pieces (vm_ops open/close: split, mremap, munmap)'),
  HOLDER: request('HOLDER', 13, ['new'], REP.holder, { pid: 'u32', fd: 's32', ino: 'u64', session: 'u64' },
    'this socket holds mapping references of a forked child (the child inherits it; exit or exec drops them)',
    { becomes: 'holder' }),
  MDUP: request('MDUP', 14, MAP_OWNERS, REP.mmap, { handle: 'u64', holder: 'u64', fd: 's32', pieces: 'u32' },
    'fork: the holder gets its own `pieces` references to mapping `handle` (fd: this connection\'s number in the sender)'),
  MACHINE: request('MACHINE', 16, CTL, REP.machine, {}, 'where the emulated machine\'s sysfs and /dev/vfio view is'),
  MMIO: request('MMIO', 17, CTL, REP.mmio, {
    token: 'u64', handle: 'u64', off: 'u64', value: 'u64', fd: 's32', size: 'u32', write: 'u32', tid: 'u32',
  }, 'one load or store (size 1/2/4/8) at offset `off` of the trapped mapping `handle` of the file `token`'),
  PROCSTAT: request('PROCSTAT', 15, CTL, REP.procstat, { pid: 'u32', pad: 'u32' },
    'pinned and locked page counts of process `pid` (the VmPin/VmLck lines of its /proc status)'),
  FAST: request('FAST', 18, CTL, REP.status, { memfd: 's32', size: 'u32' },
    'from now on frames on this connection go through the slot in our memfd (sealed: shrink, grow, seal; '
    + 'SLOT.SIZE bytes); the socket carries doorbell bytes only'),
} as const;

export type RequestName = keyof typeof REQ;
export type ReqValues<K extends RequestName> = Values<(typeof REQ)[K]['spec']>;

/** Requests by type number. */
export const REQ_BY_TYPE: ReadonlyMap<number, WireRequest> = new Map(Object.values(REQ).map((r) => [r.type, r as WireRequest]));

// ---- codec ------------------------------------------------------------------------

/** Decode the fixed part of `buf` (its length already checked against `s`). */
export function decode<F extends FieldSpec>(s: WireStruct<F>, buf: Buffer, at = 0): Values<F> {
  const out: Record<string, unknown> = {};
  for (const f of s.fields) {
    const o = at + f.offset;
    switch (f.type) {
      case 'u32': out[f.name] = buf.readUInt32LE(o); break;
      case 's32': out[f.name] = buf.readInt32LE(o); break;
      case 'u64': out[f.name] = buf.readBigUInt64LE(o); break;
      case 's64': out[f.name] = buf.readBigInt64LE(o); break;
      default: out[f.name] = buf.subarray(o, o + f.size);
    }
  }
  return out as Values<F>;
}

/** Write `v` (absent fields: zero) into buf at `at`. */
export function encodeInto<F extends FieldSpec>(s: WireStruct<F>, v: Partial<Values<F>>, buf: Buffer, at = 0): void {
  const vals = v as Record<string, unknown>;
  for (const f of s.fields) {
    const x = vals[f.name];
    const o = at + f.offset;
    switch (f.type) {
      case 'u32': buf.writeUInt32LE(((x as number | undefined) ?? 0) >>> 0, o); break;
      case 's32': buf.writeInt32LE(((x as number | undefined) ?? 0) | 0, o); break;
      case 'u64': buf.writeBigUInt64LE(BigInt.asUintN(64, (x as bigint | undefined) ?? 0n), o); break;
      case 's64': buf.writeBigInt64LE(BigInt.asIntN(64, (x as bigint | undefined) ?? 0n), o); break;
      default: {
        buf.fill(0, o, o + f.size);
        if (x) Buffer.from(x as Uint8Array).copy(buf, o, 0, f.size);
      }
    }
  }
}

/**
 * A whole frame: `len` (and the tail length field) are filled in; `type` too
 * for requests. `tail` follows the fixed part.
 */
export function encode<F extends FieldSpec>(s: WireStruct<F>, v: Partial<Values<F>>, tail?: Uint8Array, type?: number): Buffer {
  const n = tail?.length ?? 0;
  if (n && !s.tail) throw new Error(`${s.cname} has no tail`);
  const buf = Buffer.allocUnsafe(s.size + n);
  const vals: Record<string, unknown> = { ...v, len: s.size + n };
  if (s.tail) vals[s.tail] = n;
  const t = type ?? (s as Partial<WireRequest>).type;
  if (t !== undefined) vals.type = t;
  encodeInto(s, vals as Partial<Values<F>>, buf);
  if (n) buf.set(tail!, s.size);
  return buf;
}

/** A reply to `req`, echoing its type. */
export function encodeReply<F extends FieldSpec>(req: { readonly type: number }, s: WireStruct<F>, v: Partial<Values<F>>, tail?: Uint8Array): Buffer {
  return encode(s, v, tail, req.type);
}

/** Why `len` bytes cannot be a frame of `s` whose tail field says `tailLen` (null: fine). */
export function badLength(s: WireStruct, len: number, tailLen?: number): string | null {
  if (!s.tail) return len === s.size ? null : `${len} bytes (expected ${s.size})`;
  if (len < s.size || len > s.size + s.tailMax) return `${len} bytes (expected ${s.size} to ${s.size + s.tailMax})`;
  if (tailLen !== undefined && tailLen !== len - s.size) return `${len} bytes announcing a ${tailLen}-byte tail`;
  return null;
}

/** The tail length field's value in a frame of `s` (at least s.size bytes). */
export function tailLength(s: WireStruct, buf: Buffer, at = 0): number | undefined {
  if (!s.tail) return undefined;
  return buf.readUInt32LE(at + s.fields.find((f) => f.name === s.tail)!.offset);
}

// ---- the C header -------------------------------------------------------------------

const C_TYPE: Record<string, string> = { u32: 'uint32_t', s32: 'int32_t', u64: 'uint64_t', s64: 'int64_t' };

function cStruct(s: WireStruct): string {
  const lines = [`/* ${s.doc} */`, `struct __attribute__((packed)) ${s.cname} {`];
  for (const f of s.fields) {
    const arr = /^u8\[(\d+)\]$/.exec(f.type);
    lines.push(arr ? `\tuint8_t ${f.name}[${arr[1]}];` : `\t${C_TYPE[f.type]} ${f.name};`);
  }
  lines.push('};');
  lines.push(`_Static_assert(sizeof(struct ${s.cname}) == ${s.size}, "${s.cname}");`);
  for (const f of s.fields) {
    lines.push(`_Static_assert(offsetof(struct ${s.cname}, ${f.name}) == ${f.offset}, "${s.cname}.${f.name}");`);
  }
  if (s.tail) lines.push(`#define ${s.cname.toUpperCase()}_TAIL_MAX ${s.tailMax}`);
  return lines.join('\n');
}

/** Every struct the header declares: requests, replies, records. */
export function allStructs(): WireStruct[] {
  const seen = new Set<WireStruct>();
  for (const r of Object.values(REQ)) seen.add(r as WireStruct);
  for (const r of Object.values(REP)) seen.add(r as WireStruct);
  for (const r of Object.values(RECORD)) seen.add(r as WireStruct);
  return [...seen];
}

/** The C header native/shim.c includes ("iommufd_emu_wire.h"), generated from this file. */
export function cHeader(): string {
  const out: string[] = [
    '/* Generated from src/server/wire.ts (the wire protocol, described once); do not edit. */',
    '#ifndef IOMMUFD_EMU_WIRE_H',
    '#define IOMMUFD_EMU_WIRE_H',
    '#include <stddef.h>',
    '#include <stdint.h>',
    '',
  ];
  for (const [prefix, table] of Object.entries(CONSTANTS)) {
    for (const [k, v] of Object.entries(table)) out.push(`#define ${prefix}_${k} ${v}`);
  }
  out.push('', 'enum wire_type {');
  for (const r of Object.values(REQ)) out.push(`\tWIRE_T_${r.name} = ${r.type},`);
  out.push('};', '');
  for (const s of allStructs()) out.push(cStruct(s), '');
  out.push('#endif');
  return `${out.join('\n')}\n`;
}
