// The files a vfio device is used through (vfio_main.c, device_cdev.c): the
// cdev /dev/vfio/devices/vfioN (unusable until VFIO_DEVICE_BIND_IOMMUFD) and
// the fd VFIO_GROUP_GET_DEVICE_FD returns. Both dispatch to the vfio-pci
// device (vfio_pci.ts); opening is counted per device (the first open binds
// to the iommufd and enables the function, the last close undoes both).
import { fail } from '../uapi/errno.js';
import { decode } from '../uapi/layout.js';
import { V } from '../uapi/profiles.js';
import {
  VFIO_DEVICE_ATTACH_PASID, VFIO_DEVICE_BIND_FLAG_TOKEN, VFIO_DEVICE_DETACH_PASID, VFIO_REQ,
  vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_detach_iommufd_pt, vfioMinsz,
} from '../uapi/vfio.js';
import { endOf, structSize } from '../uapi/layout.js';
import type { AccessSize } from '../devices/device.js';
import { copyStructFromUser, type IommufdCtx } from './context.js';
import { POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM } from './file.js';
import type { UserMemory } from './usermem.js';
import type { VfioPciDevice } from './vfio_pci.js';
import {
  copyFromUser, copyToUser, getUserU32, iommufdCtxFromFd, tracedVfioIoctl, type VfioCaller, type VfioFile,
} from './vfio_file.js';

/** What the device files need of the group (vfio_group.ts). */
export interface VfioGroupLike {
  readonly id: number;
  /** The iommufd set with SET_CONTAINER (null: none). */
  iommufd: IommufdCtx | null;
  /** vfio_device_block_group: EBUSY while the group is open. */
  blockForCdev(): void;
  unblockForCdev(): void;
  /** A device file opened through the group holds the group file. */
  holdFile(): void;
  releaseFile(): void;
}

/** A BAR mapping of a device file: loads and stores go to the device (a trapped MOV, phase 2 of the shim). */
export interface BarMapping {
  readonly bar: number;
  /** Offset of the mapping inside the BAR. */
  readonly start: number;
  readonly length: number;
  read(off: number, size: AccessSize): bigint;
  write(off: number, size: AccessSize, value: bigint): void;
}

export class VfioDeviceFile implements VfioFile {
  readonly name: string;
  /** vfio_device_fops: read and write, no poll (the VFS answers DEFAULT_POLLMASK). */
  readonly has = { read: true, write: true, poll: false };
  accessGranted = false;
  /** The iommufd the device was bound through (cdev) or the group's. */
  iommufd: IommufdCtx | null = null;
  devid = 0;
  private released = false;

  constructor(readonly device: VfioPciDevice, readonly group: VfioGroupLike | null) {
    this.name = group ? '[vfio-device]' : `vfio${device.index}`;
  }

  private get emu() {
    return this.device.emu;
  }

  // ---- open counting (vfio_df_open / vfio_df_close) ------------------------------------------------

  /** vfio_df_open: only the group path may open a device twice. */
  dfOpen(): void {
    const dev = this.device;
    if (dev.openCount !== 0 && !this.group) fail('EINVAL', 'VFIO device: already open through the cdev (the group cannot open it too)');
    dev.openCount++;
    if (dev.openCount === 1) {
      try {
        this.firstOpen();
      } catch (e) {
        dev.openCount--;
        throw e;
      }
    }
  }

  private firstOpen(): void {
    const dev = this.device;
    if (!this.iommufd) fail('EINVAL', 'VFIO device: no iommufd bound');
    this.devid = dev.bindIommufd(this.iommufd);
    try {
      dev.openDevice();
    } catch (e) {
      dev.unbindIommufd();
      throw e;
    }
  }

  dfClose(): void {
    const dev = this.device;
    if (!dev.openCount) return;
    if (dev.openCount === 1) {
      dev.closeDevice();
      dev.unbindIommufd();
    }
    dev.openCount--;
  }

  // ---- ioctl (vfio_device_fops_unl_ioctl) -------------------------------------------------------------

  ioctl(request: number, arg: bigint, caller: VfioCaller): number {
    return tracedVfioIoctl(this.emu, 'device', this.iommufd?.seq ?? 0, request, arg, caller, () => this.dispatch(request, arg, caller));
  }

