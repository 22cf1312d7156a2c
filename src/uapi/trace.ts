// Generic, table-driven formatting of ioctl traces: one line per call, e.g.
//
//   IOMMU_IOAS_MAP {flags=FIXED_IOVA|READABLE ioas_id=1 user_va=0x7f00 length=0x1000 iova=0x1000000} = 0 -> {iova=0x1000000}
//
// Inputs are the struct as the caller passed it, the result is 0 (or a positive
// return value) or an errno name, outputs are the fields the kernel writes
// (`out` in structs.ts) as copied back. Nothing here knows a particular ioctl:
// names, layouts and enum tables all come from the uAPI table.
import { ENUMS, inHeader, TEST_DEFINES, type EnumDef } from './enums.js';
import { errnoName } from './errno.js';
import { ioctlTable, IOMMUFD_TYPE, VFIO, type ProfileIoctl } from './ioctls.js';
import { decode, fieldPresent, fieldSize, structSize, type FieldDef, type StructDef } from './layout.js';
import type { Profile } from './profiles.js';
import * as S from './structs.js';
import { VFIO_IOCTLS, type VfioIoctlDef } from './vfio.js';

type Value = number | bigint | (number | bigint)[];

/** Selftest type values that are not enum members but are valid in these enum-typed fields. */
const TEST_VALUES: Record<string, string[]> = {
  iommu_hw_info_type: ['IOMMU_HW_INFO_TYPE_SELFTEST'],
  iommu_hwpt_data_type: ['IOMMU_HWPT_DATA_SELFTEST'],
  iommu_hwpt_invalidate_data_type: ['IOMMU_HWPT_INVALIDATE_DATA_SELFTEST', 'IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID'],
  iommu_viommu_type: ['IOMMU_VIOMMU_TYPE_SELFTEST'],
  iommu_veventq_type: ['IOMMU_VEVENTQ_TYPE_SELFTEST'],
  iommu_hw_queue_type: ['IOMMU_HW_QUEUE_TYPE_SELFTEST'],
};

/** Longest common prefix of the member names, cut after an underscore. */
function commonPrefix(names: string[]): string {
  if (names.length === 0) return '';
  let p = names[0]!;
  for (const n of names) while (!n.startsWith(p)) p = p.slice(0, -1);
  const cut = p.lastIndexOf('_');
  return cut < 0 ? '' : p.slice(0, cut + 1);
}

/** For one-member enums, the conventional family prefix to strip (no common prefix to compute). */
const SINGLE_MEMBER_PREFIXES = [
  'IOMMU_HW_INFO_FLAG_', 'IOMMU_HW_INFO_VTD_', 'IOMMU_HWPT_DIRTY_', 'IOMMU_HWPT_GET_DIRTY_BITMAP_',
  'IOMMU_VTD_INV_FLAGS_', 'IOMMU_VEVENTQ_FLAG_', 'MOCK_FLAGS_ACCESS_CREATE_', 'IOMMU_HW_INFO_ARM_SMMUV3_',
];

const prefixCache = new Map<EnumDef, string>();
/** The prefix trace lines strip from member names (IOMMU_IOAS_MAP_FIXED_IOVA -> FIXED_IOVA). */
function enumPrefix(e: EnumDef): string {
  let p = prefixCache.get(e);
  if (p === undefined) {
    const names = e.members.map((m) => m.name);
    p = names.length > 1 ? commonPrefix(names) : SINGLE_MEMBER_PREFIXES.find((k) => names[0]!.startsWith(k)) ?? '';
    prefixCache.set(e, p);
  }
  return p;
}

function hex(v: number | bigint): string {
  return '0x' + v.toString(16);
}

