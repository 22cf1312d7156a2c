// The emulated machine as a program walks it: the sysfs entries of each PCI
// function bound to vfio-pci (/sys/bus/pci/devices/<BDF>/... , spec 06 §6),
// the IOMMU groups (/sys/kernel/iommu_groups) and the device nodes
// (/dev/vfio/vfio, /dev/vfio/<group>, /dev/vfio/devices/vfioN), written once
// as a real directory tree (files, directories, relative symlinks laid out as
// the kernel's). The shim redirects the paths the tree owns into it (the
// MACHINE request tells it where), so readlink, opendir/readdir, stat and
// open+read are the kernel's own calls on real files; opening a device node
// becomes an OPEN of that node. Every other path is untouched.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { VfioSubsystem } from '../core/vfio.js';

/** The file listing the prefixes the tree replaces (one absolute path a line). */
export const OWNED_FILE = 'owned';

const hex4 = (v: number): string => `0x${v.toString(16).padStart(4, '0')}\n`;

/** The PCI host bridge directory a BDF sits under (/sys/devices/pciSSSS:BB). */
function bridgeOf(bdf: string): string {
  return `pci${bdf.slice(0, 7)}`;
}

/** The cdevs' character device major (the vfio-dev `dev` file shows major:minor). */
const VFIO_CDEV_MAJOR = 511;

/**
 * Write the view of `vfio`'s devices under `root` (created; emptied first).
 * Returns the prefixes it owns, also written to root/owned.
 */
export function writeMachineView(root: string, vfio: VfioSubsystem): string[] {
  fs.rmSync(root, { recursive: true, force: true });
  const mk = (p: string): string => {
    const full = path.join(root, p);
    fs.mkdirSync(full, { recursive: true });
    return full;
  };
  const put = (p: string, text: string): void => {
    mk(path.dirname(p));
    fs.writeFileSync(path.join(root, p), text);
  };
  const link = (p: string, target: string): void => {
    mk(path.dirname(p));
    fs.symlinkSync(target, path.join(root, p));
  };
  const owned = ['/dev/vfio', '/sys/kernel/iommu_groups', '/sys/bus/pci/drivers/vfio-pci'];
  mk('dev/vfio/devices');
  mk('sys/kernel/iommu_groups');
  mk('sys/bus/pci/drivers/vfio-pci');
  // the container node: iommufd's, as with IOMMUFD_VFIO_CONTAINER
  put('dev/vfio/vfio', '');
  put('sys/bus/pci/drivers/vfio-pci/uevent', '');
  for (const d of vfio.devices) {
    const bdf = d.name;
    const group = d.group!.id;
    const dev = `sys/devices/${bridgeOf(bdf)}/${bdf}`;
    const pci = d.pci;
    owned.push(`/sys/bus/pci/devices/${bdf}`, `/${dev}`);
    put(`${dev}/vendor`, hex4(pci.vendorId));
    put(`${dev}/device`, hex4(pci.deviceId));
    put(`${dev}/subsystem_vendor`, hex4(pci.configRead(0x2c, 2)));
    put(`${dev}/subsystem_device`, hex4(pci.configRead(0x2e, 2)));
    put(`${dev}/class`, `0x${(pci.configRead(0x08, 4) >>> 8).toString(16).padStart(6, '0')}\n`);
    put(`${dev}/revision`, `0x${(pci.configRead(0x08, 1)).toString(16).padStart(2, '0')}\n`);
    put(`${dev}/numa_node`, '-1\n');
    put(`${dev}/driver_override`, '(null)\n');
    put(`${dev}/vfio-dev/vfio${d.index}/dev`, `${VFIO_CDEV_MAJOR}:${d.index}\n`);
    link(`${dev}/iommu_group`, `../../../kernel/iommu_groups/${group}`);
    link(`${dev}/driver`, '../../../bus/pci/drivers/vfio-pci');
    link(`${dev}/subsystem`, '../../../bus/pci');
    link(`sys/bus/pci/devices/${bdf}`, `../../../devices/${bridgeOf(bdf)}/${bdf}`);
    link(`sys/bus/pci/drivers/vfio-pci/${bdf}`, `../../../../devices/${bridgeOf(bdf)}/${bdf}`);
    link(`sys/kernel/iommu_groups/${group}/devices/${bdf}`, `../../../../devices/${bridgeOf(bdf)}/${bdf}`);
    put(`sys/kernel/iommu_groups/${group}/type`, 'DMA\n');
    put(`sys/kernel/iommu_groups/${group}/reserved_regions`, '0x00000000fee00000 0x00000000feefffff msi\n');
    put(`dev/vfio/${group}`, '');
    put(`dev/vfio/devices/vfio${d.index}`, '');
  }
  fs.writeFileSync(path.join(root, OWNED_FILE), `${owned.join('\n')}\n`);
  return owned;
}
