// VFIO groups (vfio/group.c): /dev/vfio/<N>, opened once at a time; it is
// given an iommufd as its "container" (GROUP_SET_CONTAINER: the kernel with
// IOMMUFD_VFIO_CONTAINER serves /dev/vfio/vfio from iommufd too, so every
// container is an iommufd), and hands out device fds by name.
import { fail } from '../uapi/errno.js';
import { decode, encode } from '../uapi/layout.js';
import { VFIO_GROUP_FLAGS, VFIO_REQ, vfio_group_status, vfioMinsz } from '../uapi/vfio.js';
import type { IommufdCtx } from './context.js';
import { POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM } from './file.js';
import { Ioas } from './ioas.js';
import { ObjType } from './object.js';
import type { UserMemory } from './usermem.js';
import { VfioDeviceFile, type VfioGroupLike } from './vfio_device.js';
import type { VfioPciDevice } from './vfio_pci.js';
import {
  copyFromUser, copyToUser, getUserU32, strndupUser, tracedVfioIoctl, type VfioCaller, type VfioFile,
} from './vfio_file.js';

/**
 * iommufd_vfio_compat_ioas_create: the context's compat IOAS, made (as a
 * user-visible IOAS) unless one is set already.
 */
export function compatIoasCreate(ctx: IommufdCtx): void {
  const ioas = ctx.allocObj(new Ioas(ctx));
  const cur = ctx.vfioIoas;
  if (cur && ctx.objects.find(cur.id, ObjType.IOAS) === cur) {
    ctx.objects.abort(ioas);
    return;
  }
  ctx.vfioIoas = ioas;
  ctx.objects.finalize(ioas);
}

export class VfioGroup implements VfioGroupLike {
  readonly devices: VfioPciDevice[] = [];
  iommufd: IommufdCtx | null = null;
  /** The open group file, if any (one at a time). */
  private opened: VfioGroupFile | null = null;
  private cdevDeviceOpenCnt = 0;
  /** References on the open group file: the fd and the device files opened through it. */
  private fileRefs = 0;

  constructor(readonly id: number) {}

  /** open("/dev/vfio/<id>"). */
  open(): VfioGroupFile {
    if (!this.devices.some((d) => d.registered)) fail('ENODEV', 'VFIO group: no device of the group is bound to vfio-pci');
    if (this.cdevDeviceOpenCnt) fail('EBUSY', 'a device of the group is open through its cdev');
    if (this.opened) fail('EBUSY', 'the group is already open');
    this.opened = new VfioGroupFile(this);
    this.fileRefs = 1;
    return this.opened;
  }

  blockForCdev(): void {
    if (this.opened) fail('EBUSY', 'the group is open');
    this.cdevDeviceOpenCnt++;
  }

  unblockForCdev(): void {
    this.cdevDeviceOpenCnt--;
  }

  holdFile(): void {
    this.fileRefs++;
  }

  /** The group file's release runs when the fd and every device file opened through it are gone. */
  releaseFile(): void {
    if (--this.fileRefs > 0) return;
    this.iommufd?.put();
    this.iommufd = null;
    this.opened = null;
  }

  get isOpen(): boolean {
    return !!this.opened;
  }
}

export class VfioGroupFile implements VfioFile {
  readonly name: string;
  /** vfio_group_fops: ioctls only. */
  readonly has = { read: false, write: false, poll: false };
  private closed = false;

  constructor(readonly group: VfioGroup) {
    this.name = `vfio/${group.id}`;
  }

  ioctl(request: number, arg: bigint, caller: VfioCaller): number {
    return tracedVfioIoctl(this.emu, 'group', this.group.iommufd?.seq ?? 0, request, arg, caller, () => this.dispatch(request, arg, caller));
  }

  private dispatch(request: number, arg: bigint, caller: VfioCaller): number {
    if (this.closed) fail('EBADF', 'VFIO group: the file is closed');
    switch (request >>> 0) {
      case VFIO_REQ.GROUP_GET_DEVICE_FD: return this.getDeviceFd(arg, caller);
      case VFIO_REQ.GROUP_GET_STATUS: return this.getStatus(arg, caller.mem);
      case VFIO_REQ.GROUP_SET_CONTAINER: return this.setContainer(arg, caller);
      case VFIO_REQ.GROUP_UNSET_CONTAINER: return this.unsetContainer();
      default: fail('ENOTTY', 'not a VFIO group ioctl');
    }
  }

