// C header generator: writes linux/iommufd.h and iommufd_test.h for one ABI
// profile, entirely from the uAPI tables (structs.ts, enums.ts, ioctls.ts). The
// output is what a C program (the kernel selftests, the LD_PRELOAD shim) needs
// to talk to the emulator with exactly the layouts the emulator decodes; every
// struct carries a _Static_assert on its size so that compiling anything
// against the headers re-checks the table against the C compiler's layout.
//
// Usage as a program: node dist/uapi/cheader.js <out-dir> [profile]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ENUMS, enumInProfile, inHeader, TEST_DEFINES, type EnumDef, type EnumMember } from './enums.js';
import { IOCTLS, IOMMUFD_CMD_BASE, ioctlPresent, type IoctlDef } from './ioctls.js';
import { fieldInHeader, structSize, TYPE_SIZE, type FieldDef, type StructDef } from './layout.js';
import { getProfile, type Profile } from './profiles.js';
import * as S from './structs.js';

export interface GeneratedHeaders {
  'linux/iommufd.h': string;
  'iommufd_test.h': string;
}

// ---- Which structs go where ---------------------------------------------------

/** Driver-specific payloads (HWPT data, hw_info data, invalidation entries, vEVENTs). */
export const DRIVER_PAYLOAD_STRUCTS: readonly StructDef[] = [
  S.iommu_hwpt_vtd_s1, S.iommu_hwpt_arm_smmuv3, S.iommu_hwpt_amd_guest,
  S.iommu_hw_info_vtd, S.iommu_hw_info_arm_smmuv3, S.iommu_hw_info_tegra241_cmdqv, S.iommu_hw_info_amd,
  S.iommu_hwpt_vtd_s1_invalidate, S.iommu_viommu_arm_smmuv3_invalidate, S.iommu_viommu_tegra241_cmdqv,
  S.iommu_vevent_arm_smmuv3, S.iommu_vevent_tegra241_cmdqv,
];

/** Records read from / written to the FAULT and vEVENTQ fds. */
export const RECORD_STRUCTS: readonly StructDef[] = [
  S.iommu_hwpt_pgfault, S.iommu_hwpt_page_response, S.iommufd_vevent_header,
];

/** Payloads of the selftest mock driver (iommufd_test.h). */
export const TEST_PAYLOAD_STRUCTS: readonly StructDef[] = [
  S.iommu_test_hw_info, S.iommu_hwpt_selftest, S.iommu_hwpt_invalidate_selftest, S.iommu_viommu_selftest,
  S.iommu_viommu_invalidate_selftest, S.iommu_viommu_event_selftest,
];

/** Helper structs that are neither an ioctl's argument nor a payload. */
export const HELPER_STRUCTS: readonly StructDef[] = [S.iommu_iova_range];

/** Structs that are not part of either generated header (VFIO compat lives in linux/vfio.h). */
export const NOT_IN_HEADERS: readonly StructDef[] = [
  S.vfio_iommu_type1_info, S.vfio_iommu_type1_dma_map, S.vfio_iommu_type1_dma_unmap, S.vfio_info_cap_header,
  S.vfio_iommu_type1_info_dma_avail, S.vfio_iommu_type1_info_cap_iova_range, S.vfio_iova_range,
  // Newest-tree-only ioctl that is not in the ioctl table (optional no-IOMMU mode).
  S.iommu_ioas_noiommu_get_pa,
];

const TEST_UNION_START = 16;

const present = (s: StructDef, version: number): boolean => s.since === undefined || s.since <= version;

/** The ioctls of `profile` (without the test command), in number order. */
export function headerIoctls(profile: Profile): IoctlDef[] {
  return IOCTLS.filter((d) => !d.test && ioctlPresent(d, profile, false)).sort((a, b) => a.nr - b.nr);
}

/** Every struct of linux/iommufd.h for `profile`, in emission order. */
export function coreStructs(profile: Profile): StructDef[] {
  const out: StructDef[] = [];
  const add = (s: StructDef): void => { if (!out.includes(s)) out.push(s); };
  HELPER_STRUCTS.filter((s) => present(s, profile.version)).forEach(add);
  headerIoctls(profile).forEach((d) => add(d.struct));
  DRIVER_PAYLOAD_STRUCTS.filter((s) => present(s, profile.version)).forEach(add);
  RECORD_STRUCTS.filter((s) => present(s, profile.version)).forEach(add);
  return out;
}

/** The selftest payload structs of iommufd_test.h for `profile`. */
export function testStructs(profile: Profile): StructDef[] {
  return TEST_PAYLOAD_STRUCTS.filter((s) => present(s, profile.version));
}

