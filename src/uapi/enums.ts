// Enum and flag values of the uAPI, as data (name -> value, with the version each
// member appeared in). Handlers use the constant objects; trace printing and the
// C header generator walk ENUMS.
import type { Profile } from './profiles.js';
import { V } from './profiles.js';

export interface EnumMember {
  readonly name: string;
  readonly value: number;
  /** First kernel version that implements the member. */
  readonly since?: number;
  /** First version without the member (removed upstream). */
  readonly until?: number;
  /**
   * Header-only from this version on in profiles with `headerBackports`: the generated
   * header defines the name (the Debian 6.12 selftests need it to compile), but the
   * kernel of that profile does not implement it and rejects it like any unknown value.
   */
  readonly backport?: number;
  /** Also present in the original vIOMMU series' ABI (profile viommu-v1), whatever `since` says. */
  readonly v1?: boolean;
}
export interface EnumDef {
  readonly name: string;
  readonly flags: boolean;
  readonly members: readonly EnumMember[];
  /** Belongs to the selftest interface (iommufd_test.h), not linux/iommufd.h. */
  readonly test?: boolean;
  /** Declared as an anonymous `enum { ... }` in C (the name is ours, for lookups only). */
  readonly anon?: boolean;
  /** Version the enum type appeared in (headers omit it before, unless a present struct field names it). */
  readonly since?: number;
  /** Header-only from this version on in profiles with `headerBackports` (see EnumMember.backport). */
  readonly backport?: number;
  /** Also present in the original vIOMMU series' ABI (profile viommu-v1). */
  readonly v1?: boolean;
}

type MemberSpec = [string, number, number?, { until?: number; backport?: number; v1?: boolean }?];
interface DefOpts { test?: boolean; anon?: boolean; since?: number; backport?: number; v1?: boolean }

function def(name: string, flags: boolean, members: MemberSpec[], opts: boolean | DefOpts = {}): EnumDef {
  const o: DefOpts = typeof opts === 'boolean' ? { test: opts } : opts;
  return {
    name, flags, test: o.test ?? false, anon: o.anon, since: o.since, backport: o.backport, v1: o.v1,
    members: members.map(([n, value, since, extra]) => ({ name: n, value, since, ...extra })),
  };
}

/** What the presence rules need of a member or #define. */
interface Versioned {
  readonly since?: number;
  readonly until?: number;
  readonly backport?: number;
  readonly v1?: boolean;
}

/**
 * THE flag/type presence rule: does the kernel of `profile` implement this
 * member (accept the flag, the type, the op)? Handlers ask only this (or
 * acceptedMask/accepts below), never a version number.
 */
export function accepted(m: Versioned, profile: Profile): boolean {
  if (m.until !== undefined && profile.version >= m.until) return false;
  if (m.since === undefined || m.since <= profile.version) return true;
  return profile.viommuV1 && !!m.v1;
}

/** Does the generated header of `profile` define it: what the kernel implements, plus the header backports. */
export function inHeader(m: Versioned, profile: Profile): boolean {
  if (accepted(m, profile)) return true;
  return profile.headerBackports && m.backport !== undefined && m.backport <= profile.version &&
    (m.until === undefined || profile.version < m.until);
}

function enumDef(name: string): EnumDef {
  const e = ENUMS[name];
  if (!e) throw new Error(`no enum table '${name}'`);
  return e;
}

/** The OR of every member of a flags table the kernel of `profile` accepts: the only source of accepted-flag masks. */
export function acceptedMask(profile: Profile, enumName: string): number {
  const e = enumDef(enumName);
  if (!accepted(e, profile)) return 0;
  let m = 0;
  for (const f of e.members) if (accepted(f, profile)) m |= f.value;
  return m >>> 0;
}

/** Is the named member of an enum/flags table implemented by the kernel of `profile` (the table itself included)? */
export function accepts(profile: Profile, enumName: string, memberName: string): boolean {
  const e = enumDef(enumName);
  const m = e.members.find((x) => x.name === memberName);
  if (!m) throw new Error(`enum ${enumName} has no member ${memberName}`);
  return accepted(e, profile) && accepted(m, profile);
}

/** Is `value` a member of the table that the kernel of `profile` implements? */
export function acceptsValue(profile: Profile, enumName: string, value: number): boolean {
  const e = enumDef(enumName);
  return accepted(e, profile) && e.members.some((m) => m.value === value && accepted(m, profile));
}

