// The ioctl table: request number, struct, last mandatory member (-> minimum
// size), and the ABI versions it exists in. The core's dispatcher pairs each
// entry with a handler by name.
import { endOf, structSize, type StructDef } from './layout.js';
import type { Profile } from './profiles.js';
import { V } from './profiles.js';
import * as S from './structs.js';

export const IOMMUFD_TYPE = 0x3b; // ';'
export const IOMMUFD_CMD_BASE = 0x80;
/** _IO(type, nr): no direction or size bits. */
export const IO = (nr: number): number => (IOMMUFD_TYPE << 8) | nr;

export type IoctlName =
  | 'DESTROY' | 'IOAS_ALLOC' | 'IOAS_ALLOW_IOVAS' | 'IOAS_COPY' | 'IOAS_IOVA_RANGES' | 'IOAS_MAP' | 'IOAS_UNMAP'
  | 'OPTION' | 'VFIO_IOAS' | 'HWPT_ALLOC' | 'GET_HW_INFO' | 'HWPT_SET_DIRTY_TRACKING' | 'HWPT_GET_DIRTY_BITMAP'
  | 'HWPT_INVALIDATE' | 'FAULT_QUEUE_ALLOC' | 'IOAS_MAP_FILE' | 'VIOMMU_ALLOC' | 'VDEVICE_ALLOC'
  | 'IOAS_CHANGE_PROCESS' | 'VEVENTQ_ALLOC' | 'HW_QUEUE_ALLOC' | 'IOAS_NOIOMMU_GET_PA' | 'TEST_CMD'
  | 'VIOMMU_ALLOC_V1' | 'VIOMMU_SET_VDEV_ID' | 'VIOMMU_UNSET_VDEV_ID' | 'VIOMMU_INVALIDATE';

export interface IoctlDef {
  readonly name: IoctlName;
  /** C macro name (IOMMU_DESTROY ...), for headers and traces. */
  readonly cname: string;
  readonly nr: number;
  readonly struct: StructDef;
  /** The last mandatory member: min size = its end offset. */
  readonly last: string;
  readonly since: number;
  /** Present only in the original vIOMMU series' ABI. */
  readonly v1Only?: boolean;
  /** Absent from the original vIOMMU series' ABI (its number is taken there). */
  readonly notV1?: boolean;
  /** Only with the selftest interface compiled in. */
  readonly test?: boolean;
}

const d = (name: IoctlName, cname: string, nr: number, struct: StructDef, last: string, since: number,
  extra: Partial<IoctlDef> = {}): IoctlDef => ({ name, cname, nr, struct, last, since, ...extra });