/** Symbolic form of `value` for the enum/flags table `enumName` in `profile`. */
export function enumText(enumName: string, value: number, profile: Profile): string {
  const e = ENUMS[enumName];
  if (!e) return hex(value);
  const members = e.members.filter((m) => inHeader(m, profile));
  const pre = enumPrefix(e);
  const short = (n: string): string => (n.startsWith(pre) ? n.slice(pre.length) : n);
  if (e.flags) {
    if (value === 0) return '0';
    const parts: string[] = [];
    let rest = value >>> 0;
    for (const m of members) {
      if (m.value !== 0 && (rest & m.value) === m.value) {
        parts.push(short(m.name));
        rest = (rest & ~m.value) >>> 0;
      }
    }
    if (rest) parts.push(hex(rest));
    return parts.join('|');
  }
  const m = members.find((x) => x.value === value);
  if (m) return short(m.name);
  for (const name of TEST_VALUES[enumName] ?? []) {
    const d = TEST_DEFINES.find((t) => t.name === name);
    if (d && d.value === value >>> 0) return short(name);
  }
  return value < 0x100 ? String(value) : hex(value);
}

function isZero(v: Value): boolean {
  return Array.isArray(v) ? v.every((x) => x === 0 || x === 0n) : v === 0 || v === 0n;
}

function valueText(name: string, f: FieldDef, v: Value, profile: Profile): string {
  if (Array.isArray(v)) return '[' + v.map((x) => (typeof x === 'bigint' ? hex(x) : String(x))).join(',') + ']';
  if (f.enumName && (typeof v === 'number' || v <= 0xffffffffn)) return enumText(f.enumName, Number(v), profile);
  if (typeof v === 'bigint') return hex(v);
  if (f.type === 's32') return String(v);
  if (/flags/.test(name) && v !== 0) return hex(v);
  // Plain u32s this large are magic values or bit patterns (iotlb tags, type codes), not counts or IDs.
  return v >= 0x10000 ? hex(v) : String(v);
}

interface FieldSel {
  /** Printing the caller's struct (true) or the copied-back one (false). */
  input: boolean;
  /** Hide this field name (e.g. size when it equals the kernel's size). */
  hide?: (name: string, v: Value) => boolean;
}

function fieldsText(s: StructDef, bytes: Uint8Array, profile: Profile, sel: FieldSel): string[] {
  const v = profile.version;
  const dec = decode(s, bytes, v) as Record<string, Value>;
  const out: string[] = [];
  const entries = Object.entries(s.fields)
    .filter(([, f]) => fieldPresent(f, v) && f.offset + fieldSize(f) <= bytes.length)
    .sort((a, b) => a[1].offset - b[1].offset);
  for (const [name, f] of entries) {
    const val = dec[name]!;
    if (sel.hide?.(name, val)) continue;
    if (f.reserved && isZero(val)) continue;
    if (sel.input) {
      // Output-only words and union aliases are shown on input only when the caller set them;
      // where an input alias shares the word (in_data_type/out_data_type), the input name wins.
      if ((f.out || f.alias) && isZero(val)) continue;
      if (f.out && entries.some(([n, g]) => n !== name && g.offset === f.offset && !g.out)) continue;
    } else if (!f.out) {
      continue;
    }
    out.push(`${name}=${valueText(name, f, val, profile)}`);
  }
  return out;
}

function resultText(result: number | string): string {
  if (typeof result === 'string') return result;
  if (result < 0) return errnoName(-result) ?? String(result);
  return String(result);
}

const VFIO_NAMES: [number, string, StructDef | undefined][] = [
  [VFIO.GET_API_VERSION, 'VFIO_GET_API_VERSION', undefined],
  [VFIO.CHECK_EXTENSION, 'VFIO_CHECK_EXTENSION', undefined],
  [VFIO.SET_IOMMU, 'VFIO_SET_IOMMU', undefined],
  [VFIO.IOMMU_GET_INFO, 'VFIO_IOMMU_GET_INFO', S.vfio_iommu_type1_info],
  [VFIO.IOMMU_MAP_DMA, 'VFIO_IOMMU_MAP_DMA', S.vfio_iommu_type1_dma_map],
  [VFIO.IOMMU_UNMAP_DMA, 'VFIO_IOMMU_UNMAP_DMA', S.vfio_iommu_type1_dma_unmap],
  [VFIO.IOMMU_DIRTY_PAGES, 'VFIO_IOMMU_DIRTY_PAGES', undefined],
];

