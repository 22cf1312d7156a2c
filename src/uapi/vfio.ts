// The VFIO uAPI (linux/vfio.h) as data: the structs the device, group and
// container files take, their request numbers, and the constants the handlers
// use (spec 06 §5). Every request is _IO(';', 100 + n): no size bits, the
// structs carry `argsz`, and each handler applies its own minimum size (the
// `last` member here: its end is the kernel's `minsz`).
import { endOf, s32, struct, u32, u64, type StructDef } from './layout.js';
import { IO } from './ioctls.js';
import * as S from './structs.js';
import { V } from './profiles.js';

const O = { out: true } as const;
const R = { reserved: true } as const;

// ---- structs (spec 06 §5.1) ------------------------------------------------------------

export const vfio_group_status = struct('vfio_group_status', { argsz: u32(0), flags: u32(4, O) });

export const vfio_device_info = struct('vfio_device_info', {
  argsz: u32(0, O), flags: u32(4, O), num_regions: u32(8, O), num_irqs: u32(12, O),
  cap_offset: u32(16, O), pad: u32(20, R),
});

export const vfio_region_info = struct('vfio_region_info', {
  argsz: u32(0, O), flags: u32(4, O), index: u32(8), cap_offset: u32(12, O), size: u64(16, O), offset: u64(24, O),
});

export const vfio_irq_info = struct('vfio_irq_info', {
  argsz: u32(0), flags: u32(4, O), index: u32(8), count: u32(12, O),
});

/** Header of vfio_irq_set; `data[]` (s32 fds or u8 bools) follows at 20. */
export const vfio_irq_set = struct('vfio_irq_set', {
  argsz: u32(0), flags: u32(4), index: u32(8), start: u32(12), count: u32(16),
});
export const VFIO_IRQ_SET_DATA_OFFSET = 20;

/** Header of vfio_device_feature; `data[]` follows at 8. */
export const vfio_device_feature = struct('vfio_device_feature', { argsz: u32(0), flags: u32(4) });
export const VFIO_FEATURE_DATA_OFFSET = 8;

export const vfio_device_low_power_entry_with_wakeup = struct('vfio_device_low_power_entry_with_wakeup', {
  wakeup_eventfd: s32(0), reserved: u32(4, R),
});

/** token_uuid_ptr (and the TOKEN flag) arrived in 6.17 (cdev VF tokens). */
export const vfio_device_bind_iommufd = struct('vfio_device_bind_iommufd', {
  argsz: u32(0), flags: u32(4), iommufd: s32(8), out_devid: u32(12, O),
  token_uuid_ptr: u64(16, { ptr: true, since: V.V6_17 }),
}, V.V6_6);

/** pasid (and the PASID flag) arrived in 6.15. */
export const vfio_device_attach_iommufd_pt = struct('vfio_device_attach_iommufd_pt', {
  argsz: u32(0), flags: u32(4), pt_id: u32(8, O), pasid: u32(12, { since: V.V6_15 }),
}, V.V6_6);

export const vfio_device_detach_iommufd_pt = struct('vfio_device_detach_iommufd_pt', {
  argsz: u32(0), flags: u32(4), pasid: u32(8, { since: V.V6_15 }),
}, V.V6_6);

export const vfio_info_cap_header = S.vfio_info_cap_header;
/** vfio_pci_hot_reset_info header (the devices[] array follows at 16). */
export const vfio_pci_hot_reset_info = struct('vfio_pci_hot_reset_info', {
  argsz: u32(0), flags: u32(4, O), count: u32(8, O),
});

// ---- requests ----------------------------------------------------------------------------

const N = (n: number): number => IO(100 + n);

/** The file a request is served on. */
export type VfioFileKind = 'container' | 'group' | 'device';

export interface VfioIoctlDef {
  readonly name: string;
  readonly request: number;
  readonly file: VfioFileKind;
  /** The struct the argument points to (none: the argument is a value or a plain pointer). */
  readonly struct?: StructDef;
  /** The kernel's minsz: the end of this member. */
  readonly last?: string;
  readonly since: number;
}

