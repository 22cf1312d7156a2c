// Every struct of the IOMMUFD uAPI (and of the selftest and VFIO-compat
// interfaces it carries), as data: field name, type, offset and the version the
// field appeared in. This file is the only place offsets live.
import { arr, struct, u16, u32, s32, u64, u8 } from './layout.js';
import { TEST_OP } from './enums.js';
import type { StructDef } from './layout.js';
import { V } from './profiles.js';

const R = { reserved: true } as const;
const O = { out: true } as const;
const P = { ptr: true } as const;

// ---- Core command structs ----------------------------------------------------

export const iommu_destroy = struct('iommu_destroy', { size: u32(0), id: u32(4) }, V.V6_2);

export const iommu_ioas_alloc = struct('iommu_ioas_alloc', {
  size: u32(0), flags: u32(4), out_ioas_id: u32(8, O),
}, V.V6_2);

export const iommu_iova_range = struct('iommu_iova_range', { start: u64(0), last: u64(8) }, V.V6_2);

export const iommu_ioas_iova_ranges = struct('iommu_ioas_iova_ranges', {
  size: u32(0), ioas_id: u32(4), num_iovas: u32(8, O), __reserved: u32(12, R),
  allowed_iovas: u64(16, P), out_iova_alignment: u64(24, O),
}, V.V6_2);

export const iommu_ioas_allow_iovas = struct('iommu_ioas_allow_iovas', {
  size: u32(0), ioas_id: u32(4), num_iovas: u32(8), __reserved: u32(12, R), allowed_iovas: u64(16, P),
}, V.V6_2);

export const iommu_ioas_map = struct('iommu_ioas_map', {
  size: u32(0), flags: u32(4, { enumName: 'iommufd_ioas_map_flags' }), ioas_id: u32(8), __reserved: u32(12, R),
  user_va: u64(16, P), length: u64(24), iova: u64(32, O),
}, V.V6_2);

export const iommu_ioas_map_file = struct('iommu_ioas_map_file', {
  size: u32(0), flags: u32(4, { enumName: 'iommufd_ioas_map_flags' }), ioas_id: u32(8), fd: s32(12),
  start: u64(16), length: u64(24), iova: u64(32, O),
}, V.V6_13);

export const iommu_ioas_copy = struct('iommu_ioas_copy', {
  size: u32(0), flags: u32(4, { enumName: 'iommufd_ioas_map_flags' }), dst_ioas_id: u32(8), src_ioas_id: u32(12),
  length: u64(16), dst_iova: u64(24, O), src_iova: u64(32),
}, V.V6_2);

export const iommu_ioas_unmap = struct('iommu_ioas_unmap', {
  size: u32(0), ioas_id: u32(4), iova: u64(8), length: u64(16, O),
}, V.V6_2);

export const iommu_ioas_noiommu_get_pa = struct('iommu_ioas_noiommu_get_pa', {
  size: u32(0), flags: u32(4), ioas_id: u32(8), __reserved: u32(12, R), iova: u64(16),
  length: u64(24, O), out_phys: u64(32, O),
}, V.MAINLINE);

export const iommu_ioas_change_process = struct('iommu_ioas_change_process', {
  size: u32(0), __reserved: u32(4, R),
}, V.V6_14);

export const iommu_option = struct('iommu_option', {
  size: u32(0), option_id: u32(4, { enumName: 'iommufd_option' }), op: u16(8, { enumName: 'iommufd_option_ops' }),
  __reserved: u16(10, R), object_id: u32(12), val64: u64(16, O),
}, V.V6_2);

export const iommu_vfio_ioas = struct('iommu_vfio_ioas', {
  size: u32(0), ioas_id: u32(4, O), op: u16(8, { enumName: 'iommufd_vfio_ioas_op' }), __reserved: u16(10, R),
}, V.V6_2);

export const iommu_hwpt_alloc = struct('iommu_hwpt_alloc', {
  size: u32(0), flags: u32(4, { enumName: 'iommufd_hwpt_alloc_flags' }), dev_id: u32(8), pt_id: u32(12),
  out_hwpt_id: u32(16, O), __reserved: u32(20, R),
  data_type: u32(24, { since: V.V6_7, enumName: 'iommu_hwpt_data_type' }), data_len: u32(28, { since: V.V6_7 }),
  data_uptr: u64(32, { since: V.V6_7, ptr: true }),
  fault_id: u32(40, { since: V.V6_11 }), __reserved2: u32(44, { since: V.V6_11, reserved: true }),
}, V.V6_6);