  private dispatch(request: number, arg: bigint, caller: VfioCaller): number {
    if (this.released) fail('EBADF', 'VFIO device: the file is released');
    const req = request >>> 0;
    if (req === VFIO_REQ.DEVICE_BIND_IOMMUFD) return this.bindIommufd(arg, caller);
    if (!this.accessGranted) fail('EINVAL', 'VFIO device: not bound to an iommufd yet (BIND_IOMMUFD first)');
    this.device.pmRuntimeGet();
    if (!this.group) {
      if (req === VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT) return this.attachPt(arg, caller.mem);
      if (req === VFIO_REQ.DEVICE_DETACH_IOMMUFD_PT) return this.detachPt(arg, caller.mem);
    }
    switch (req) {
      case VFIO_REQ.DEVICE_FEATURE:
        return this.device.feature(caller, arg);
      case VFIO_REQ.DEVICE_GET_REGION_INFO:
        return this.device.getRegionInfo(caller.mem, arg);
      default:
        return this.device.ioctl(request, arg, caller);
    }
  }

  /** VFIO_DEVICE_BIND_IOMMUFD (cdev only). */
  private bindIommufd(arg: bigint, caller: VfioCaller): number {
    const emu = this.emu;
    const version = emu.profile.version;
    const tokens = version >= V.V6_17;
    const minsz = endOf(vfio_device_bind_iommufd, 'out_devid');
    const userSize = getUserU32(emu, caller.mem, arg);
    if (userSize < minsz) fail('EINVAL', 'VFIO_DEVICE_BIND_IOMMUFD: argsz below the minimum');
    emu.copyPoint();
    const bind = decode(vfio_device_bind_iommufd,
      copyStructFromUser(caller.mem, arg, userSize, structSize(vfio_device_bind_iommufd, version)), version);
    if (bind.iommufd < 0 || bind.flags & ~(tokens ? VFIO_DEVICE_BIND_FLAG_TOKEN : 0)) fail('EINVAL', 'VFIO_DEVICE_BIND_IOMMUFD: iommufd < 0 or unknown flags');
    if (this.group) fail('EINVAL', 'VFIO_DEVICE_BIND_IOMMUFD: the device was opened through its group');
    const group = this.device.group as VfioGroupLike | null;
    group?.blockForCdev();
    try {
      if (this.accessGranted) fail('EINVAL', 'VFIO_DEVICE_BIND_IOMMUFD: already bound');
      if (tokens) {
        let uuid: Uint8Array | null = null;
        if (bind.flags & VFIO_DEVICE_BIND_FLAG_TOKEN) uuid = copyFromUser(emu, caller.mem, bind.token_uuid_ptr, 16);
        this.device.matchTokenUuid(uuid);
      }
      this.iommufd = iommufdCtxFromFd(caller, bind.iommufd);
      try {
        this.dfOpen();
        try {
          const out = new Uint8Array(4);
          new DataView(out.buffer).setUint32(0, this.devid, true);
          copyToUser(emu, caller.mem, arg + BigInt(vfio_device_bind_iommufd.fields.out_devid.offset), out);
        } catch (e) {
          this.dfClose();
          throw e;
        }
      } catch (e) {
        this.iommufd.put();
        this.iommufd = null;
        throw e;
      }
      this.device.cdevOpened = true;
      this.accessGranted = true;
      return 0;
    } catch (e) {
      group?.unblockForCdev();
      throw e;
    }
  }

  /** Undo a cdev bind (release). */
  private unbindIommufd(): void {
    if (!this.accessGranted) return;
    this.dfClose();
    this.iommufd?.put();
    this.iommufd = null;
    this.device.cdevOpened = false;
    (this.device.group as VfioGroupLike | null)?.unblockForCdev();
  }

