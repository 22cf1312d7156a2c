// The uAPI table as C data: for one profile, every ioctl (request, struct size,
// minimum size), every field of its struct (offset, width, direction, what kind
// of value it holds), every selftest op with its union view, the enum values a
// field takes and the named constants of both headers. The golden-trace program
// (native/golden/golden.c) includes this header and fills, calls and prints
// every request from it, so that the program knows no layout of its own: like
// the shim's wire header, it is generated at build time, never committed.
//
// Usage as a program: node dist/uapi/ctables.js <out-dir> [profile]
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { headerIoctls, TEST_PAYLOAD_STRUCTS } from './cheader.js';
import { ENUMS, enumInProfile, inHeader, TEST_DEFINES } from './enums.js';
import { IOCTL_BY_NAME, IO, VFIO } from './ioctls.js';
import { endOf, fieldInHeader, structSize, TYPE_SIZE, type FieldDef, type StructDef } from './layout.js';
import { getProfile, type Profile } from './profiles.js';
import * as S from './structs.js';

export const TABLES_HEADER = 'iommufd_uapi_tables.h';

/** What a field holds, for choosing values (C enum gt_kind). */
export type FieldKind = 'SIZE' | 'ID' | 'PTR' | 'LEN' | 'IOVA' | 'FLAGS' | 'ENUM' | 'RSVD' | 'FD' | 'SMALL' | 'OTHER';

/**
 * Object pools: an ID field is filled from the pool of its kind, an out field named
 * for an object adds what the kernel wrote to that pool (C enum gt_pool).
 */
export const POOLS = ['NONE', 'ANY', 'IOAS', 'HWPT', 'PT', 'DEV', 'STDEV', 'VIOMMU', 'VDEV', 'FAULT', 'VEVENTQ',
  'HWQ', 'APAGES', 'PARENT', 'IOVA', 'FD_FAULT', 'FD_VEVENTQ', 'FD_ACCESS', 'FD_MEMFD', 'FD_ANY'] as const;
export type Pool = (typeof POOLS)[number];

/** The pool an ID field (input) is drawn from, by its kernel name. */
function inPool(name: string): Pool {
  if (/^(src_|dst_)?ioas_id$/.test(name)) return 'IOAS';
  if (name === 'hwpt_id') return 'HWPT';
  if (name === 'pt_id') return 'PT';
  if (name === 'dev_id') return 'DEV';
  if (name === 'viommu_id') return 'VIOMMU';
  if (name === 'fault_id') return 'FAULT';
  if (name === 'access_pages_id') return 'APAGES';
  return 'ANY';
}

/** The pool a value the kernel wrote back belongs to. */
function outPool(name: string): Pool {
  const m: Record<string, Pool> = {
    out_ioas_id: 'IOAS', ioas_id: 'IOAS', out_hwpt_id: 'HWPT', out_stdev_id: 'STDEV', out_idev_id: 'DEV',
    out_fault_id: 'FAULT', out_viommu_id: 'VIOMMU', out_vdevice_id: 'VDEV', out_veventq_id: 'VEVENTQ',
    out_hw_queue_id: 'HWQ', out_access_pages_id: 'APAGES', iova: 'IOVA', dst_iova: 'IOVA',
    out_fault_fd: 'FD_FAULT', out_veventq_fd: 'FD_VEVENTQ', out_access_fd: 'FD_ACCESS',
  };
  return m[name] ?? 'NONE';
}

export function fieldKind(name: string, f: FieldDef, offset0Size: boolean): FieldKind {
  if ((name === 'size' && offset0Size) || name === 'argsz') return 'SIZE';
  if (f.reserved) return 'RSVD';
  if (f.ptr) return 'PTR';
  if (/(^|_)fd$/.test(name)) return 'FD';
  if (f.enumName) return ENUMS[f.enumName]?.flags ? 'FLAGS' : 'ENUM';
  if (/(^|_)id$/.test(name) && !/^(iotlb|cache|virt|vdev)_id$/.test(name)) return 'ID';
  if (/iova|^addr$|^start$|^last$|^iova_pgsizes$/.test(name) && f.type === 'u64') return 'IOVA';
  if (/len|length|^num|_num$|depth|^size$|^page_size$/.test(name)) return 'LEN';
  if (/flags/.test(name)) return 'FLAGS';
  if (/^(id|index|pasid|refs|revoked|cache|iotlb_id|cache_id|vdev_id|virt_id|grpid|code|cookie|in_data|op)$/.test(name)) return 'SMALL';
  return 'OTHER';
}

/**
 * Enum tables whose values also include selftest constants of iommufd_test.h (the mock
 * driver's data types are #defines there, not members of the uAPI enum).
 */
const SELFTEST_VALUES: Record<string, readonly string[]> = {
  iommu_hwpt_data_type: ['IOMMU_HWPT_DATA_SELFTEST'],
  iommu_hw_info_type: ['IOMMU_HW_INFO_TYPE_SELFTEST'],
  iommu_hwpt_invalidate_data_type: ['IOMMU_HWPT_INVALIDATE_DATA_SELFTEST', 'IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID',
    'IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST', 'IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID'],
  iommu_viommu_type: ['IOMMU_VIOMMU_TYPE_SELFTEST'],
  iommu_veventq_type: ['IOMMU_VEVENTQ_TYPE_SELFTEST'],
  iommu_hw_queue_type: ['IOMMU_HW_QUEUE_TYPE_SELFTEST'],
};

