// ABI profiles: which kernel the emulator impersonates. A profile is a version
// number (gating ioctls, struct tails and enum values in the uAPI table) plus a
// few named behaviour switches for differences that are not plain additions.

/**
 * Versions are major*100+minor. MAINLINE is the newest profile's version (7.3, verified
 * against a real 7.3.4 kernel): a table entry tagged MAINLINE is in every profile from
 * the newest on, i.e. "appeared after 6.17, present in 7.3.4, release not pinned down".
 */
export const V = {
  V6_2: 602,
  V6_6: 606,
  V6_7: 607,
  V6_8: 608,
  V6_11: 611,
  V6_12: 612,
  V6_13: 613,
  V6_14: 614,
  V6_15: 615,
  V6_16: 616,
  V6_17: 617,
  V6_18: 618,
  V6_19: 619,
  V7_0: 700,
  V7_1: 701,
  V7_2: 702,
  V7_3: 703,
  MAINLINE: 703,
} as const;

export type ProfileName = '6.12' | '6.13' | '6.15' | '6.17' | '7.3' | 'mainline' | 'viommu-v1';

export interface Profile {
  readonly name: ProfileName;
  readonly version: number;
  /** The original vIOMMU series' ABI (VIOMMU_ALLOC = 0x8f, SET/UNSET_VDEV_ID, VIOMMU_INVALIDATE). */
  readonly viommuV1: boolean;
  /** HWPT_INVALIDATE looks up only HWPT_NESTED (6.12): a paging HWPT gives ENOENT, not EINVAL. */
  readonly invalidateNestedLookupOnly: boolean;
  /**
   * The generated headers also define the names the Debian 6.12 selftests were backported
   * to use (PASID mock devices, hw_info INPUT_TYPE, in_data_type): header-only, so that the
   * tests compile. The 6.12.117 kernel does not implement them and rejects them (EINVAL,
   * EOPNOTSUPP), and so does this profile: 26 of those selftests fail, as on the real kernel.
   */
  readonly headerBackports: boolean;
  /** HWPT_ALLOC accepts IOMMU_HWPT_FAULT_ID_VALID for a paging HWPT (6.13+; 6.12 allows it only for nested ones). */
  readonly pagingFaultId: boolean;
  /**
   * 6.12's mock DIRTY op looks entries up at iova / page_size although the mock domain
   * stores one entry per 2 KiB (a kernel quirk: with page_size 4096 it marks the wrong
   * slots and counts only those that happen to be mapped).
   */
  readonly mockDirtyIndexQuirk: boolean;
  /** mmap() of /dev/iommu exists (6.17+, with HW queues); without it every mapping fails with ENODEV. */
  readonly iommufdMmap: boolean;
  /** Mock driver generation: 'A' = xarray mock (<= 6.18, HUGE_IOVA flag), 'B' = generic page table. */
  readonly mockGen: 'A' | 'B';
  /** VIOMMU_ALLOC checks the type against the driver before the HWPT lookup (6.17+). */
  readonly viommuTypeCheckFirst: boolean;
  /** vDEVICE is tied to its device: one per device, tombstoned on unbind (6.17+). */
  readonly vdeviceTombstone: boolean;
  /** vIOMMU invalidation is driven one entry per call by the core (iommufd for-next). */
  readonly invalidateCoreLoop: boolean;
  /** GET_HW_INFO reports IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED. */
  readonly atsNotSupportedCap: boolean;
  /**
   * The selftest's DMABUF_GET installs the new dma-buf fd but returns 0 (7.3.4's
   * selftest.c; 7.2 returned the fd): a kernel quirk the profile mirrors, so programs
   * written for the fd-returning op go on with fd 0.
   */
  readonly dmabufGetReturnsZero: boolean;
  /** VEVENTQ_ALLOC refuses a depth above this (EINVAL); 0 = only a zero depth is refused (before the cap). */
  readonly veventqMaxDepth: number;
  /**
   * read() of a vEVENTQ refuses a count below one header, and a count the first queued
   * normal event does not fit in, with EINVAL (7.3.4; older kernels return 0 for both).
   */
  readonly veventqReadEinval: boolean;
  /**
   * Mapping user memory checks that uptr + length does not wrap (EOVERFLOW) before the
   * length itself (EINVAL): iopt_alloc_user_pages, which came with IOAS_MAP_FILE (6.13);
   * 6.12's iopt_alloc_pages checks the length first. Observed on 7.3.4 and 6.12.117.
   */
  readonly userRangeBeforeLength: boolean;
  /** A PASID attach on a mock device without PASID support is EINVAL (observed on 7.3.4; not pinned to a release). */
  readonly pasidAttachNeedsPasids: boolean;
  /**
   * Replacing a fault-capable attachment auto-responds the old attachment's pending faults
   * from the old HWPT's queue (6.12.117 and 7.3.4 sources; 7.3.4 golden traces), not the new one's.
   */
  readonly replaceRespondsOldQueue: boolean;
}

