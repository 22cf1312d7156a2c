// The fault points that adding and removing a selftest mock device passes outside iommufd:
// mock_dev_create()'s device and name, device_add() (the kobject, its sysfs nodes and links,
// the uevent, the software node on 7.3) with the bus notifier's IOMMU probe (the group and
// its sysfs), and device_unregister(). The emulator does not model the driver core, so these
// are data: the sequence the real kernels showed, measured with native/oracle/failpoints.c
// on the oracle VM (6.12.117 and 7.3.4), one letter per point in order:
//   M  its failure fails the creation: ENOMEM
//   P  a failure inside the IOMMU probe: the probe gives up quietly, the device has no IOMMU,
//      and binding it fails: EINVAL
//   o  absorbed: the kernel carries on (sysfs links and uevents are best effort)
import { fail } from '../../uapi/errno.js';
import { V } from '../../uapi/profiles.js';
import type { Emulator } from '../../core/emulator.js';

interface CorePoints {
  /** Creating the device, after the SELFTEST object's allocation. */
  readonly add: string;
  /** IOMMU_DESTROY of the stdev: device_unregister(). */
  readonly del: string;
}

/** 6.12.117 (also used for 6.13 to 6.17, which were not measured). */
const V6_12: CorePoints = {
  add: 'MMMMMMMMMMMMMMMM' + 'PPPPPPPPPPPPPPPPP' + 'oo',
  del: 'oo',
};

/**
 * 7.3.4: a software node for the PASID width, more sysfs. The last three of `add` are absorbed
 * points 7.3.4 showed later in MOCK_DOMAIN's attach that the emulator does not attribute yet.
 */
const V7_3: CorePoints = {
  add: 'MMMMMMMMM' + 'oo' + 'MMMMM' + 'oooo' + 'MMMMMMMMMMM' + 'PPPPPPPPPPPPPPPP' + 'ooo' + 'ooo',
  del: 'oooo',
};

function pointsOf(emu: Emulator): CorePoints {
  return emu.profile.version >= V.V7_3 ? V7_3 : V6_12;
}

function run(emu: Emulator, seq: string): void {
  for (const c of seq) {
    if (!emu.faults.slab()) continue;
    if (c === 'M') fail('ENOMEM', 'fault injection: the mock device could not be added (driver core)');
    if (c === 'P') fail('EINVAL', 'fault injection: the mock device\'s IOMMU probe failed, it has no IOMMU');
  }
}

/** The points of creating a mock device (its failure leaves nothing behind). */
export function mockDeviceAddPoints(emu: Emulator): void {
  run(emu, pointsOf(emu).add);
}

/** The points of removing one (all absorbed: removal cannot fail). */
export function mockDeviceDelPoints(emu: Emulator): void {
  run(emu, pointsOf(emu).del);
}