/** A group or device request by number (the numbers repeat across the VFIO file kinds). */
function vfioFileDef(request: number, file: 'group' | 'device'): VfioIoctlDef | undefined {
  return VFIO_IOCTLS.find((d) => d.file === file && d.request === request >>> 0);
}

const tables = new WeakMap<Profile, Map<number, ProfileIoctl>>();
function table(profile: Profile): Map<number, ProfileIoctl> {
  let t = tables.get(profile);
  if (!t) tables.set(profile, (t = ioctlTable(profile, true)));
  return t;
}

/**
 * How many bytes of the caller's struct a trace of `request` shows, given the
 * struct's first 4 bytes (`head`, null if unreadable): an iommufd ioctl's
 * `size` capped to the kernel's struct, a VFIO request's struct; 0 when the
 * argument is not a struct (or the request is unknown).
 */
export function traceSpan(profile: Profile, request: number, head: Uint8Array | null, file?: 'group' | 'device'): number {
  if (((request >>> 8) & 0xff) !== IOMMUFD_TYPE) return 0;
  if (file) {
    const st = vfioFileDef(request, file)?.struct;
    return st ? structSize(st, profile.version) : 0;
  }
  const nr = request & 0xff;
  if (nr >= 0x80) {
    const def = table(profile).get(nr);
    if (!def || !head || head.length < 4) return 0;
    return Math.min(Math.max(u32At(head, 0), 4), def.knownSize);
  }
  const st = VFIO_NAMES.find(([r]) => r === request >>> 0)?.[2];
  return st ? structSize(st) : 0;
}

function u32At(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, true);
}

function braces(parts: string[]): string {
  return `{${parts.join(' ')}}`;
}

/** An ioctl trace taken apart: name, input fields, result, output fields (`name=value` each). */
export interface IoctlParts {
  readonly name: string;
  /** The caller's struct; null when the argument is not a struct, ['?'] when it was unreadable. */
  readonly input: readonly string[] | null;
  readonly result: string;
  /** The kernel-written fields; null when there is nothing to show (see formatIoctl). */
  readonly output: readonly string[] | null;
}

/**
 * One trace line for an ioctl on an iommufd: request name, decoded input, the
 * result (0, a positive return value, or an errno name / negative errno) and
 * the decoded output. `inBytes` is what the caller passed (null if unreadable),
 * `outBytes` the struct as read back afterwards (null if nothing was copied back).
 * The `-> {...}` part lists the kernel-written fields; it is left out when the
 * struct has none, and after a failure when the bytes did not change (no copy-back).
 */
export function formatIoctl(profile: Profile, request: number, inBytes: Uint8Array | null,
  outBytes: Uint8Array | null, result: number | string, file?: 'group' | 'device'): string {
  const p = ioctlParts(profile, request, inBytes, outBytes, result, file);
  return `${p.name}${p.input ? ` ${braces([...p.input])}` : ''} = ${p.result}${p.output ? ` -> ${braces([...p.output])}` : ''}`;
}

/** formatIoctl's line, taken apart (the inspector shows the fields as a table). */
export function ioctlParts(profile: Profile, request: number, inBytes: Uint8Array | null,
  outBytes: Uint8Array | null, result: number | string, file?: 'group' | 'device'): IoctlParts {
  const res = resultText(result);
  if (file) {
    const d = vfioFileDef(request, file);
    if (!d) return { name: `ioctl(${hex(request >>> 0)})`, input: null, result: res, output: null };
    return vfioParts(profile, d.name, d.struct, inBytes, outBytes, result, res);
  }
  const nr = request & 0xff;
  const def = table(profile).get(nr);
  if (!def || def.request !== request) {
    const vfio = ((request >>> 8) & 0xff) === IOMMUFD_TYPE ? VFIO_NAMES.find(([r]) => r === request) : undefined;
    if (!vfio) return { name: `ioctl(${hex(request >>> 0)})`, input: null, result: res, output: null };
    const [, name, st] = vfio;
    return vfioParts(profile, name, st, inBytes, outBytes, result, res);
  }
  if (!inBytes) return { name: def.cname, input: ['?'], result: res, output: null };
  const hideSize = (name: string, v: Value): boolean => name === 'size' && v === def.knownSize;
  if (def.name === 'TEST_CMD') return testCmdParts(profile, def, inBytes, outBytes, res, hideSize);
  return {
    name: def.cname, input: fieldsText(def.struct, inBytes, profile, { input: true, hide: hideSize }), result: res,
    output: arrow(fieldsText(def.struct, outBytes ?? new Uint8Array(0), profile, { input: false }), inBytes, outBytes, result),
  };
}