/** Does the enum type itself exist in the header of `profile` (its own `since`, a backport, or the v1 series)? */
export function enumInProfile(e: EnumDef, profile: Profile): boolean {
  return e.since === undefined || e.since <= profile.version || (profile.viommuV1 && !!e.v1) ||
    (profile.headerBackports && e.backport !== undefined && e.backport <= profile.version);
}

export const ENUMS: Record<string, EnumDef> = Object.fromEntries([
  def('iommufd_ioas_map_flags', true, [
    ['IOMMU_IOAS_MAP_FIXED_IOVA', 1], ['IOMMU_IOAS_MAP_WRITEABLE', 2], ['IOMMU_IOAS_MAP_READABLE', 4]]),
  def('iommufd_option', false, [['IOMMU_OPTION_RLIMIT_MODE', 0], ['IOMMU_OPTION_HUGE_PAGES', 1]]),
  def('iommufd_option_ops', false, [['IOMMU_OPTION_OP_SET', 0], ['IOMMU_OPTION_OP_GET', 1]]),
  def('iommufd_vfio_ioas_op', false, [['IOMMU_VFIO_IOAS_GET', 0], ['IOMMU_VFIO_IOAS_SET', 1], ['IOMMU_VFIO_IOAS_CLEAR', 2]]),
  def('iommufd_hwpt_alloc_flags', true, [
    ['IOMMU_HWPT_ALLOC_NEST_PARENT', 1], ['IOMMU_HWPT_ALLOC_DIRTY_TRACKING', 2, V.V6_7],
    ['IOMMU_HWPT_FAULT_ID_VALID', 4, V.V6_11], ['IOMMU_HWPT_ALLOC_PASID', 8, V.V6_15]], { since: V.V6_6 }),
  def('iommu_hwpt_vtd_s1_flags', true, [
    ['IOMMU_VTD_S1_SRE', 1], ['IOMMU_VTD_S1_EAFE', 2], ['IOMMU_VTD_S1_WPE', 4]], { since: V.V6_7 }),
  def('iommu_hwpt_data_type', false, [
    ['IOMMU_HWPT_DATA_NONE', 0], ['IOMMU_HWPT_DATA_VTD_S1', 1], ['IOMMU_HWPT_DATA_ARM_SMMUV3', 2, V.V6_13],
    ['IOMMU_HWPT_DATA_AMD_GUEST', 3, V.V6_19]], { since: V.V6_7 }),
  def('iommu_hw_info_vtd_flags', true, [['IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17', 1]], { since: V.V6_7 }),
  def('iommu_hw_info_arm_smmuv3_flags', true, [['IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI', 1]],
    { since: V.MAINLINE }),
  def('iommu_hw_info_type', false, [
    ['IOMMU_HW_INFO_TYPE_NONE', 0], ['IOMMU_HW_INFO_TYPE_DEFAULT', 0, V.V6_17, { backport: V.V6_12 }], ['IOMMU_HW_INFO_TYPE_INTEL_VTD', 1],
    ['IOMMU_HW_INFO_TYPE_ARM_SMMUV3', 2, V.V6_13], ['IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV', 3, V.V6_17],
    ['IOMMU_HW_INFO_TYPE_AMD', 4, V.V6_19]], { since: V.V6_7 }),
  def('iommufd_hw_capabilities', true, [
    ['IOMMU_HW_CAP_DIRTY_TRACKING', 1, V.V6_8], ['IOMMU_HW_CAP_PCI_PASID_EXEC', 2, V.V6_12],
    ['IOMMU_HW_CAP_PCI_PASID_PRIV', 4, V.V6_12], ['IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED', 8, V.V6_18]], { since: V.V6_8 }),
  def('iommufd_hw_info_flags', true, [['IOMMU_HW_INFO_FLAG_INPUT_TYPE', 1, V.V6_17, { backport: V.V6_12 }]],
    { since: V.V6_17, backport: V.V6_12 }),
  def('iommufd_hwpt_set_dirty_tracking_flags', true, [['IOMMU_HWPT_DIRTY_TRACKING_ENABLE', 1]], { since: V.V6_7 }),
  def('iommufd_hwpt_get_dirty_bitmap_flags', true, [['IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR', 1]], { since: V.V6_7 }),
  def('iommu_hwpt_invalidate_data_type', false, [
    ['IOMMU_HWPT_INVALIDATE_DATA_VTD_S1', 0], ['IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3', 1, V.V6_13]], { since: V.V6_8 }),
  def('iommu_hwpt_vtd_s1_invalidate_flags', true, [['IOMMU_VTD_INV_FLAGS_LEAF', 1]], { since: V.V6_8 }),
  def('iommu_hwpt_pgfault_flags', true, [['IOMMU_PGFAULT_FLAGS_PASID_VALID', 1], ['IOMMU_PGFAULT_FLAGS_LAST_PAGE', 2]], { since: V.V6_11 }),
  def('iommu_hwpt_pgfault_perm', true, [
    ['IOMMU_PGFAULT_PERM_READ', 1], ['IOMMU_PGFAULT_PERM_WRITE', 2], ['IOMMU_PGFAULT_PERM_EXEC', 4],
    ['IOMMU_PGFAULT_PERM_PRIV', 8]], { since: V.V6_11 }),
  def('iommufd_page_response_code', false, [['IOMMUFD_PAGE_RESP_SUCCESS', 0], ['IOMMUFD_PAGE_RESP_INVALID', 1]], { since: V.V6_11 }),
  def('iommu_viommu_type', false, [
    ['IOMMU_VIOMMU_TYPE_DEFAULT', 0], ['IOMMU_VIOMMU_TYPE_ARM_SMMUV3', 1, V.V6_13],
    ['IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV', 2, V.V6_17]], { since: V.V6_13 }),
  def('iommu_veventq_flag', true, [['IOMMU_VEVENTQ_FLAG_LOST_EVENTS', 1]], { since: V.V6_15 }),
  def('iommu_veventq_type', false, [
    ['IOMMU_VEVENTQ_TYPE_DEFAULT', 0], ['IOMMU_VEVENTQ_TYPE_ARM_SMMUV3', 1], ['IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV', 2, V.V6_17]], { since: V.V6_15 }),
  def('iommu_hw_queue_type', false, [['IOMMU_HW_QUEUE_TYPE_DEFAULT', 0], ['IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV', 1]], { since: V.V6_17 }),
  def('iommu_test_op', false, [
    ['IOMMU_TEST_OP_ADD_RESERVED', 1], ['IOMMU_TEST_OP_MOCK_DOMAIN', 2], ['IOMMU_TEST_OP_MD_CHECK_MAP', 3],
    ['IOMMU_TEST_OP_MD_CHECK_REFS', 4], ['IOMMU_TEST_OP_CREATE_ACCESS', 5], ['IOMMU_TEST_OP_DESTROY_ACCESS_PAGES', 6],
    ['IOMMU_TEST_OP_ACCESS_PAGES', 7], ['IOMMU_TEST_OP_ACCESS_RW', 8], ['IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT', 9],
    ['IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE', 10, V.V6_6], ['IOMMU_TEST_OP_ACCESS_REPLACE_IOAS', 11, V.V6_6],
    ['IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS', 12, V.V6_7], ['IOMMU_TEST_OP_DIRTY', 13, V.V6_7],
    ['IOMMU_TEST_OP_MD_CHECK_IOTLB', 14, V.V6_7], ['IOMMU_TEST_OP_TRIGGER_IOPF', 15, V.V6_11],
    ['IOMMU_TEST_OP_DEV_CHECK_CACHE', 16, V.V6_13, { v1: true }], ['IOMMU_TEST_OP_TRIGGER_VEVENT', 17, V.V6_15],
    ['IOMMU_TEST_OP_PASID_ATTACH', 18, V.V6_15], ['IOMMU_TEST_OP_PASID_REPLACE', 19, V.V6_15],
    ['IOMMU_TEST_OP_PASID_DETACH', 20, V.V6_15], ['IOMMU_TEST_OP_PASID_CHECK_HWPT', 21, V.V6_15],
    ['IOMMU_TEST_OP_DMABUF_GET', 22, V.V6_19], ['IOMMU_TEST_OP_DMABUF_REVOKE', 23, V.V6_19]],
  { test: true, anon: true }),
  // Selftest constants declared as anonymous enums in iommufd_test.h (values: spec 03 §6).
  def('mock_iommupt_type', false, [['MOCK_IOMMUPT_DEFAULT', 0], ['MOCK_IOMMUPT_HUGE', 1]],
    { test: true, anon: true, since: V.V6_19 }),
  def('mock_aperture', false, [
    ['MOCK_APERTURE_START', 0x0100_0000], ['MOCK_APERTURE_LAST', 0x7fff_ffff],
    ['MOCK_PAGE_SIZE', 2048, V.V6_19], ['MOCK_HUGE_PAGE_SIZE', 512 * 2048, V.V6_19]], { test: true, anon: true }),
  def('mock_access_pages_flags', true, [['MOCK_FLAGS_ACCESS_WRITE', 1], ['MOCK_FLAGS_ACCESS_SYZ', 1 << 16]],
    { test: true, anon: true }),
  def('mock_access_rw_flags', true, [['MOCK_ACCESS_RW_WRITE', 1], ['MOCK_ACCESS_RW_SLOW_PATH', 4]], { test: true, anon: true }),
  def('mock_create_access_flags', true, [['MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES', 1]], { test: true, anon: true }),
  def('mock_device_flags', true, [
    ['MOCK_FLAGS_DEVICE_NO_DIRTY', 1, V.V6_7], ['MOCK_FLAGS_DEVICE_HUGE_IOVA', 2, V.V6_7, { until: V.V6_19 }],
    ['MOCK_FLAGS_DEVICE_PASID', 4, V.V6_15, { backport: V.V6_12 }]], { test: true, anon: true, since: V.V6_7 }),
  def('mock_nested_iotlb', false, [['MOCK_NESTED_DOMAIN_IOTLB_ID_MAX', 3], ['MOCK_NESTED_DOMAIN_IOTLB_NUM', 4]],
    { test: true, anon: true, since: V.V6_7 }),
  def('mock_dev_cache', false, [['MOCK_DEV_CACHE_ID_MAX', 3], ['MOCK_DEV_CACHE_NUM', 4]],
    { test: true, anon: true, since: V.V6_13, v1: true }),
].map((e) => [e.name, e]));