const def = (name: string, n: number, file: VfioFileKind, struct?: StructDef, last?: string, since: number = V.V6_2): VfioIoctlDef =>
  ({ name, request: N(n), file, struct, last, since });

/** Every VFIO request the emulator knows (container requests are the iommufd compat table's). */
export const VFIO_IOCTLS: readonly VfioIoctlDef[] = [
  def('VFIO_GET_API_VERSION', 0, 'container'),
  def('VFIO_CHECK_EXTENSION', 1, 'container'),
  def('VFIO_SET_IOMMU', 2, 'container'),
  def('VFIO_GROUP_GET_STATUS', 3, 'group', vfio_group_status, 'flags'),
  def('VFIO_GROUP_SET_CONTAINER', 4, 'group'),
  def('VFIO_GROUP_UNSET_CONTAINER', 5, 'group'),
  def('VFIO_GROUP_GET_DEVICE_FD', 6, 'group'),
  def('VFIO_DEVICE_GET_INFO', 7, 'device', vfio_device_info, 'num_irqs'),
  def('VFIO_DEVICE_GET_REGION_INFO', 8, 'device', vfio_region_info, 'offset'),
  def('VFIO_DEVICE_GET_IRQ_INFO', 9, 'device', vfio_irq_info, 'count'),
  def('VFIO_DEVICE_SET_IRQS', 10, 'device', vfio_irq_set, 'count'),
  def('VFIO_DEVICE_RESET', 11, 'device'),
  def('VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', 12, 'device', vfio_pci_hot_reset_info, 'count'),
  def('VFIO_DEVICE_PCI_HOT_RESET', 13, 'device'),
  def('VFIO_DEVICE_IOEVENTFD', 16, 'device'),
  def('VFIO_DEVICE_FEATURE', 17, 'device', vfio_device_feature, 'flags'),
  def('VFIO_DEVICE_BIND_IOMMUFD', 18, 'device', vfio_device_bind_iommufd, 'out_devid', V.V6_6),
  def('VFIO_DEVICE_ATTACH_IOMMUFD_PT', 19, 'device', vfio_device_attach_iommufd_pt, 'pt_id', V.V6_6),
  def('VFIO_DEVICE_DETACH_IOMMUFD_PT', 20, 'device', vfio_device_detach_iommufd_pt, 'flags', V.V6_6),
];

export const VFIO_IOCTL_BY_NAME = new Map(VFIO_IOCTLS.map((d) => [d.name, d]));


function req(name: string): number {
  return VFIO_IOCTL_BY_NAME.get(name)!.request;
}

/** minsz of a request: the end of its `last` member. */
export function vfioMinsz(name: string): number {
  const d = VFIO_IOCTL_BY_NAME.get(name)!;
  return endOf(d.struct!, d.last!);
}

export const VFIO_REQ = {
  GROUP_GET_STATUS: req('VFIO_GROUP_GET_STATUS'),
  GROUP_SET_CONTAINER: req('VFIO_GROUP_SET_CONTAINER'),
  GROUP_UNSET_CONTAINER: req('VFIO_GROUP_UNSET_CONTAINER'),
  GROUP_GET_DEVICE_FD: req('VFIO_GROUP_GET_DEVICE_FD'),
  DEVICE_GET_INFO: req('VFIO_DEVICE_GET_INFO'),
  DEVICE_GET_REGION_INFO: req('VFIO_DEVICE_GET_REGION_INFO'),
  DEVICE_GET_IRQ_INFO: req('VFIO_DEVICE_GET_IRQ_INFO'),
  DEVICE_SET_IRQS: req('VFIO_DEVICE_SET_IRQS'),
  DEVICE_RESET: req('VFIO_DEVICE_RESET'),
  DEVICE_GET_PCI_HOT_RESET_INFO: req('VFIO_DEVICE_GET_PCI_HOT_RESET_INFO'),
  DEVICE_PCI_HOT_RESET: req('VFIO_DEVICE_PCI_HOT_RESET'),
  DEVICE_IOEVENTFD: req('VFIO_DEVICE_IOEVENTFD'),
  DEVICE_FEATURE: req('VFIO_DEVICE_FEATURE'),
  DEVICE_BIND_IOMMUFD: req('VFIO_DEVICE_BIND_IOMMUFD'),
  DEVICE_ATTACH_IOMMUFD_PT: req('VFIO_DEVICE_ATTACH_IOMMUFD_PT'),
  DEVICE_DETACH_IOMMUFD_PT: req('VFIO_DEVICE_DETACH_IOMMUFD_PT'),
} as const;

