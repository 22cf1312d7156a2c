// Declarative struct layouts and the codec derived from them. Every offset of the
// ABI lives in the tables built with these helpers (structs.ts); nothing else in
// the project hard-codes one.

export type ScalarType = 'u8' | 'u16' | 'u32' | 's32' | 'u64';

export interface FieldDef<T extends ScalarType = ScalarType> {
  readonly type: T;
  readonly offset: number;
  /** Array length (u8/u32/u64 arrays); undefined for a scalar. */
  readonly count?: number;
  /** ABI version (see profiles.ts) the field appeared in. */
  readonly since?: number;
  /** Header-only from this version on in profiles with `headerBackports` (see enums.ts EnumMember.backport). */
  readonly backport?: number;
  /** Written by the kernel (out_* fields and in/out fields). */
  readonly out?: boolean;
  /** Holds a user-space address. */
  readonly ptr?: boolean;
  /** A union alias of another field at the same offset: decoded, never encoded. */
  readonly alias?: boolean;
  /** Reserved word (trace printing hides it when zero). */
  readonly reserved?: boolean;
  /** Name of an enum/flags table in enums.ts, for trace decoding and headers. */
  readonly enumName?: string;
}

export type Fields = Record<string, FieldDef>;

export interface StructDef<F extends Fields = Fields> {
  readonly name: string;
  readonly fields: F;
  /** Version the struct itself appeared in. */
  readonly since?: number;
}

type Opts = Omit<FieldDef, 'type' | 'offset' | 'count'>;
export const u8 = (offset: number, o: Opts = {}): FieldDef<'u8'> => ({ type: 'u8', offset, ...o });
export const u16 = (offset: number, o: Opts = {}): FieldDef<'u16'> => ({ type: 'u16', offset, ...o });
export const u32 = (offset: number, o: Opts = {}): FieldDef<'u32'> => ({ type: 'u32', offset, ...o });
export const s32 = (offset: number, o: Opts = {}): FieldDef<'s32'> => ({ type: 's32', offset, ...o });
export const u64 = (offset: number, o: Opts = {}): FieldDef<'u64'> => ({ type: 'u64', offset, ...o });
export const arr = <T extends ScalarType>(type: T, offset: number, count: number, o: Opts = {}): FieldDef<T> & { count: number } =>
  ({ type, offset, count, ...o });

export function struct<F extends Fields>(name: string, fields: F, since?: number): StructDef<F> {
  return { name, fields, since };
}

type Scalar<T extends ScalarType> = T extends 'u64' ? bigint : number;
type FieldValue<D> = D extends FieldDef<infer T> ? (D extends { count: number } ? Scalar<T>[] : Scalar<T>) : never;
/** The decoded form of a struct: u64 fields are bigint, the rest number. */
export type Decoded<S> = S extends StructDef<infer F> ? { -readonly [K in keyof F]: FieldValue<F[K]> } : never;

export const TYPE_SIZE: Record<ScalarType, number> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

export function fieldSize(f: FieldDef): number {
  return TYPE_SIZE[f.type] * (f.count ?? 1);
}

export function fieldPresent(f: FieldDef, version: number): boolean {
  return f.since === undefined || f.since <= version;
}

/** Is the field declared in the generated header (present, or a header backport of the profile)? */
export function fieldInHeader(f: FieldDef, version: number, headerBackports: boolean): boolean {
  return fieldPresent(f, version) || (headerBackports && f.backport !== undefined && f.backport <= version);
}

/** sizeof(struct) as the kernel of `version` declares it: end of the last present field, aligned. */
export function structSize(s: StructDef, version = Infinity): number {
  let end = 0;
  let align = 1;
  for (const f of Object.values(s.fields)) {
    if (!fieldPresent(f, version)) continue;
    end = Math.max(end, f.offset + fieldSize(f));
    align = Math.max(align, TYPE_SIZE[f.type]);
  }
  return Math.ceil(end / align) * align;
}

/** Offset just past a named member: the "last mandatory member" rule. */
export function endOf(s: StructDef, field: string): number {
  const f = s.fields[field];
  if (!f) throw new Error(`struct ${s.name} has no field ${field}`);
  return f.offset + fieldSize(f);
}

// The codec reads and writes little-endian bytes directly (no DataView per
// call) over a per-(struct, version) list of present fields, computed once:
// decode and encodeInto run for every ioctl.