/** The C union members of iommu_test_cmd present in `profile`: [member name, view, op value]. */
export function testUnionMembers(profile: Profile): { name: string; view: StructDef; op: number }[] {
  const seen = new Set<StructDef>();
  const out: { name: string; view: StructDef; op: number }[] = [];
  for (const m of ENUMS.iommu_test_op!.members) {
    if (!inHeader(m, profile)) continue;
    const view = S.TEST_OP_VIEWS[m.value];
    if (!view || seen.has(view)) continue;
    seen.add(view);
    out.push({ name: view.name, view, op: m.value });
  }
  return out;
}

// ---- C text helpers ----------------------------------------------------------------

const C_TYPE: Record<FieldDef['type'], string> = {
  u8: '__u8', u16: '__u16', u32: '__u32', s32: '__s32', u64: '__aligned_u64',
};

function hex(v: number): string {
  return '0x' + v.toString(16);
}

function enumValueText(e: EnumDef, m: EnumMember): string {
  const v = m.value;
  if (e.flags && v > 0 && (v & (v - 1)) === 0) return `1 << ${Math.log2(v)}`;
  return v < 0x100 ? String(v) : hex(v);
}

/** Field lines of a struct body (fields at `base` and above), with padding and unions for aliases. */
function fieldLines(fields: [string, FieldDef][], indent: string, base = 0): string[] {
  const lines: string[] = [];
  const byOffset = new Map<number, [string, FieldDef][]>();
  for (const e of fields) {
    const g = byOffset.get(e[1].offset) ?? [];
    g.push(e);
    byOffset.set(e[1].offset, g);
  }
  const decl = ([name, f]: [string, FieldDef]): string =>
    `${C_TYPE[f.type]} ${name}${f.count !== undefined ? `[${f.count}]` : ''};`;
  let cur = base;
  let pad = 0;
  for (const off of [...byOffset.keys()].sort((a, b) => a - b)) {
    const group = byOffset.get(off)!.sort((a, b) => Number(!!a[1].alias) - Number(!!b[1].alias));
    const size = TYPE_SIZE[group[0]![1].type];
    const natural = Math.ceil(cur / size) * size;
    if (off < cur) throw new Error(`overlapping fields at offset ${off} (${group.map((g) => g[0]).join(', ')})`);
    if (off !== natural) lines.push(`${indent}__u8 __pad${pad++}[${off - cur}];`);
    if (group.length === 1) {
      lines.push(indent + decl(group[0]!));
    } else {
      lines.push(`${indent}union {`);
      for (const g of group) lines.push(`${indent}\t${decl(g)}`);
      lines.push(`${indent}};`);
    }
    cur = off + Math.max(...group.map(([, f]) => TYPE_SIZE[f.type] * (f.count ?? 1)));
  }
  return lines;
}

/** The fields the header of `profile` declares (header backports included). */
function presentFields(s: StructDef, profile: Profile): [string, FieldDef][] {
  return Object.entries(s.fields).filter(([, f]) => fieldInHeader(f, profile.version, profile.headerBackports));
}

function cStruct(s: StructDef, profile: Profile): string {
  const size = structSize(s, profile.version);
  return [
    `struct ${s.name} {`,
    ...fieldLines(presentFields(s, profile), '\t'),
    '};',
    `${ASSERT_MACRO}(sizeof(struct ${s.name}) == ${size}, "struct ${s.name} must be ${size} bytes");`,
  ].join('\n');
}

function cEnum(e: EnumDef, profile: Profile): string | undefined {
  const members = e.members.filter((m) => inHeader(m, profile));
  if (members.length === 0) return undefined;
  const body = members.map((m) => `\t${m.name} = ${enumValueText(e, m)},`);
  return [e.anon ? 'enum {' : `enum ${e.name} {`, ...body, '};'].join('\n');
}

/** Enums of one header: by their own `since`, or because a struct emitted there names them. */
function headerEnums(profile: Profile, test: boolean, structs: StructDef[]): EnumDef[] {
  const named = new Set<string>();
  for (const s of structs) {
    for (const f of Object.values(s.fields)) if (f.enumName && fieldInHeader(f, profile.version, profile.headerBackports)) named.add(f.enumName);
  }
  return Object.values(ENUMS).filter((e) =>
    !!e.test === test && (enumInProfile(e, profile) || named.has(e.name)));
}

function cmdMacroName(d: IoctlDef): string {
  return 'IOMMUFD_CMD_' + d.cname.replace(/^IOMMU_/, '');
}

/** Size checks as a macro so the headers also work from C++ (static_assert) and C11 (_Static_assert). */
const ASSERT_MACRO = '__IOMMUFD_EMU_LAYOUT_CHECK';
const ASSERT_PRELUDE = [
  `#ifndef ${ASSERT_MACRO}`,
  '#ifdef __cplusplus',
  `#define ${ASSERT_MACRO}(cond, msg) static_assert(cond, msg)`,
  '#else',
  `#define ${ASSERT_MACRO}(cond, msg) _Static_assert(cond, msg)`,
  '#endif',
  '#endif',
].join('\n');