export const iommu_hw_info = struct('iommu_hw_info', {
  size: u32(0), flags: u32(4, { enumName: 'iommufd_hw_info_flags' }), dev_id: u32(8), data_len: u32(12, O),
  data_uptr: u64(16, P),
  out_data_type: u32(24, { out: true, enumName: 'iommu_hw_info_type' }),
  in_data_type: u32(24, { alias: true, since: V.V6_17, backport: V.V6_12, enumName: 'iommu_hw_info_type' }),
  out_max_pasid_log2: u8(28, { out: true, since: V.V6_12 }),
  __reserved: arr('u8', 29, 3, R),
  out_capabilities: u64(32, { out: true, since: V.V6_8, enumName: 'iommufd_hw_capabilities' }),
}, V.V6_7);

export const iommu_hwpt_set_dirty_tracking = struct('iommu_hwpt_set_dirty_tracking', {
  size: u32(0), flags: u32(4, { enumName: 'iommufd_hwpt_set_dirty_tracking_flags' }), hwpt_id: u32(8), __reserved: u32(12, R),
}, V.V6_7);

export const iommu_hwpt_get_dirty_bitmap = struct('iommu_hwpt_get_dirty_bitmap', {
  size: u32(0), hwpt_id: u32(4), flags: u32(8, { enumName: 'iommufd_hwpt_get_dirty_bitmap_flags' }),
  __reserved: u32(12, R), iova: u64(16), length: u64(24),
  page_size: u64(32), data: u64(40, P),
}, V.V6_7);

export const iommu_hwpt_invalidate = struct('iommu_hwpt_invalidate', {
  size: u32(0), hwpt_id: u32(4), data_uptr: u64(8, P),
  data_type: u32(16, { enumName: 'iommu_hwpt_invalidate_data_type' }), entry_len: u32(20),
  entry_num: u32(24, O), __reserved: u32(28, R),
}, V.V6_8);

export const iommu_fault_alloc = struct('iommu_fault_alloc', {
  size: u32(0), flags: u32(4), out_fault_id: u32(8, O), out_fault_fd: u32(12, O),
}, V.V6_11);

export const iommu_viommu_alloc = struct('iommu_viommu_alloc', {
  size: u32(0), flags: u32(4), type: u32(8, { enumName: 'iommu_viommu_type' }), dev_id: u32(12), hwpt_id: u32(16),
  out_viommu_id: u32(20, O),
  data_len: u32(24, { since: V.V6_17 }), __reserved: u32(28, { since: V.V6_17, reserved: true }),
  data_uptr: u64(32, { since: V.V6_17, ptr: true }),
}, V.V6_13);

export const iommu_vdevice_alloc = struct('iommu_vdevice_alloc', {
  size: u32(0), viommu_id: u32(4), dev_id: u32(8), out_vdevice_id: u32(12, O), virt_id: u64(16),
}, V.V6_13);

export const iommu_veventq_alloc = struct('iommu_veventq_alloc', {
  size: u32(0), flags: u32(4), viommu_id: u32(8), type: u32(12, { enumName: 'iommu_veventq_type' }),
  veventq_depth: u32(16), out_veventq_id: u32(20, O), out_veventq_fd: u32(24, O), __reserved: u32(28, R),
}, V.V6_15);

export const iommu_hw_queue_alloc = struct('iommu_hw_queue_alloc', {
  size: u32(0), flags: u32(4), viommu_id: u32(8), type: u32(12, { enumName: 'iommu_hw_queue_type' }),
  index: u32(16), out_hw_queue_id: u32(20, O), nesting_parent_iova: u64(24), length: u64(32),
}, V.V6_17);

// ---- The original vIOMMU series (profile viommu-v1) ------------------------------

export const iommu_viommu_alloc_v1 = struct('iommu_viommu_alloc', {
  size: u32(0), flags: u32(4), type: u32(8, { enumName: 'iommu_viommu_type' }), dev_id: u32(12), hwpt_id: u32(16),
  out_viommu_id: u32(20, O),
});