const base = {
  viommuV1: false,
  invalidateNestedLookupOnly: false,
  headerBackports: false,
  pagingFaultId: true,
  mockDirtyIndexQuirk: false,
  iommufdMmap: false,
  mockGen: 'A' as const,
  viommuTypeCheckFirst: false,
  vdeviceTombstone: false,
  invalidateCoreLoop: false,
  atsNotSupportedCap: false,
  dmabufGetReturnsZero: false,
  veventqMaxDepth: 0,
  veventqReadEinval: false,
  userRangeBeforeLength: true,
  pasidAttachNeedsPasids: false,
  replaceRespondsOldQueue: false,
};

// 7.3.4 (Debian linux-source-7.3 7.3.4-1~bpo13+1): verified against the real kernel with
// its own selftests (.ci/selftests-expected/7.3-*.tsv).
const P7_3 = {
  ...base, version: V.V7_3, mockGen: 'B' as const, viommuTypeCheckFirst: true, vdeviceTombstone: true,
  atsNotSupportedCap: true, iommufdMmap: true, dmabufGetReturnsZero: true, veventqMaxDepth: 1 << 19,
  veventqReadEinval: true, pasidAttachNeedsPasids: true, replaceRespondsOldQueue: true,
};

export const PROFILES: Record<ProfileName, Profile> = {
  // Verified against a real 6.12.117 kernel (oracle-vm): see .ci/selftests-expected.
  '6.12': {
    ...base, name: '6.12', version: V.V6_12, invalidateNestedLookupOnly: true, headerBackports: true,
    pagingFaultId: false, mockDirtyIndexQuirk: true, iommufdMmap: false, userRangeBeforeLength: false,
    replaceRespondsOldQueue: true,
  },
  // HWPT_INVALIDATE of that series still looked up HWPT_NESTED only (vIOMMUs had their own VIOMMU_INVALIDATE).
  'viommu-v1': {
    ...base, name: 'viommu-v1', version: V.V6_12, viommuV1: true, invalidateNestedLookupOnly: true, pagingFaultId: false,
    userRangeBeforeLength: false,
  },
  '6.13': { ...base, name: '6.13', version: V.V6_13 },
  '6.15': { ...base, name: '6.15', version: V.V6_15 },
  '6.17': { ...base, name: '6.17', version: V.V6_17, viommuTypeCheckFirst: true, vdeviceTombstone: true, iommufdMmap: true },
  '7.3': { ...P7_3, name: '7.3' },
  // The newest profile, under its own name.
  mainline: { ...P7_3, name: 'mainline' },
};

export function getProfile(name: string): Profile {
  const p = (PROFILES as Record<string, Profile>)[name];
  if (!p) throw new Error(`unknown ABI profile '${name}' (known: ${Object.keys(PROFILES).join(', ')})`);
  return p;
}