/** A selftest constant iommufd_test.h declares with #define (C text of the value kept as written there). */
export interface TestDefine {
  readonly name: string;
  readonly value: number;
  /** How the header spells the value (defaults to hex). */
  readonly text?: string;
  readonly since?: number;
  readonly until?: number;
  readonly backport?: number;
  readonly v1?: boolean;
}

const tdef = (name: string, value: number, since?: number, extra: Partial<TestDefine> = {}): TestDefine =>
  ({ name, value, since, ...extra });

/** The #define constants of iommufd_test.h, in header order (values: spec 03 §6 / 01 Appendix A). */
export const TEST_DEFINES: readonly TestDefine[] = [
  tdef('IOMMU_TEST_PASID_RESERVED', 1024, V.V6_15, { text: '1024' }),
  tdef('MOCK_PASID_WIDTH', 20, V.V6_15, { text: '20', backport: V.V6_12 }),
  tdef('IOMMU_HW_INFO_TYPE_SELFTEST', 0xfeedbeef, V.V6_7),
  tdef('IOMMU_HW_INFO_SELFTEST_REGVAL', 0xdeadbeef, V.V6_7),
  tdef('IOMMU_HWPT_DATA_SELFTEST', 0xdead, V.V6_7),
  tdef('IOMMU_TEST_IOTLB_DEFAULT', 0xbadbeef, V.V6_7),
  tdef('IOMMU_TEST_DEV_CACHE_DEFAULT', 0xbaddad, V.V6_13, { v1: true }),
  tdef('IOMMU_HWPT_INVALIDATE_DATA_SELFTEST', 0xdeadbeef, V.V6_8),
  tdef('IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID', 0xdadbeef, V.V6_8),
  tdef('IOMMU_TEST_INVALIDATE_FLAG_ALL', 1, V.V6_8, { text: '(1 << 0)' }),
  tdef('IOMMU_VIOMMU_TYPE_SELFTEST', 0xdeadbeef, V.V6_13),
  tdef('IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST', 0xdeadbeef, V.V6_13),
  tdef('IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID', 0xdadbeef, V.V6_13),
  tdef('IOMMU_VEVENTQ_TYPE_SELFTEST', 0xbeefbeef, V.V6_15),
  tdef('IOMMU_HW_QUEUE_TYPE_SELFTEST', 0xdeadbeef, V.V6_17),
  tdef('IOMMU_TEST_HW_QUEUE_MAX', 2, V.V6_17, { text: '2' }),
];

