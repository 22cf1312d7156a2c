// The VFIO subsystem of one emulator: the vfio-pci devices registered (by the
// machine, src/machine/), their groups, and the open() entries of the nodes a
// program reaches: /dev/vfio/devices/vfioN, /dev/vfio/<group>, /dev/vfio/vfio.
import { fail } from '../uapi/errno.js';
import type { DriverDevice } from '../drivers/driver.js';
import type { PciDeviceModel } from '../devices/device.js';
import type { IommufdCtx } from './context.js';
import type { Emulator } from './emulator.js';
import type { UserMemory } from './usermem.js';
import { VfioDeviceFile } from './vfio_device.js';
import { VfioGroup, type VfioGroupFile } from './vfio_group.js';
import { VfioPciDevice } from './vfio_pci.js';

export class VfioSubsystem {
  /** By cdev index (vfio<index>). */
  readonly devices: VfioPciDevice[] = [];
  readonly groups = new Map<number, VfioGroup>();

  constructor(readonly emu: Emulator) {}

  /** Bind `pci` (behind IOMMU device `iommuDev`) to vfio-pci as `name` (its BDF) in group `groupId`. */
  register(name: string, pci: PciDeviceModel, iommuDev: DriverDevice, groupId: number): VfioPciDevice {
    if (this.devices.some((d) => d.name === name)) throw new Error(`vfio: device ${name} registered twice`);
    const dev = new VfioPciDevice(this.emu, name, pci, iommuDev);
    dev.index = this.devices.length;
    let group = this.groups.get(groupId);
    if (!group) {
      group = new VfioGroup(groupId);
      this.groups.set(groupId, group);
    }
    group.devices.push(dev);
    dev.group = group;
    this.devices.push(dev);
    return dev;
  }

  byName(name: string): VfioPciDevice | undefined {
    return this.devices.find((d) => d.name === name);
  }

  /** open("/dev/vfio/devices/vfio<index>"): usable only after BIND_IOMMUFD. */
  openCdev(index: number): VfioDeviceFile {
    const dev = this.devices[index];
    if (!dev || !dev.registered) fail('ENODEV', 'no such VFIO device');
    this.emu.allocPoint();
    return new VfioDeviceFile(dev, null);
  }

  /** open("/dev/vfio/<id>"). */
  openGroup(id: number): VfioGroupFile {
    const g = this.groups.get(id);
    if (!g) fail('ENODEV', 'no such IOMMU group');
    return g.open();
  }

  /**
   * open("/dev/vfio/vfio"): with IOMMUFD_VFIO_CONTAINER this is an iommufd,
   * with VFIO's accounting (pinned pages charged to the process).
   */
  openContainer(owner: UserMemory): IommufdCtx {
    const ctx = this.emu.open(owner);
    ctx.accountMode = 1;
    return ctx;
  }
}

const EXT_KEY = 'vfio.subsystem';

/** The emulator's VFIO subsystem (empty until a machine registers devices). */
export function vfioOf(emu: Emulator): VfioSubsystem {
  return emu.extState(EXT_KEY, () => new VfioSubsystem(emu));
}