function u32At(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function readScalar(b: Uint8Array, type: ScalarType, off: number): number | bigint {
  switch (type) {
    case 'u8': return b[off]!;
    case 'u16': return b[off]! | (b[off + 1]! << 8);
    case 'u32': return u32At(b, off);
    case 's32': return u32At(b, off) | 0;
    case 'u64': {
      const lo = u32At(b, off);
      const hi = u32At(b, off + 4);
      return hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo);
    }
  }
}

const U64_MASK = (1n << 64n) - 1n;

function putU32(b: Uint8Array, o: number, x: number): void {
  b[o] = x & 0xff;
  b[o + 1] = (x >>> 8) & 0xff;
  b[o + 2] = (x >>> 16) & 0xff;
  b[o + 3] = (x >>> 24) & 0xff;
}

function writeScalar(b: Uint8Array, type: ScalarType, off: number, v: number | bigint): void {
  switch (type) {
    case 'u8': b[off] = Number(v) & 0xff; return;
    case 'u16': {
      const x = Number(v) & 0xffff;
      b[off] = x & 0xff;
      b[off + 1] = x >>> 8;
      return;
    }
    case 'u32': putU32(b, off, Number(v) >>> 0); return;
    case 's32': putU32(b, off, Number(v) | 0); return;
    case 'u64': {
      const x = BigInt(v) & U64_MASK;
      putU32(b, off, Number(x & 0xffffffffn));
      putU32(b, off + 4, Number(x >> 32n));
      return;
    }
  }
}

/** One member of a struct as the codec walks it. */
interface CodecField {
  readonly name: string;
  readonly f: FieldDef;
  /** Present in this version. */
  readonly present: boolean;
  /** offset + size */
  readonly end: number;
  readonly step: number;
}

const codecCache = new WeakMap<StructDef, Map<number, readonly CodecField[]>>();

function codecFields(s: StructDef, version: number): readonly CodecField[] {
  let byVersion = codecCache.get(s);
  if (!byVersion) codecCache.set(s, (byVersion = new Map()));
  let list = byVersion.get(version);
  if (!list) {
    list = Object.entries(s.fields).map(([name, f]) => ({
      name, f, present: fieldPresent(f, version), end: f.offset + fieldSize(f), step: TYPE_SIZE[f.type],
    }));
    byVersion.set(version, list);
  }
  return list;
}

/** Decode `buf` (at least the struct's size for `version`) into a plain object. */
export function decode<S extends StructDef>(s: S, buf: Uint8Array, version = Infinity): Decoded<S> {
  const out: Record<string, unknown> = {};
  for (const c of codecFields(s, version)) {
    const f = c.f;
    if (!c.present || c.end > buf.length) {
      out[c.name] = f.count ? new Array(f.count).fill(f.type === 'u64' ? 0n : 0) : f.type === 'u64' ? 0n : 0;
      continue;
    }
    if (f.count) {
      const a: (number | bigint)[] = [];
      for (let i = 0; i < f.count; i++) a.push(readScalar(buf, f.type, f.offset + i * c.step));
      out[c.name] = a;
    } else {
      out[c.name] = readScalar(buf, f.type, f.offset);
    }
  }
  return out as Decoded<S>;
}

/** Encode `value` into `buf` (fields not given, aliases and absent fields are left untouched). */
export function encodeInto(s: StructDef, value: Record<string, unknown>, buf: Uint8Array, version = Infinity): Uint8Array {
  for (const c of codecFields(s, version)) {
    const f = c.f;
    if (f.alias || !c.present) continue;
    const v = value[c.name];
    if (v === undefined) continue;
    if (c.end > buf.length) continue;
    if (f.count) {
      const a = v as (number | bigint)[];
      for (let i = 0; i < f.count; i++) writeScalar(buf, f.type, f.offset + i * c.step, a[i] ?? 0);
    } else {
      writeScalar(buf, f.type, f.offset, v as number | bigint);
    }
  }
  return buf;
}

/** Encode into a fresh zeroed buffer of the struct's size (or `size`). */
export function encode(s: StructDef, value: Record<string, unknown>, version = Infinity, size?: number): Uint8Array {
  return encodeInto(s, value, new Uint8Array(size ?? structSize(s, version)), version);
}