export const iommu_viommu_vdev_id_v1 = struct('iommu_viommu_vdev_id', {
  size: u32(0), viommu_id: u32(4), dev_id: u32(8), __reserved: u32(12, R), vdev_id: u64(16),
});

export const iommu_viommu_invalidate_v1 = struct('iommu_viommu_invalidate', {
  size: u32(0), viommu_id: u32(4), data_uptr: u64(8, P), data_type: u32(16), entry_len: u32(20),
  entry_num: u32(24, O), __reserved: u32(28, R),
});

// ---- Records read from / written to event fds ----------------------------------

export const iommu_hwpt_pgfault = struct('iommu_hwpt_pgfault', {
  flags: u32(0, { enumName: 'iommu_hwpt_pgfault_flags' }), dev_id: u32(4), pasid: u32(8), grpid: u32(12),
  perm: u32(16, { enumName: 'iommu_hwpt_pgfault_perm' }), __reserved: u32(20, R), addr: u64(24),
  length: u32(32), cookie: u32(36),
}, V.V6_11);

export const iommu_hwpt_page_response = struct('iommu_hwpt_page_response', {
  cookie: u32(0), code: u32(4, { enumName: 'iommufd_page_response_code' }),
}, V.V6_11);

export const iommufd_vevent_header = struct('iommufd_vevent_header', {
  flags: u32(0, { enumName: 'iommu_veventq_flag' }), sequence: u32(4),
}, V.V6_15);

// ---- Driver payloads (layouts only) --------------------------------------------

export const iommu_hwpt_vtd_s1 = struct('iommu_hwpt_vtd_s1', {
  flags: u64(0, { enumName: 'iommu_hwpt_vtd_s1_flags' }), pgtbl_addr: u64(8), addr_width: u32(16),
  __reserved: u32(20, R),
}, V.V6_7);
export const iommu_hwpt_arm_smmuv3 = struct('iommu_hwpt_arm_smmuv3', { ste: arr('u64', 0, 2) }, V.V6_13);
export const iommu_hwpt_amd_guest = struct('iommu_hwpt_amd_guest', { dte: arr('u64', 0, 4) }, V.V6_19);
export const iommu_hw_info_vtd = struct('iommu_hw_info_vtd', {
  flags: u32(0, { enumName: 'iommu_hw_info_vtd_flags' }), __reserved: u32(4, R), cap_reg: u64(8), ecap_reg: u64(16),
}, V.V6_7);
export const iommu_hw_info_arm_smmuv3 = struct('iommu_hw_info_arm_smmuv3', {
  flags: u32(0, { enumName: 'iommu_hw_info_arm_smmuv3_flags' }), __reserved: u32(4, R), idr: arr('u32', 8, 6),
  iidr: u32(32), aidr: u32(36),
}, V.V6_13);
export const iommu_hw_info_tegra241_cmdqv = struct('iommu_hw_info_tegra241_cmdqv', {
  flags: u32(0), version: u8(4), log2vcmdqs: u8(5), log2vsids: u8(6), __reserved: u8(7, R),
}, V.V6_17);
export const iommu_hw_info_amd = struct('iommu_hw_info_amd', { efr: u64(0), efr2: u64(8) }, V.V6_19);
export const iommu_hwpt_vtd_s1_invalidate = struct('iommu_hwpt_vtd_s1_invalidate', {
  addr: u64(0), npages: u64(8), flags: u32(16, { enumName: 'iommu_hwpt_vtd_s1_invalidate_flags' }),
  __reserved: u32(20, R),
}, V.V6_8);
export const iommu_viommu_arm_smmuv3_invalidate = struct('iommu_viommu_arm_smmuv3_invalidate', {
  cmd: arr('u64', 0, 2),
}, V.V6_13);
export const iommu_viommu_tegra241_cmdqv = struct('iommu_viommu_tegra241_cmdqv', {
  out_vintf_mmap_offset: u64(0, O), out_vintf_mmap_length: u64(8, O),
}, V.V6_17);
export const iommu_vevent_arm_smmuv3 = struct('iommu_vevent_arm_smmuv3', { evt: arr('u64', 0, 4) }, V.V6_15);
export const iommu_vevent_tegra241_cmdqv = struct('iommu_vevent_tegra241_cmdqv', {
  lvcmdq_err_map: arr('u64', 0, 2),
}, V.V6_17);