/** A VFIO request's parts: its struct (the header of variable-size ones) when it has one. */
function vfioParts(profile: Profile, name: string, st: StructDef | undefined, inBytes: Uint8Array | null,
  outBytes: Uint8Array | null, result: number | string, res: string): IoctlParts {
  if (!st || !inBytes) return { name, input: null, result: res, output: null };
  return {
    name, input: fieldsText(st, inBytes, profile, { input: true }), result: res,
    output: arrow(fieldsText(st, outBytes ?? new Uint8Array(0), profile, { input: false }), inBytes, outBytes, result),
  };
}

function isFailure(result: number | string): boolean {
  return typeof result === 'string' ? result !== '0' && !/^\d+$/.test(result) : result < 0;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The output fields, or null: no outputs, nothing copied back, or a failure that left the struct untouched. */
function arrow(parts: string[], inBytes: Uint8Array, outBytes: Uint8Array | null, result: number | string): string[] | null {
  if (!outBytes || parts.length === 0) return null;
  if (isFailure(result) && sameBytes(inBytes, outBytes)) return null;
  return parts;
}

function testCmdParts(profile: Profile, def: ProfileIoctl, inBytes: Uint8Array, outBytes: Uint8Array | null,
  res: string, hideSize: (name: string, v: Value) => boolean): IoctlParts {
  const hide = (name: string, v: Value): boolean => hideSize(name, v) || (name === 'last' && isZero(v));
  const head = fieldsText(def.struct, inBytes, profile, { input: true, hide });
  const op = inBytes.length >= 8 ? u32At(inBytes, 4) : -1;
  // Only ops this profile's kernel knows have a union member to decode.
  const known = ENUMS.iommu_test_op!.members.some((m) => m.value === op &&
    inHeader(m, profile));
  const view = known ? S.TEST_OP_VIEWS[op] : undefined;
  // Union fields named like a header field (check_iotlb.id, check_dev_cache.id) carry the member name.
  const clash = new Set(Object.keys(def.struct.fields));
  const qualify = (parts: string[]): string[] =>
    parts.map((p) => (clash.has(p.slice(0, p.indexOf('='))) ? `${view!.name}.${p}` : p));
  const inParts = view ? [...head, ...qualify(fieldsText(view, inBytes, profile, { input: true }))] : head;
  let output: string[] | null = null;
  if (outBytes) {
    const outParts = [...fieldsText(def.struct, outBytes, profile, { input: false })];
    if (view) outParts.push(...qualify(fieldsText(view, outBytes, profile, { input: false })));
    output = arrow(outParts, inBytes, outBytes, res);
  }
  return { name: def.cname, input: inParts, result: res, output };
}

/**
 * `{field=value ...}` for any table struct (records read from FAULT / vEVENTQ fds,
 * driver payloads): every present field that fits in `bytes`, reserved words only
 * when non-zero.
 */
export function formatStruct(profile: Profile, s: StructDef, bytes: Uint8Array): string {
  const v = profile.version;
  const dec = decode(s, bytes, v) as Record<string, Value>;
  const parts = Object.entries(s.fields)
    .filter(([, f]) => fieldPresent(f, v) && !f.alias && f.offset + fieldSize(f) <= bytes.length)
    .sort((a, b) => a[1].offset - b[1].offset)
    .filter(([name, f]) => !(f.reserved && isZero(dec[name]!)))
    .map(([name, f]) => `${name}=${valueText(name, f, dec[name]!, profile)}`);
  return braces(parts);
}
