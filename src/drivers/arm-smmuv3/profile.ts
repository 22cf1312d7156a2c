// What the arm-smmu-v3 driver of the impersonated kernel does, by ABI profile.
// Feature presence is asked of the uAPI table (an enum member exists in the
// profile <=> that kernel had the code behind it); the two behaviour changes
// that are not uAPI additions are named switches keyed on the version.
import { accepts, ENUMS } from '../../uapi/enums.js';
import { V, type Profile } from '../../uapi/profiles.js';

const present = (enumName: string, member: string, p: Profile): boolean => accepts(p, enumName, member);

/** Value of a uAPI enum member (the driver's constants come from the table). */
export function uapiValue(enumName: string, member: string): number {
  const m = ENUMS[enumName]?.members.find((x) => x.name === member);
  if (!m) throw new Error(`uAPI table has no ${enumName}.${member}`);
  return m.value;
}

export const HW_INFO_TYPE_ARM_SMMUV3 = uapiValue('iommu_hw_info_type', 'IOMMU_HW_INFO_TYPE_ARM_SMMUV3');
export const HWPT_DATA_ARM_SMMUV3 = uapiValue('iommu_hwpt_data_type', 'IOMMU_HWPT_DATA_ARM_SMMUV3');
export const VIOMMU_TYPE_ARM_SMMUV3 = uapiValue('iommu_viommu_type', 'IOMMU_VIOMMU_TYPE_ARM_SMMUV3');
export const VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = uapiValue('iommu_hwpt_invalidate_data_type', 'IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3');
export const VEVENTQ_TYPE_ARM_SMMUV3 = uapiValue('iommu_veventq_type', 'IOMMU_VEVENTQ_TYPE_ARM_SMMUV3');
export const HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI = uapiValue('iommu_hw_info_arm_smmuv3_flags', 'IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI');

export interface SmmuAbi {
  /** arm_smmu_hw_info exists (GET_HW_INFO returns IDR/IIDR/AIDR). */
  readonly hwInfo: boolean;
  /** Nest-parent stage-2 domains, the ARM_SMMUV3 vIOMMU, nested domains from a vSTE, CANWBS coherency. */
  readonly nesting: boolean;
  readonly viommu: boolean;
  /** vEVENTQ forwarding: attach records the vSID ("vmaster"), a translating vSTE needs a vDEVICE. */
  readonly vevents: boolean;
  /** GET_HW_INFO may report the repeat-TLBI/CFGI erratum flag. */
  readonly erratumFlag: boolean;
  /** IOMMU_HWPT_ALLOC_PASID is a paging flag. */
  readonly pasidFlag: boolean;
  /** Driver-sized vIOMMUs (get_viommu_size + init): the preconditions move before the HWPT lookup. */
  readonly viommuSized: boolean;
  /** Per-opcode allow-lists on guest commands (otherwise only the opcode and the vSID are checked). */
  readonly strictCmds: boolean;
  /** vDEVICE init refuses devices with more than one StreamID. */
  readonly vdeviceOneStream: boolean;
}

export function smmuAbi(p: Profile): SmmuAbi {
  return {
    hwInfo: present('iommu_hw_info_type', 'IOMMU_HW_INFO_TYPE_ARM_SMMUV3', p),
    nesting: present('iommu_hwpt_data_type', 'IOMMU_HWPT_DATA_ARM_SMMUV3', p),
    viommu: present('iommu_viommu_type', 'IOMMU_VIOMMU_TYPE_ARM_SMMUV3', p),
    vevents: present('iommu_veventq_type', 'IOMMU_VEVENTQ_TYPE_ARM_SMMUV3', p),
    erratumFlag: present('iommu_hw_info_arm_smmuv3_flags', 'IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI', p),
    pasidFlag: present('iommufd_hwpt_alloc_flags', 'IOMMU_HWPT_ALLOC_PASID', p),
    viommuSized: p.viommuTypeCheckFirst,
    // Both landed after 6.19 (present in 7.3.4): the mainline profile.
    strictCmds: p.version >= V.MAINLINE,
    vdeviceOneStream: p.version >= V.MAINLINE,
  };
}