// ---- Selftest interface (IOMMU_TEST_CMD) ---------------------------------------

/** Header and trailer of struct iommu_test_cmd; the union at 16..63 is decoded per op (TEST_OP_VIEWS). */
export const iommu_test_cmd = struct('iommu_test_cmd', {
  size: u32(0), op: u32(4, { enumName: 'iommu_test_op' }), id: u32(8), __reserved: u32(12, R),
  last: u32(64),
}, V.V6_2);
/** sizeof(struct iommu_test_cmd): the union forces 8-byte alignment, so 68 rounds to 72. */
export const IOMMU_TEST_CMD_SIZE = 72;

// Union members, with offsets from the start of iommu_test_cmd.
export const test_add_reserved = struct('add_reserved', { start: u64(16), length: u64(24) });
export const test_mock_domain = struct('mock_domain', {
  out_stdev_id: u32(16, O), out_hwpt_id: u32(20, O), out_idev_id: u32(24, O),
});
export const test_mock_domain_flags = struct('mock_domain_flags', {
  out_stdev_id: u32(16, O), out_hwpt_id: u32(20, O), out_idev_id: u32(24, O),
  dev_flags: u32(28, { enumName: 'mock_device_flags' }),
});
export const test_mock_domain_replace = struct('mock_domain_replace', { pt_id: u32(16, O) });
export const test_check_map = struct('check_map', { iova: u64(16), length: u64(24), uptr: u64(32, P) });
export const test_check_refs = struct('check_refs', { length: u64(16), uptr: u64(24, P), refs: u32(32) });
export const test_create_access = struct('create_access', {
  out_access_fd: u32(16, O), flags: u32(20, { enumName: 'mock_create_access_flags' }),
});
export const test_destroy_access_pages = struct('destroy_access_pages', { access_pages_id: u32(16) });
export const test_access_pages = struct('access_pages', {
  flags: u32(16, { enumName: 'mock_access_pages_flags' }), out_access_pages_id: u32(20, O), iova: u64(24),
  length: u64(32), uptr: u64(40, P),
});
export const test_access_rw = struct('access_rw', {
  iova: u64(16), length: u64(24), uptr: u64(32, P), flags: u32(40, { enumName: 'mock_access_rw_flags' }),
});
export const test_memory_limit = struct('memory_limit', { limit: u32(16) });
export const test_access_replace_ioas = struct('access_replace_ioas', { ioas_id: u32(16) });
export const test_dirty = struct('dirty', {
  flags: u32(16), iova: u64(24), length: u64(32), page_size: u64(40), uptr: u64(48, P), out_nr_dirty: u64(56, O),
});
export const test_check_iotlb = struct('check_iotlb', { id: u32(16), iotlb: u32(20) });
export const test_trigger_iopf = struct('trigger_iopf', {
  dev_id: u32(16), pasid: u32(20), grpid: u32(24), perm: u32(28, { enumName: 'iommu_hwpt_pgfault_perm' }),
  addr: u64(32),
});
export const test_check_dev_cache = struct('check_dev_cache', { id: u32(16), cache: u32(20) });
export const test_trigger_vevent = struct('trigger_vevent', { dev_id: u32(16) });
export const test_pasid_attach = struct('pasid_attach', { pasid: u32(16), pt_id: u32(20, O) });
/** PASID_REPLACE has its own (identically laid out) union member in C. */
export const test_pasid_replace = struct('pasid_replace', { pasid: u32(16), pt_id: u32(20, O) });
export const test_pasid_detach = struct('pasid_detach', { pasid: u32(16) });
export const test_pasid_check = struct('pasid_check', { pasid: u32(16), hwpt_id: u32(20) });
export const test_dmabuf_get = struct('dmabuf_get', { length: u32(16), open_flags: u32(20) });
export const test_dmabuf_revoke = struct('dmabuf_revoke', { dmabuf_fd: s32(16), revoked: u32(20) });

/**
 * The union view (= C union member of iommu_test_cmd) each op reads and writes
 * (spec 03 §2). An op exists from the `since` of its iommu_test_op enum member.
 */