  private get emu() {
    return this.group.devices[0]!.emu;
  }

  private getStatus(arg: bigint, mem: UserMemory): number {
    const minsz = vfioMinsz('VFIO_GROUP_GET_STATUS');
    const st = decode(vfio_group_status, copyFromUser(this.emu, mem, arg, minsz));
    if (st.argsz < minsz) fail('EINVAL', 'VFIO_GROUP_GET_STATUS: argsz below the minimum');
    let flags = 0;
    if (this.group.iommufd) flags = VFIO_GROUP_FLAGS.CONTAINER_SET | VFIO_GROUP_FLAGS.VIABLE;
    // Viable unless DMA ownership is held by someone else (an iommufd binding outside this group).
    else if (!this.group.devices.some((d) => d.idev)) flags = VFIO_GROUP_FLAGS.VIABLE;
    st.flags = flags;
    copyToUser(this.emu, mem, arg, encode(vfio_group_status, st));
    return 0;
  }

  private setContainer(arg: bigint, caller: VfioCaller): number {
    const fd = getUserU32(this.emu, caller.mem, arg) | 0;
    const o = fd < 0 ? undefined : caller.files.resolve(fd);
    if (!o) fail('EBADF', 'VFIO_GROUP_SET_CONTAINER: not an open container or iommufd fd');
    if (this.group.iommufd) fail('EINVAL', 'a container is set already');
    if (o.kind !== 'iommufd' || o.ctx.closed) fail('EBADFD', `fd ${fd} is neither a container nor an iommufd`);
    const ctx = o.ctx;
    ctx.ref();
    try {
      compatIoasCreate(ctx);
    } catch (e) {
      ctx.put();
      throw e;
    }
    this.group.iommufd = ctx;
    return 0;
  }

  private unsetContainer(): number {
    if (!this.group.iommufd) fail('EINVAL', 'VFIO_GROUP_UNSET_CONTAINER: the group has no container');
    this.group.iommufd.put();
    this.group.iommufd = null;
    return 0;
  }

  /** VFIO_GROUP_GET_DEVICE_FD: a new fd for the device named by the string at `arg`. */
  private getDeviceFd(arg: bigint, caller: VfioCaller): number {
    const buf = strndupUser(this.emu, caller.mem, arg);
    let device: VfioPciDevice | null = null;
    for (const d of this.group.devices) {
      if (d.match(buf) && d.registered) {
        device = d;
        break;
      }
    }
    if (!device) fail('ENODEV', `no device '${buf}' in group ${this.group.id}`);
    this.emu.allocPoint(); // the device file
    const df = new VfioDeviceFile(device, this.group);
    this.groupOpen(df);
    this.group.holdFile();
    let fd = -1;
    try {
      this.emu.allocPoint(); // unused fd
      fd = caller.fds.install(df);
    } finally {
      if (fd < 0) df.release();
    }
    return fd;
  }

  /** vfio_df_group_open: the first open of the device binds it and attaches it to the compat IOAS. */
  private groupOpen(df: VfioDeviceFile): void {
    const group = this.group;
    if (!group.iommufd) fail('EINVAL', 'no container set');
    df.iommufd = group.iommufd;
    try {
      df.dfOpen();
    } catch (e) {
      df.iommufd = null;
      throw e;
    }
    if (df.device.openCount === 1) {
      try {
        const ioas = group.iommufd.vfioIoas;
        if (!ioas || group.iommufd.objects.find(ioas.id, ObjType.IOAS) !== ioas) fail('ENODEV', 'no compat IOAS');
        df.device.attachIoas(ioas.id);
      } catch (e) {
        df.dfClose();
        df.iommufd = null;
        throw e;
      }
    }
    df.accessGranted = true;
  }

  read(): number {
    fail('EINVAL', 'the group file cannot be read');
  }
  write(): number {
    fail('EINVAL', 'the group file cannot be written');
  }
  poll(): number {
    return POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM;
  }

  release(): void {
    if (this.closed) return;
    this.closed = true;
    this.group.releaseFile();
  }
}