  /** VFIO_DEVICE_ATTACH_IOMMUFD_PT. */
  private attachPt(arg: bigint, mem: UserMemory): number {
    const emu = this.emu;
    const version = emu.profile.version;
    const pasidFlag = version >= V.V6_15 ? VFIO_DEVICE_ATTACH_PASID : 0;
    const minsz = endOf(vfio_device_attach_iommufd_pt, 'pt_id');
    const raw = new Uint8Array(16);
    raw.set(copyFromUser(emu, mem, arg, minsz));
    const head = decode(vfio_device_attach_iommufd_pt, raw, version);
    if (head.argsz < minsz) fail('EINVAL', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT: argsz below the minimum');
    if (head.flags & ~pasidFlag) fail('EINVAL', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT: unknown flags');
    const withPasid = !!(head.flags & pasidFlag);
    if (withPasid) {
      const xend = endOf(vfio_device_attach_iommufd_pt, 'pasid');
      if (head.argsz < xend) fail('EINVAL', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT: argsz too small for the pasid field');
      raw.set(copyFromUser(emu, mem, arg + BigInt(minsz), xend - minsz), minsz);
    }
    const a = decode(vfio_device_attach_iommufd_pt, raw, version);
    const dev = this.device;
    const ptId = withPasid ? dev.pasidAttachIoas(a.pasid, a.pt_id) : dev.attachIoas(a.pt_id);
    try {
      const out = new Uint8Array(4);
      new DataView(out.buffer).setUint32(0, ptId, true);
      copyToUser(emu, mem, arg + BigInt(vfio_device_attach_iommufd_pt.fields.pt_id.offset), out);
    } catch (e) {
      // Kernel behaviour: a failed copy-back detaches the RID, whichever attach it was.
      dev.detachIoas();
      throw e;
    }
    return 0;
  }

  /** VFIO_DEVICE_DETACH_IOMMUFD_PT: detaching what is not attached is a silent success. */
  private detachPt(arg: bigint, mem: UserMemory): number {
    const emu = this.emu;
    const version = emu.profile.version;
    const pasidFlag = version >= V.V6_15 ? VFIO_DEVICE_DETACH_PASID : 0;
    const minsz = vfioMinsz('VFIO_DEVICE_DETACH_IOMMUFD_PT');
    const raw = new Uint8Array(12);
    raw.set(copyFromUser(emu, mem, arg, minsz));
    const head = decode(vfio_device_detach_iommufd_pt, raw, version);
    if (head.argsz < minsz) fail('EINVAL', 'VFIO_DEVICE_DETACH_IOMMUFD_PT: argsz below the minimum');
    if (head.flags & ~pasidFlag) fail('EINVAL', 'VFIO_DEVICE_DETACH_IOMMUFD_PT: unknown flags');
    if (head.flags & pasidFlag) {
      const xend = endOf(vfio_device_detach_iommufd_pt, 'pasid');
      if (head.argsz < xend) fail('EINVAL', 'VFIO_DEVICE_DETACH_IOMMUFD_PT: argsz too small for the pasid field');
      raw.set(copyFromUser(emu, mem, arg + BigInt(minsz), xend - minsz), minsz);
      this.device.pasidDetachIoas(decode(vfio_device_detach_iommufd_pt, raw, version).pasid);
    } else {
      this.device.detachIoas();
    }
    return 0;
  }

  // ---- read / write / mmap / poll / release ---------------------------------------------------------

  read(mem: UserMemory, buf: bigint, count: number, pos: bigint): number {
    if (this.released) fail('EBADF', 'VFIO device: the file is released');
    if (!this.accessGranted) fail('EINVAL', 'VFIO device: not bound to an iommufd yet');
    return this.device.rw(mem, buf, count, pos, false);
  }

  write(mem: UserMemory, buf: bigint, count: number, pos: bigint): number {
    if (this.released) fail('EBADF', 'VFIO device: the file is released');
    if (!this.accessGranted) fail('EINVAL', 'VFIO device: not bound to an iommufd yet');
    return this.device.rw(mem, buf, count, pos, true);
  }

  /** mmap(2) of the file at `offset` (region index << 40 + offset in the BAR). */
  mmap(offset: bigint, length: bigint, shared: boolean): BarMapping {
    if (this.released) fail('EBADF', 'VFIO device: the file is released');
    if (!this.accessGranted) fail('EINVAL', 'VFIO device: not bound to an iommufd yet');
    const m = this.device.mmapCheck(offset, length, shared);
    const dev = this.device;
    const check = (off: number, size: number) => {
      if (off < 0 || off + size > m.length || off % size) throw new Error(`BAR mapping access 0x${off.toString(16)}/${size} outside the mapping`);
    };
    return {
      ...m,
      read: (off, size) => {
        check(off, size);
        return dev.mmioAccess(m.bar, m.start + off, size, false);
      },
      write: (off, size, value) => {
        check(off, size);
        dev.mmioAccess(m.bar, m.start + off, size, true, value);
      },
    };
  }

  poll(): number {
    return POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM;
  }

  /** vfio_device_fops_release: last reference to the file (close, or the process exiting). */
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.group) {
      this.dfClose();
      this.iommufd = null;
      this.group.releaseFile();
    } else {
      this.unbindIommufd();
    }
  }
}
