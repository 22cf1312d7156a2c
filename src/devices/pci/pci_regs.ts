// PCI configuration-space numbers (linux/pci_regs.h values): register
// offsets, bits and capability IDs used by the device models and by VFIO's
// config virtualisation.

export const PCI = {
  VENDOR_ID: 0x00, DEVICE_ID: 0x02, COMMAND: 0x04, STATUS: 0x06, REVISION_ID: 0x08, CLASS_PROG: 0x09,
  CLASS_DEVICE: 0x0a, CACHE_LINE_SIZE: 0x0c, LATENCY_TIMER: 0x0d, HEADER_TYPE: 0x0e, BIST: 0x0f,
  BASE_ADDRESS_0: 0x10, BASE_ADDRESS_5: 0x24, CARDBUS_CIS: 0x28, SUBSYSTEM_VENDOR_ID: 0x2c, SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30, CAPABILITY_LIST: 0x34, INTERRUPT_LINE: 0x3c, INTERRUPT_PIN: 0x3d, MIN_GNT: 0x3e, MAX_LAT: 0x3f,
  /** Size of the type-0 header. */
  STD_HEADER_SIZEOF: 64,
  /** Conventional config space; PCIe extends it to 4096. */
  CFG_SPACE_SIZE: 256,
  CFG_SPACE_EXP_SIZE: 4096,
  STD_NUM_BARS: 6,
} as const;

export const PCI_COMMAND = {
  IO: 0x1, MEMORY: 0x2, MASTER: 0x4, SPECIAL: 0x8, INVALIDATE: 0x10, VGA_PALETTE: 0x20, PARITY: 0x40,
  WAIT: 0x80, SERR: 0x100, FAST_BACK: 0x200, INTX_DISABLE: 0x400,
} as const;

export const PCI_STATUS = {
  IMM_READY: 0x1, INTERRUPT: 0x8, CAP_LIST: 0x10, MASTER_PARITY: 0x100, SIG_TARGET_ABORT: 0x800,
  REC_TARGET_ABORT: 0x1000, REC_MASTER_ABORT: 0x2000, SIG_SYSTEM_ERROR: 0x4000, DETECTED_PARITY: 0x8000,
} as const;

export const PCI_BASE_ADDRESS = {
  SPACE_IO: 0x1, MEM_TYPE_64: 0x4, MEM_PREFETCH: 0x8, MEM_MASK: 0xfffffff0,
} as const;

export const PCI_CAP_ID = {
  PM: 0x01, MSI: 0x05, VNDR: 0x09, EXP: 0x10, MSIX: 0x11, AF: 0x13, MAX: 0x14,
} as const;
export const PCI_CAP_LIST_ID = 0;
export const PCI_CAP_LIST_NEXT = 1;
export const PCI_CAP_FLAGS = 2;

export const PCI_MSI = {
  FLAGS: 2, ADDRESS_LO: 4, ADDRESS_HI: 8, DATA_32: 8, DATA_64: 12, MASK_32: 12, MASK_64: 16,
  FLAGS_ENABLE: 0x1, FLAGS_QMASK: 0x0e, FLAGS_QSIZE: 0x70, FLAGS_64BIT: 0x80, FLAGS_MASKBIT: 0x100,
} as const;

export const PCI_MSIX = {
  FLAGS: 2, TABLE: 4, PBA: 8, FLAGS_QSIZE: 0x7ff, FLAGS_MASKALL: 0x4000, FLAGS_ENABLE: 0x8000,
  TABLE_BIR: 0x7, TABLE_OFFSET: 0xfffffff8, SIZEOF: 12, ENTRY_SIZE: 16, ENTRY_VECTOR_CTRL: 12,
  ENTRY_CTRL_MASKBIT: 1,
} as const;

export const PCI_EXP = {
  FLAGS: 2, DEVCAP: 4, DEVCTL: 8, DEVSTA: 10, LNKCAP: 12, LNKCTL: 16, LNKSTA: 18, DEVCAP2: 36, DEVCTL2: 40,
  /** Capability version 2, endpoint layout: 60 bytes. */
  ENDPOINT_SIZEOF_V2: 0x3c,
  FLAGS_VERS: 0x000f, FLAGS_TYPE: 0x00f0, TYPE_ENDPOINT: 0x0, TYPE_RC_END: 0x9,
  DEVCAP_FLR: 0x10000000,
  DEVCTL_CERE: 0x1, DEVCTL_NFERE: 0x2, DEVCTL_FERE: 0x4, DEVCTL_URRE: 0x8, DEVCTL_RELAX_EN: 0x10,
  DEVCTL_PAYLOAD: 0x00e0, DEVCTL_EXT_TAG: 0x100, DEVCTL_PHANTOM: 0x200, DEVCTL_AUX_PME: 0x400,
  DEVCTL_NOSNOOP_EN: 0x800, DEVCTL_READRQ: 0x7000, DEVCTL_BCR_FLR: 0x8000,
  DEVCTL2_ARI: 0x20,
} as const;

/** Extended capability header: ID in bits 15:0, version 19:16, next 31:20. */
export const pciExtCapId = (header: number): number => header & 0xffff;
export const pciExtCapNext = (header: number): number => (header >>> 20) & 0xffc;
export const PCI_EXT_CAP_ID = { ERR: 0x01, VNDR: 0x0b, SRIOV: 0x10, DVSEC: 0x23, MAX: 0x31 } as const;

export const PCI_CLASS = { SYSTEM_OTHER: 0x0880, DISPLAY_VGA: 0x0300 } as const;
export const PCI_VENDOR_ID_INTEL = 0x8086;