function banner(profile: Profile, what: string): string {
  return [
    '/* SPDX-License-Identifier: MIT */',
    `/*`,
    ` * ${what}`,
    ` * Generated by iommufd-emu (src/uapi/cheader.ts) from its uAPI tables for ABI`,
    ` * profile "${profile.name}" (version ${profile.version}). Do not edit: regenerate.`,
    ` */`,
  ].join('\n');
}

// ---- The two headers ----------------------------------------------------------------

function generateCore(profile: Profile): string {
  const ioctls = headerIoctls(profile);
  const structs = coreStructs(profile);
  const parts: string[] = [
    banner(profile, 'IOMMUFD user API: ioctl numbers, argument structs, enums.'),
    '#ifndef _UAPI_IOMMUFD_H\n#define _UAPI_IOMMUFD_H',
    '#include <linux/ioctl.h>\n#include <linux/types.h>',
    ASSERT_PRELUDE,
    '#define IOMMUFD_TYPE (\';\')',
  ];
  const cmds = ioctls.map((d, i) => i === 0 && d.nr === IOMMUFD_CMD_BASE
    ? `\t${cmdMacroName(d)} = IOMMUFD_CMD_BASE,`
    : `\t${cmdMacroName(d)} = ${hex(d.nr)},`);
  parts.push(['enum {', `\tIOMMUFD_CMD_BASE = ${hex(IOMMUFD_CMD_BASE)},`, ...cmds, '};'].join('\n'));
  for (const e of headerEnums(profile, false, structs)) {
    const t = cEnum(e, profile);
    if (t) parts.push(t);
  }
  const macroFor = new Map<StructDef, IoctlDef[]>();
  for (const d of ioctls) macroFor.set(d.struct, [...(macroFor.get(d.struct) ?? []), d]);
  for (const s of structs) {
    let text = cStruct(s, profile);
    for (const d of macroFor.get(s) ?? []) {
      text += `\n#define ${d.cname} _IO(IOMMUFD_TYPE, ${cmdMacroName(d)})`;
    }
    parts.push(text);
  }
  parts.push('#endif /* _UAPI_IOMMUFD_H */');
  return parts.join('\n\n') + '\n';
}

function cTestCmd(profile: Profile): string {
  const all = presentFields(S.iommu_test_cmd, profile);
  const head = all.filter(([, f]) => f.offset < TEST_UNION_START);
  const tail = all.filter(([, f]) => f.offset >= TEST_UNION_START);
  const lines = ['struct iommu_test_cmd {', ...fieldLines(head, '\t'), '\tunion {'];
  for (const m of testUnionMembers(profile)) {
    lines.push('\t\tstruct {', ...fieldLines(presentFields(m.view, profile), '\t\t\t', TEST_UNION_START), `\t\t} ${m.name};`);
  }
  lines.push('\t};');
  for (const [name, f] of tail) lines.push(`\t${C_TYPE[f.type]} ${name};`);
  lines.push('};');
  const last = S.iommu_test_cmd.fields.last.offset;
  lines.push(`${ASSERT_MACRO}(__builtin_offsetof(struct iommu_test_cmd, last) == ${last}, ` +
    `"iommu_test_cmd.last must sit at ${last}");`);
  lines.push(`${ASSERT_MACRO}(sizeof(struct iommu_test_cmd) == ${S.IOMMU_TEST_CMD_SIZE}, ` +
    `"struct iommu_test_cmd must be ${S.IOMMU_TEST_CMD_SIZE} bytes");`);
  const test = IOCTLS.find((d) => d.test)!;
  lines.push(`#define ${test.cname} _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + ${test.nr - IOMMUFD_CMD_BASE})`);
  return lines.join('\n');
}

function generateTest(profile: Profile): string {
  const structs = testStructs(profile);
  const parts: string[] = [
    banner(profile, 'IOMMUFD selftest interface (IOMMU_TEST_CMD and the mock driver\'s constants and payloads).'),
    '#ifndef _UAPI_IOMMUFD_TEST_H\n#define _UAPI_IOMMUFD_TEST_H',
    '#include <linux/iommufd.h>\n#include <linux/types.h>',
    ASSERT_PRELUDE,
  ];
  for (const e of headerEnums(profile, true, structs)) {
    const t = cEnum(e, profile);
    if (t) parts.push(t);
  }
  const defines = TEST_DEFINES.filter((d) => inHeader(d, profile));
  parts.push(defines.map((d) => `#define ${d.name} ${d.text ?? hex(d.value)}`).join('\n'));
  parts.push(cTestCmd(profile));
  for (const s of structs) parts.push(cStruct(s, profile));
  parts.push('#endif /* _UAPI_IOMMUFD_TEST_H */');
  return parts.join('\n\n') + '\n';
}