// Constants used by handlers (names shortened from the C ones).
export const MAP_FLAGS = { FIXED_IOVA: 1, WRITEABLE: 2, READABLE: 4 } as const;
export const HWPT_ALLOC = { NEST_PARENT: 1, DIRTY_TRACKING: 2, FAULT_ID_VALID: 4, PASID: 8 } as const;
export const HW_CAP = { DIRTY_TRACKING: 1, PCI_PASID_EXEC: 2, PCI_PASID_PRIV: 4, PCI_ATS_NOT_SUPPORTED: 8 } as const;
export const OPTION = { RLIMIT_MODE: 0, HUGE_PAGES: 1, OP_SET: 0, OP_GET: 1 } as const;
export const VFIO_IOAS_OP = { GET: 0, SET: 1, CLEAR: 2 } as const;
export const PGFAULT_FLAGS = { PASID_VALID: 1, LAST_PAGE: 2 } as const;
export const PAGE_RESP = { SUCCESS: 0, INVALID: 1 } as const;
export const VEVENTQ_FLAG_LOST_EVENTS = 1;

export const TEST_OP = {
  ADD_RESERVED: 1, MOCK_DOMAIN: 2, MD_CHECK_MAP: 3, MD_CHECK_REFS: 4, CREATE_ACCESS: 5, DESTROY_ACCESS_PAGES: 6,
  ACCESS_PAGES: 7, ACCESS_RW: 8, SET_TEMP_MEMORY_LIMIT: 9, MOCK_DOMAIN_REPLACE: 10, ACCESS_REPLACE_IOAS: 11,
  MOCK_DOMAIN_FLAGS: 12, DIRTY: 13, MD_CHECK_IOTLB: 14, TRIGGER_IOPF: 15, DEV_CHECK_CACHE: 16, TRIGGER_VEVENT: 17,
  PASID_ATTACH: 18, PASID_REPLACE: 19, PASID_DETACH: 20, PASID_CHECK_HWPT: 21, DMABUF_GET: 22, DMABUF_REVOKE: 23,
} as const;