/** VFIO type1 requests iommufd answers on its own fd: struct, or none (an int argument). */
const VFIO_REQUESTS: readonly [string, number, StructDef | null][] = [
  ['VFIO_GET_API_VERSION', VFIO.GET_API_VERSION, null],
  ['VFIO_CHECK_EXTENSION', VFIO.CHECK_EXTENSION, null],
  ['VFIO_SET_IOMMU', VFIO.SET_IOMMU, null],
  ['VFIO_IOMMU_GET_INFO', VFIO.IOMMU_GET_INFO, S.vfio_iommu_type1_info],
  ['VFIO_IOMMU_MAP_DMA', VFIO.IOMMU_MAP_DMA, S.vfio_iommu_type1_dma_map],
  ['VFIO_IOMMU_UNMAP_DMA', VFIO.IOMMU_UNMAP_DMA, S.vfio_iommu_type1_dma_unmap],
  ['VFIO_IOMMU_DIRTY_PAGES', VFIO.IOMMU_DIRTY_PAGES, null],
];

const cstr = (s: string): string => JSON.stringify(s);
const u64lit = (v: number | bigint): string => `UINT64_C(${BigInt(v).toString()})`;

class Emitter {
  readonly lines: string[] = [];
  private readonly structIds = new Map<StructDef, string>();
  private readonly enumIds = new Map<string, number>();
  readonly enumLines: string[] = [];
  private n = 0;
  constructor(readonly profile: Profile) {}

  enumIndex(name: string): number {
    const known = this.enumIds.get(name);
    if (known !== undefined) return known;
    const e = ENUMS[name];
    const values: number[] = [];
    if (e && enumInProfile(e, this.profile)) for (const m of e.members) if (inHeader(m, this.profile)) values.push(m.value);
    for (const c of SELFTEST_VALUES[name] ?? []) {
      const d = TEST_DEFINES.find((t) => t.name === c);
      if (d && inHeader(d, this.profile)) values.push(d.value);
    }
    const idx = this.enumIds.size;
    this.enumIds.set(name, idx);
    const vals = [...new Set(values)];
    // What the selftest mock implements: its own constants, and the "none/default" 0 beside them.
    const none = e?.members.find((m) => m.value === 0 && /_NONE$/.test(m.name));
    const mock = SELFTEST_VALUES[name] ? vals.filter((x) => (x === 0 && !!none) || !e?.members.some((m) => m.value === x)) : [];
    this.enumLines.push(`\t{ ${cstr(name)}, ${e?.flags ? 1 : 0}, ${vals.length}, (const uint64_t[]){ ${vals.map(u64lit).join(', ') || '0'} }, ` +
      `${mock.length}, (const uint64_t[]){ ${mock.map(u64lit).join(', ') || '0'} } },`);
    return idx;
  }

  /** Emit the fields of `s` (those at or above `from`) and return the C name of its descriptor. */
  struct(s: StructDef, from = 0, size?: number, label = s.name): string {
    const known = this.structIds.get(s);
    if (known && from === 0) return known;
    const id = `gt_st_${this.n++}`;
    const v = this.profile.version;
    const fields = Object.entries(s.fields)
      .filter(([, f]) => f.offset >= from && !f.alias && fieldInHeader(f, v, this.profile.headerBackports));
    const rows = fields.map(([name, f]) => {
      const kind = fieldKind(name, f, f.offset === 0);
      const flags = [f.out ? 'GT_OUT' : '', f.ptr ? 'GT_PTR' : '', f.reserved ? 'GT_RSVD' : '', f.type === 's32' ? 'GT_SIGNED' : '']
        .filter(Boolean).join('|') || '0';
      const en = f.enumName ? this.enumIndex(f.enumName) : -1;
      return `\t{ ${cstr(name)}, ${TYPE_SIZE[f.type]}, ${f.offset}, ${f.count ?? 0}, ${flags}, GT_K_${kind}, ` +
        `GT_P_${kind === 'ID' ? inPool(name) : 'NONE'}, GT_P_${f.out ? outPool(name) : 'NONE'}, ${en} },`;
    });
    this.lines.push(`static const struct gt_field ${id}_f[] = {`, ...(rows.length ? rows : ['\t{ 0 }']), '};');
    this.lines.push(`static const struct gt_struct ${id} = { ${cstr(label)}, ${size ?? structSize(s, v)}, ${fields.length}, ${id}_f };`);
    if (from === 0) this.structIds.set(s, id);
    return id;
  }
}

