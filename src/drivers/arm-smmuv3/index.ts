// The emulated ARM SMMUv3 and the kernel's arm-smmu-v3 driver over it.
import type { Emulator } from '../../core/emulator.js';
import { ArmSmmuV3Driver } from './arm_smmu_v3.js';

export { ArmSmmuDevice, ArmSmmuV3Driver, SmmuMaster, SmmuPagingDomain, smmuTranslate, type MasterOptions } from './arm_smmu_v3.js';
export { smmuConfig, probe, type SmmuFeatures, type SmmuHwConfig, type SmmuOptions } from './config.js';
export { SmmuV3, type HostEvent, type SmmuFaultDetail } from './smmu.js';
export { SmmuNestedDomain, type Vsmmu } from './viommu.js';
export { onSmmuTrace, formatSmmuTrace, smmuRecordOf, SMMU_DRIVER, SmmuTracer, type SmmuTraceRecord } from './trace.js';
export { smmuAbi, type SmmuAbi } from './profile.js';

const EXT_KEY = 'arm-smmu-v3.driver';

/** The emulator's arm-smmu-v3 driver (one per emulator; SMMU instances are added to it). */
export function smmuDriverOf(emu: Emulator): ArmSmmuV3Driver {
  let d = emu.ext.get(EXT_KEY) as ArmSmmuV3Driver | undefined;
  if (!d) {
    d = new ArmSmmuV3Driver(emu);
    emu.ext.set(EXT_KEY, d);
  }
  return d;
}