/** Selftest constants (spec 03 §6). */
export const MOCK = {
  APERTURE_START: 1n << 24n,
  APERTURE_LAST: (1n << 31n) - 1n,
  PAGE_SIZE: 2048,
  HUGE_PAGE_SIZE: 512 * 2048,
  FLAGS_ACCESS_WRITE: 1,
  FLAGS_ACCESS_SYZ: 1 << 16,
  ACCESS_RW_WRITE: 1,
  ACCESS_RW_SLOW_PATH: 4,
  FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: 1,
  FLAGS_DEVICE_NO_DIRTY: 1,
  FLAGS_DEVICE_HUGE_IOVA: 2,
  FLAGS_DEVICE_PASID: 4,
  NESTED_DOMAIN_IOTLB_NUM: 4,
  DEV_CACHE_NUM: 4,
  PASID_WIDTH: 20,
  TEST_PASID_RESERVED: 1024,
  HW_INFO_TYPE_SELFTEST: 0xfeedbeef,
  HW_INFO_SELFTEST_REGVAL: 0xdeadbeef,
  HWPT_DATA_SELFTEST: 0xdead,
  IOTLB_DEFAULT: 0x0badbeef,
  DEV_CACHE_DEFAULT: 0x00baddad,
  HWPT_INVALIDATE_DATA_SELFTEST: 0xdeadbeef,
  HWPT_INVALIDATE_DATA_SELFTEST_INVALID: 0x0dadbeef,
  INVALIDATE_FLAG_ALL: 1,
  VIOMMU_TYPE_SELFTEST: 0xdeadbeef,
  VIOMMU_INVALIDATE_DATA_SELFTEST: 0xdeadbeef,
  VEVENTQ_TYPE_SELFTEST: 0xbeefbeef,
  HW_QUEUE_TYPE_SELFTEST: 0xdeadbeef,
  HW_QUEUE_MAX: 2,
  ACCESS_LENGTH_MAX: 16 * 1024 * 1024,
} as const;