/** The C header of the uAPI tables for `profile`. */
export function generateTables(profile: Profile): string {
  const e = new Emitter(profile);
  const ioctls: string[] = [];
  for (const d of headerIoctls(profile)) {
    const st = e.struct(d.struct);
    ioctls.push(`\t{ ${cstr(d.cname)}, 0x${IO(d.nr).toString(16)}, ${endOf(d.struct, d.last)}, &${st} },`);
  }
  const test = IOCTL_BY_NAME.get('TEST_CMD')!;
  const testHdr = e.struct(S.iommu_test_cmd, 0, S.IOMMU_TEST_CMD_SIZE);
  ioctls.push(`\t{ "IOMMU_TEST_CMD", 0x${IO(test.nr).toString(16)}, ${endOf(test.struct, test.last)}, &${testHdr} },`);
  for (const [name, req, st] of VFIO_REQUESTS) {
    ioctls.push(st ? `\t{ ${cstr(name)}, 0x${req.toString(16)}, ${endOf(st, 'argsz') + 4}, &${e.struct(st)} },`
      : `\t{ ${cstr(name)}, 0x${req.toString(16)}, 0, NULL },`);
  }
  const ops: string[] = [];
  for (const m of ENUMS.iommu_test_op!.members) {
    if (!inHeader(m, profile)) continue;
    const view = S.TEST_OP_VIEWS[m.value];
    ops.push(`\t{ ${cstr(m.name)}, ${m.value}, ${view ? `&${e.struct(view, 16)}` : 'NULL'} },`);
  }
  const payloads = [...TEST_PAYLOAD_STRUCTS, S.iommu_iova_range, S.iommu_hwpt_page_response]
    .filter((s) => s.since === undefined || s.since <= profile.version)
    .map((s) => `\t&${e.struct(s)},`);
  const consts: string[] = [];
  for (const en of Object.values(ENUMS)) {
    if (!enumInProfile(en, profile)) continue;
    for (const m of en.members) if (inHeader(m, profile)) consts.push(`\t{ ${cstr(m.name)}, ${u64lit(m.value)} },`);
  }
  for (const t of TEST_DEFINES) if (inHeader(t, profile)) consts.push(`\t{ ${cstr(t.name)}, ${u64lit(t.value)} },`);
  return [
    `/* Generated by iommufd-emu from its uAPI table (src/uapi/ctables.ts) for ABI profile ${profile.name}. Do not edit. */`,
    '#ifndef IOMMUFD_UAPI_TABLES_H',
    '#define IOMMUFD_UAPI_TABLES_H',
    '#include <stddef.h>',
    '#include <stdint.h>',
    `#define GT_PROFILE ${cstr(profile.name)}`,
    `#define GT_VERSION ${profile.version}`,
    'enum { GT_OUT = 1, GT_PTR = 2, GT_RSVD = 4, GT_SIGNED = 8 };',
    `enum gt_kind { ${['SIZE', 'ID', 'PTR', 'LEN', 'IOVA', 'FLAGS', 'ENUM', 'RSVD', 'FD', 'SMALL', 'OTHER'].map((k) => `GT_K_${k}`).join(', ')} };`,
    `enum gt_pool { ${POOLS.map((p) => `GT_P_${p}`).join(', ')}, GT_NPOOLS };`,
    `static const char *const gt_pool_names[] = { ${POOLS.map(cstr).join(', ')} };`,
    'struct gt_field { const char *name; uint8_t width; uint16_t offset; uint16_t count; uint8_t flags;',
    '\tuint8_t kind; uint8_t pool; uint8_t out_pool; int16_t enum_idx; };',
    'struct gt_struct { const char *name; uint32_t size; uint32_t nfields; const struct gt_field *fields; };',
    'struct gt_ioctl { const char *name; unsigned long request; uint32_t min_size; const struct gt_struct *st; };',
    'struct gt_enum { const char *name; uint8_t flags; uint32_t n; const uint64_t *values; uint32_t nmock; const uint64_t *mock; };',
    'struct gt_test_op { const char *name; uint32_t op; const struct gt_struct *view; };',
    'struct gt_const { const char *name; uint64_t value; };',
    ...e.lines,
    'static const struct gt_enum gt_enums[] = {', ...e.enumLines, '\t{ NULL, 0, 0, NULL, 0, NULL },', '};',
    'static const struct gt_ioctl gt_ioctls[] = {', ...ioctls, '};',
    'static const struct gt_test_op gt_test_ops[] = {', ...ops, '};',
    'static const struct gt_struct *const gt_payloads[] = {', ...payloads, '};',
    'static const struct gt_const gt_consts[] = {', ...consts, '};',
    '#define GT_N(a) (sizeof(a) / sizeof((a)[0]))',
    '#endif',
    '',
  ].join('\n');
}

/** Write the tables header for `profileName` into `dir`; returns its path. */
export function writeTables(dir: string, profileName: string): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, TABLES_HEADER);
  writeFileSync(file, generateTables(getProfile(profileName)));
  return file;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [dir, profile = 'mainline'] = process.argv.slice(2);
  if (!dir) {
    process.stderr.write('usage: node dist/uapi/ctables.js <out-dir> [profile]\n');
    process.exit(2);
  }
  process.stdout.write(`${writeTables(dir, profile)}\n`);
}