export const IOCTLS: readonly IoctlDef[] = [
  d('DESTROY', 'IOMMU_DESTROY', 0x80, S.iommu_destroy, 'id', V.V6_2),
  d('IOAS_ALLOC', 'IOMMU_IOAS_ALLOC', 0x81, S.iommu_ioas_alloc, 'out_ioas_id', V.V6_2),
  d('IOAS_ALLOW_IOVAS', 'IOMMU_IOAS_ALLOW_IOVAS', 0x82, S.iommu_ioas_allow_iovas, 'allowed_iovas', V.V6_2),
  d('IOAS_COPY', 'IOMMU_IOAS_COPY', 0x83, S.iommu_ioas_copy, 'src_iova', V.V6_2),
  d('IOAS_IOVA_RANGES', 'IOMMU_IOAS_IOVA_RANGES', 0x84, S.iommu_ioas_iova_ranges, 'out_iova_alignment', V.V6_2),
  d('IOAS_MAP', 'IOMMU_IOAS_MAP', 0x85, S.iommu_ioas_map, 'iova', V.V6_2),
  d('IOAS_UNMAP', 'IOMMU_IOAS_UNMAP', 0x86, S.iommu_ioas_unmap, 'length', V.V6_2),
  d('OPTION', 'IOMMU_OPTION', 0x87, S.iommu_option, 'val64', V.V6_2),
  d('VFIO_IOAS', 'IOMMU_VFIO_IOAS', 0x88, S.iommu_vfio_ioas, '__reserved', V.V6_2),
  d('HWPT_ALLOC', 'IOMMU_HWPT_ALLOC', 0x89, S.iommu_hwpt_alloc, '__reserved', V.V6_6),
  d('GET_HW_INFO', 'IOMMU_GET_HW_INFO', 0x8a, S.iommu_hw_info, '__reserved', V.V6_7),
  d('HWPT_SET_DIRTY_TRACKING', 'IOMMU_HWPT_SET_DIRTY_TRACKING', 0x8b, S.iommu_hwpt_set_dirty_tracking, '__reserved', V.V6_7),
  d('HWPT_GET_DIRTY_BITMAP', 'IOMMU_HWPT_GET_DIRTY_BITMAP', 0x8c, S.iommu_hwpt_get_dirty_bitmap, 'data', V.V6_7),
  d('HWPT_INVALIDATE', 'IOMMU_HWPT_INVALIDATE', 0x8d, S.iommu_hwpt_invalidate, '__reserved', V.V6_8),
  d('FAULT_QUEUE_ALLOC', 'IOMMU_FAULT_QUEUE_ALLOC', 0x8e, S.iommu_fault_alloc, 'out_fault_fd', V.V6_11),
  d('IOAS_MAP_FILE', 'IOMMU_IOAS_MAP_FILE', 0x8f, S.iommu_ioas_map_file, 'iova', V.V6_13, { notV1: true }),
  d('VIOMMU_ALLOC', 'IOMMU_VIOMMU_ALLOC', 0x90, S.iommu_viommu_alloc, 'out_viommu_id', V.V6_13, { notV1: true }),
  d('VDEVICE_ALLOC', 'IOMMU_VDEVICE_ALLOC', 0x91, S.iommu_vdevice_alloc, 'virt_id', V.V6_13, { notV1: true }),
  d('IOAS_CHANGE_PROCESS', 'IOMMU_IOAS_CHANGE_PROCESS', 0x92, S.iommu_ioas_change_process, '__reserved', V.V6_14, { notV1: true }),
  d('VEVENTQ_ALLOC', 'IOMMU_VEVENTQ_ALLOC', 0x93, S.iommu_veventq_alloc, 'out_veventq_fd', V.V6_15, { notV1: true }),
  d('HW_QUEUE_ALLOC', 'IOMMU_HW_QUEUE_ALLOC', 0x94, S.iommu_hw_queue_alloc, 'length', V.V6_17, { notV1: true }),
  // In the dispatch table whatever the config; without CONFIG_IOMMUFD_NOIOMMU it answers EOPNOTSUPP.
  d('IOAS_NOIOMMU_GET_PA', 'IOMMU_IOAS_NOIOMMU_GET_PA', 0x95, S.iommu_ioas_noiommu_get_pa, 'out_phys', V.MAINLINE,
    { notV1: true }),
  // The original series (Aug 2024), before renumbering on top of IOAS_MAP_FILE.
  d('VIOMMU_ALLOC_V1', 'IOMMU_VIOMMU_ALLOC', 0x8f, S.iommu_viommu_alloc_v1, 'out_viommu_id', V.V6_12, { v1Only: true }),
  d('VIOMMU_SET_VDEV_ID', 'IOMMU_VIOMMU_SET_VDEV_ID', 0x90, S.iommu_viommu_vdev_id_v1, 'vdev_id', V.V6_12, { v1Only: true }),
  d('VIOMMU_UNSET_VDEV_ID', 'IOMMU_VIOMMU_UNSET_VDEV_ID', 0x91, S.iommu_viommu_vdev_id_v1, 'vdev_id', V.V6_12, { v1Only: true }),
  d('VIOMMU_INVALIDATE', 'IOMMU_VIOMMU_INVALIDATE', 0x92, S.iommu_viommu_invalidate_v1, '__reserved', V.V6_12, { v1Only: true }),
  d('TEST_CMD', 'IOMMU_TEST_CMD', 0xa0, S.iommu_test_cmd, 'last', V.V6_2, { test: true }),
];

export interface ProfileIoctl extends IoctlDef {
  readonly request: number;
  readonly minSize: number;
  /** sizeof the kernel's struct in this profile. */
  readonly knownSize: number;
}

export function ioctlPresent(def: IoctlDef, profile: Profile, withTest: boolean): boolean {
  if (def.since > profile.version) return false;
  if (def.v1Only && !profile.viommuV1) return false;
  if (def.notV1 && profile.viommuV1) return false;
  if (def.test && !withTest) return false;
  return true;
}

/** The dispatch table of one profile, indexed by nr. */
export function ioctlTable(profile: Profile, withTest = true): Map<number, ProfileIoctl> {
  const t = new Map<number, ProfileIoctl>();
  for (const def of IOCTLS) {
    if (!ioctlPresent(def, profile, withTest)) continue;
    const knownSize = def.name === 'TEST_CMD' ? S.IOMMU_TEST_CMD_SIZE : structSize(def.struct, profile.version);
    t.set(def.nr, { ...def, request: IO(def.nr), minSize: endOf(def.struct, def.last), knownSize });
  }
  return t;
}

export const IOCTL_BY_NAME = new Map(IOCTLS.map((d) => [d.name, d]));

// VFIO container requests accepted on the same fd (type ';', nr 100+).
export const VFIO = {
  GET_API_VERSION: IO(100),
  CHECK_EXTENSION: IO(101),
  SET_IOMMU: IO(102),
  IOMMU_GET_INFO: IO(112),
  IOMMU_MAP_DMA: IO(113),
  IOMMU_UNMAP_DMA: IO(114),
  IOMMU_DIRTY_PAGES: IO(117),
  API_VERSION: 0,
  TYPE1_IOMMU: 1,
  TYPE1v2_IOMMU: 3,
  DMA_CC_IOMMU: 4,
  TYPE1_NESTING_IOMMU: 6,
  NOIOMMU_IOMMU: 8,
  UNMAP_ALL: 9,
  UPDATE_VADDR: 10,
  DMA_MAP_FLAG_READ: 1,
  DMA_MAP_FLAG_WRITE: 2,
  DMA_UNMAP_FLAG_ALL: 2,
  INFO_FLAGS_PGSIZES: 1,
  INFO_CAPS: 2,
  CAP_IOVA_RANGE: 1,
  CAP_DMA_AVAIL: 3,
} as const;
