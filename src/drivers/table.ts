// The IOMMU drivers the emulator knows, by name: an explicit table (no
// registration by import side effect). Each entry returns the emulator's one
// instance of that driver; a machine description picks drivers from here.
import type { Emulator } from '../core/emulator.js';
import type { IommuDriver } from './driver.js';
import { mockDriverOf } from './mock/mock.js';
import { smmuDriverOf } from './arm-smmuv3/index.js';
import { vtdDriverOf } from './intel_vtd/vtd.js';

export const IOMMU_DRIVERS = {
  /** The selftest mock (03). */
  mock: mockDriverOf,
  /** Emulated ARM SMMUv3 (04). */
  'arm-smmu-v3': smmuDriverOf,
  /** Intel VT-d, Skylake-SP legacy mode (drivers/intel_vtd). */
  'intel-iommu': vtdDriverOf,
} as const satisfies Record<string, (emu: Emulator) => IommuDriver>;

export type IommuDriverName = keyof typeof IOMMU_DRIVERS;

export function iommuDriver<N extends IommuDriverName>(emu: Emulator, name: N): ReturnType<(typeof IOMMU_DRIVERS)[N]> {
  const f = IOMMU_DRIVERS[name] as ((emu: Emulator) => IommuDriver) | undefined;
  if (!f) throw new Error(`unknown IOMMU driver '${String(name)}' (known: ${Object.keys(IOMMU_DRIVERS).join(', ')})`);
  return f(emu) as ReturnType<(typeof IOMMU_DRIVERS)[N]>;
}