export const TEST_OP_VIEWS: Record<number, StructDef | undefined> = {
  [TEST_OP.ADD_RESERVED]: test_add_reserved,
  [TEST_OP.MOCK_DOMAIN]: test_mock_domain,
  [TEST_OP.MD_CHECK_MAP]: test_check_map,
  [TEST_OP.MD_CHECK_REFS]: test_check_refs,
  [TEST_OP.CREATE_ACCESS]: test_create_access,
  [TEST_OP.DESTROY_ACCESS_PAGES]: test_destroy_access_pages,
  [TEST_OP.ACCESS_PAGES]: test_access_pages,
  [TEST_OP.ACCESS_RW]: test_access_rw,
  [TEST_OP.SET_TEMP_MEMORY_LIMIT]: test_memory_limit,
  [TEST_OP.MOCK_DOMAIN_REPLACE]: test_mock_domain_replace,
  [TEST_OP.ACCESS_REPLACE_IOAS]: test_access_replace_ioas,
  [TEST_OP.MOCK_DOMAIN_FLAGS]: test_mock_domain_flags,
  [TEST_OP.DIRTY]: test_dirty,
  [TEST_OP.MD_CHECK_IOTLB]: test_check_iotlb,
  [TEST_OP.TRIGGER_IOPF]: test_trigger_iopf,
  [TEST_OP.DEV_CHECK_CACHE]: test_check_dev_cache,
  [TEST_OP.TRIGGER_VEVENT]: test_trigger_vevent,
  [TEST_OP.PASID_ATTACH]: test_pasid_attach,
  [TEST_OP.PASID_REPLACE]: test_pasid_replace,
  [TEST_OP.PASID_DETACH]: test_pasid_detach,
  [TEST_OP.PASID_CHECK_HWPT]: test_pasid_check,
  [TEST_OP.DMABUF_GET]: test_dmabuf_get,
  [TEST_OP.DMABUF_REVOKE]: test_dmabuf_revoke,
};

// Selftest driver payloads.
export const iommu_test_hw_info = struct('iommu_test_hw_info', { flags: u32(0), test_reg: u32(4) }, V.V6_7);
export const iommu_hwpt_selftest = struct('iommu_hwpt_selftest', {
  iotlb: u32(0), pagetable_type: u32(4, { since: V.V6_19 }),
}, V.V6_7);
export const iommu_hwpt_invalidate_selftest = struct('iommu_hwpt_invalidate_selftest', {
  flags: u32(0), iotlb_id: u32(4),
}, V.V6_8);
export const iommu_viommu_selftest = struct('iommu_viommu_selftest', {
  in_data: u32(0), out_data: u32(4, O), out_mmap_offset: u64(8, { out: true, since: V.V6_17 }),
  out_mmap_length: u64(16, { out: true, since: V.V6_17 }),
}, V.V6_17);
export const iommu_viommu_invalidate_selftest = struct('iommu_viommu_invalidate_selftest', {
  flags: u32(0), vdev_id: u32(4), cache_id: u32(8),
}, V.V6_13);
export const iommu_viommu_event_selftest = struct('iommu_viommu_event_selftest', { virt_id: u32(0) }, V.V6_15);

// ---- VFIO type1 container compatibility ----------------------------------------

export const vfio_iommu_type1_info = struct('vfio_iommu_type1_info', {
  argsz: u32(0), flags: u32(4), iova_pgsizes: u64(8, O), cap_offset: u32(16, O), pad: u32(20, R),
});
export const vfio_iommu_type1_dma_map = struct('vfio_iommu_type1_dma_map', {
  argsz: u32(0), flags: u32(4), vaddr: u64(8, P), iova: u64(16), size: u64(24),
});
export const vfio_iommu_type1_dma_unmap = struct('vfio_iommu_type1_dma_unmap', {
  argsz: u32(0), flags: u32(4), iova: u64(8), size: u64(16, O),
});
export const vfio_info_cap_header = struct('vfio_info_cap_header', { id: u16(0), version: u16(2), next: u32(4) });
export const vfio_iommu_type1_info_dma_avail = struct('vfio_iommu_type1_info_dma_avail', {
  id: u16(0), version: u16(2), next: u32(4), avail: u32(8),
});
export const vfio_iommu_type1_info_cap_iova_range = struct('vfio_iommu_type1_info_cap_iova_range', {
  id: u16(0), version: u16(2), next: u32(4), nr_iovas: u32(8), reserved: u32(12, R),
});
export const vfio_iova_range = struct('vfio_iova_range', { start: u64(0), end: u64(8) });