// ---- constants ---------------------------------------------------------------------------

export const VFIO_GROUP_FLAGS = { VIABLE: 1, CONTAINER_SET: 2 } as const;
export const VFIO_DEVICE_FLAGS = { RESET: 1, PCI: 2, CAPS: 0x80 } as const;
export const VFIO_REGION_INFO_FLAG = { READ: 1, WRITE: 2, MMAP: 4, CAPS: 8 } as const;
export const VFIO_REGION_INFO_CAP = { SPARSE_MMAP: 1, TYPE: 2, MSIX_MAPPABLE: 3 } as const;
export const VFIO_IRQ_INFO = { EVENTFD: 1, MASKABLE: 2, AUTOMASKED: 4, NORESIZE: 8 } as const;
export const VFIO_IRQ_SET = {
  DATA_NONE: 1, DATA_BOOL: 2, DATA_EVENTFD: 4, ACTION_MASK: 8, ACTION_UNMASK: 0x10, ACTION_TRIGGER: 0x20,
  DATA_TYPE_MASK: 1 | 2 | 4, ACTION_TYPE_MASK: 8 | 0x10 | 0x20,
} as const;
export const VFIO_PCI = {
  BAR0_REGION_INDEX: 0, BAR5_REGION_INDEX: 5, ROM_REGION_INDEX: 6, CONFIG_REGION_INDEX: 7, VGA_REGION_INDEX: 8,
  NUM_REGIONS: 9,
  INTX_IRQ_INDEX: 0, MSI_IRQ_INDEX: 1, MSIX_IRQ_INDEX: 2, ERR_IRQ_INDEX: 3, REQ_IRQ_INDEX: 4, NUM_IRQS: 5,
  /** Region i lives at file offset i << 40. */
  OFFSET_SHIFT: 40n,
} as const;
export const VFIO_PCI_OFFSET_MASK = (1n << VFIO_PCI.OFFSET_SHIFT) - 1n;
export const vfioRegionOffset = (index: number): bigint => BigInt(index) << VFIO_PCI.OFFSET_SHIFT;

export const VFIO_DEVICE_FEATURE = {
  MASK: 0xffff, GET: 1 << 16, SET: 1 << 17, PROBE: 1 << 18,
  PCI_VF_TOKEN: 0, MIGRATION: 1, MIG_DEVICE_STATE: 2, LOW_POWER_ENTRY: 3, LOW_POWER_ENTRY_WITH_WAKEUP: 4,
  LOW_POWER_EXIT: 5, DMA_LOGGING_START: 6, DMA_LOGGING_STOP: 7, DMA_LOGGING_REPORT: 8, MIG_DATA_SIZE: 9,
  BUS_MASTER: 10, DMA_BUF: 11, ZPCI_ERROR: 13,
} as const;
export const VFIO_DEVICE_BIND_FLAG_TOKEN = 1;
export const VFIO_DEVICE_ATTACH_PASID = 1;
export const VFIO_DEVICE_DETACH_PASID = 1;
/** UUID_STRING_LEN: "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". */
export const UUID_STRING_LEN = 36;