export function generateHeaders(profile: Profile): GeneratedHeaders {
  return { 'linux/iommufd.h': generateCore(profile), 'iommufd_test.h': generateTest(profile) };
}

/** Write DIR/linux/iommufd.h and DIR/iommufd_test.h; returns the two paths. */
export function writeHeaders(dir: string, profileName: string): { iommufd: string; test: string } {
  const h = generateHeaders(getProfile(profileName));
  const iommufd = join(dir, 'linux', 'iommufd.h');
  const test = join(dir, 'iommufd_test.h');
  mkdirSync(dirname(iommufd), { recursive: true });
  writeFileSync(iommufd, h['linux/iommufd.h']);
  writeFileSync(test, h['iommufd_test.h']);
  return { iommufd, test };
}

// ---- A C translation unit that re-checks every table entry ----------------------------

function cNum(v: number): string {
  return v > 0x7fffffff ? `${hex(v)}u` : String(v);
}

/**
 * C source that includes both headers and asserts, for `profile`, the offset and
 * size of every struct member, every enum/define value and every ioctl number
 * against the table. Compiling it (cc -fsyntax-only) validates the generator.
 */
export function generateLayoutCheck(profile: Profile): string {
  const v = profile.version;
  const out: string[] = [
    '/* Generated by iommufd-emu: compile-time re-check of the uAPI table. */',
    '#include <stddef.h>',
    '#include <linux/iommufd.h>',
    '#include "iommufd_test.h"',
    '',
  ];
  const A = (cond: string, what: string): void => { out.push(`_Static_assert(${cond}, "${what}");`); };
  for (const s of [...coreStructs(profile), ...testStructs(profile)]) {
    A(`sizeof(struct ${s.name}) == ${structSize(s, v)}`, `sizeof ${s.name}`);
    for (const [name, f] of presentFields(s, profile)) {
      A(`offsetof(struct ${s.name}, ${name}) == ${f.offset}`, `${s.name}.${name} offset`);
      A(`sizeof(((struct ${s.name} *)0)->${name}) == ${TYPE_SIZE[f.type] * (f.count ?? 1)}`, `${s.name}.${name} size`);
    }
  }
  A(`sizeof(struct iommu_test_cmd) == ${S.IOMMU_TEST_CMD_SIZE}`, 'sizeof iommu_test_cmd');
  for (const [name, f] of presentFields(S.iommu_test_cmd, profile)) {
    A(`offsetof(struct iommu_test_cmd, ${name}) == ${f.offset}`, `iommu_test_cmd.${name} offset`);
  }
  for (const m of testUnionMembers(profile)) {
    for (const [name, f] of presentFields(m.view, profile)) {
      A(`offsetof(struct iommu_test_cmd, ${m.name}.${name}) == ${f.offset}`, `iommu_test_cmd.${m.name}.${name} offset`);
    }
  }
  for (const d of IOCTLS) {
    if (!ioctlPresent(d, profile, true)) continue;
    A(`${d.cname} == ${hex((0x3b << 8) | d.nr)}`, `${d.cname} number`);
  }
  const enums = [...headerEnums(profile, false, coreStructs(profile)), ...headerEnums(profile, true, testStructs(profile))];
  for (const e of enums) {
    for (const m of e.members) {
      if (inHeader(m, profile)) A(`${m.name} == ${cNum(m.value)}`, `${m.name} value`);
    }
  }
  for (const d of TEST_DEFINES) {
    if (inHeader(d, profile)) A(`${d.name} == ${cNum(d.value)}`, `${d.name} value`);
  }
  return out.join('\n') + '\n';
}

// ---- CLI ---------------------------------------------------------------------------

// (the file-name check: bundled into the CLI, import.meta.url is the bundle's, which argv[1] also names)
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url) && import.meta.url.endsWith('/cheader.js')) {
  const args = process.argv.slice(2);
  const withCheck = args.includes('--check');
  const [dir, profileName = '6.12'] = args.filter((a) => a !== '--check');
  if (!dir) {
    process.stderr.write('usage: node dist/uapi/cheader.js <out-dir> [profile] [--check]\n' +
      '  writes <out-dir>/linux/iommufd.h, <out-dir>/iommufd_test.h\n' +
      '  --check: also <out-dir>/iommufd_layout_check.c (compile it with -isystem <out-dir> -I <out-dir>)\n');
    process.exit(2);
  }
  const p = writeHeaders(dir, profileName);
  process.stdout.write(`${p.iommufd}\n${p.test}\n`);
  if (withCheck) {
    const c = join(dir, 'iommufd_layout_check.c');
    writeFileSync(c, generateLayoutCheck(getProfile(profileName)));
    process.stdout.write(`${c}\n`);
  }
}
