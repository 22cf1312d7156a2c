// A PCI function bound to vfio-pci (vfio_pci_core.c, vfio_pci_rdwr.c and the
// physical iommufd ops of vfio/iommufd.c): open/close (enable, reset, saved
// config state), the device ioctls, config and BAR access through the region
// offsets (index << 40), mmap checks, and the DEVICE object it becomes in an
// iommufd. The files that reach it (cdev, group-opened fd) are vfio_device.ts.
import { fail, isErrno } from '../uapi/errno.js';
import { decode, encode, encodeInto } from '../uapi/layout.js';
import {
  UUID_STRING_LEN, VFIO_DEVICE_FEATURE, VFIO_DEVICE_FLAGS, VFIO_IRQ_INFO, VFIO_IRQ_SET, VFIO_IRQ_SET_DATA_OFFSET,
  VFIO_PCI, VFIO_PCI_OFFSET_MASK, VFIO_REGION_INFO_CAP, VFIO_REGION_INFO_FLAG, VFIO_REQ, vfio_device_feature,
  vfio_device_info, vfio_device_low_power_entry_with_wakeup, vfio_irq_info, vfio_irq_set, vfio_pci_hot_reset_info,
  vfio_region_info, vfioMinsz, vfioRegionOffset, VFIO_FEATURE_DATA_OFFSET,
} from '../uapi/vfio.js';
import type { DriverDevice } from '../drivers/driver.js';
import type { AccessSize, PciDeviceModel } from '../devices/device.js';
import { IommuDma } from '../devices/dma.js';
import { PCI, PCI_CAP_ID, PCI_COMMAND, PCI_EXP, PCI_MSIX } from '../devices/pci/pci_regs.js';
import type { IommufdCtx } from './context.js';
import {
  deviceAttach, deviceBind, deviceDetach, deviceReplace, deviceUnbind, NO_PASID, type Device,
} from './device.js';
import type { Emulator } from './emulator.js';
import { VfioPciConfig, type VfioPciConfigHost } from './vfio_pci_config.js';
import { pciFindCap, VfioPciIrqs } from './vfio_pci_intrs.js';
import { copyFromUser, copyToUser, eventfdCtxFdget, type EventFdCtx, type VfioCaller } from './vfio_file.js';
import { PAGE_SIZE, type UserMemory } from './usermem.js';

const PS = BigInt(PAGE_SIZE);
const U32_MAX = 0xffffffff;

/** The config state pci_save_state keeps: the header and the PCIe control registers. */
interface SavedState {
  readonly header: number[];
  readonly pcie: { devctl: number; devctl2: number } | null;
}

/** Capability chain of a GET_*_INFO reply (vfio_info_cap_add / vfio_info_cap_shift). */
export class InfoCaps {
  private buf = new Uint8Array(0);
  private last = -1;
  get size(): number {
    return this.buf.length;
  }
  /** Append a capability: its bytes start with the 8-byte header (id, version, next). */
  add(id: number, version: number, body: Uint8Array = new Uint8Array(0)): void {
    const size = Math.ceil((8 + body.length) / 8) * 8;
    const at = this.buf.length;
    const b = new Uint8Array(at + size);
    b.set(this.buf);
    const dv = new DataView(b.buffer);
    dv.setUint16(at, id, true);
    dv.setUint16(at + 2, version, true);
    b.set(body, at + 8);
    if (this.last >= 0) dv.setUint32(this.last + 4, at, true);
    this.buf = b;
    this.last = at;
  }
  /** The chain with `next` offsets relative to the start of the reply (`offset` = the info struct's size). */
  shifted(offset: number): Uint8Array {
    const b = this.buf.slice();
    const dv = new DataView(b.buffer);
    for (let at = 0; ;) {
      const next = dv.getUint32(at + 4, true);
      if (!next) break;
      dv.setUint32(at + 4, next + offset, true);
      at = next;
    }
    return b;
  }
}

export class VfioPciDevice implements VfioPciConfigHost {
  /** /dev/vfio/devices/vfio<index>; set when registered. */
  index = -1;
  /** The group it belongs to (set by the subsystem). */
  group: { readonly id: number } | null = null;
  /** Registration references (open files); 0 and unregistered = gone. */
  registered = true;
  // ---- vfio_device ----
  openCount = 0;
  cdevOpened = false;
  /** The DEVICE object while bound to an iommufd. */
  idev: Device | null = null;
  iommufdAttached = false;
  readonly pasids = new Set<number>();
  // ---- vfio_pci_core_device ----
  resetWorks = false;
  needsReset = true;
  config: VfioPciConfig | null = null;
  readonly irqs: VfioPciIrqs;
  private saved: SavedState | null = null;
  virqDisabled = false;
  msixBar = 0xff;
  msixOffset = 0;
  msixSize = 0;
  readonly barMmapSupported: boolean[] = [false, false, false, false, false, false];
  /** Runtime PM engaged through LOW_POWER_ENTRY, and its wake-up eventfd. */
  pmRuntimeEngaged = false;
  private pmWake: EventFdCtx | null = null;
  /** Power state from PM_CTRL writes (0 = D0). */
  powerState = 0;
  /** Bumped whenever BAR mappings must fault (memory disable, reset); trapped accesses re-check. */
  zapCount = 0;
  readonly dma: IommuDma;

  constructor(readonly emu: Emulator, readonly name: string, readonly pci: PciDeviceModel, readonly iommuDev: DriverDevice) {
    this.irqs = new VfioPciIrqs(pci, () => (this.msixBar === 0xff ? null : { bar: this.msixBar, offset: this.msixOffset }));
    this.dma = new IommuDma(() => {
      const idev = this.idev;
      if (!idev) return null;
      return { dev: this.iommuDev, domain: (pasid) => idev.attachment(pasid ?? NO_PASID)?.hwpt.domain ?? null };
    });
    pci.connect({ dma: this.dma, msi: (addr, data) => this.irqs.deliver(addr, data) });
  }

  get irqType(): number {
    return this.irqs.irqType;
  }
  get msiQmax(): number {
    return this.irqs.msiQmax;
  }

  // ---- iommufd physical ops (vfio/iommufd.c) ----------------------------------------------

  /** vfio_iommufd_physical_bind: the DEVICE object; returns its ID. */
  bindIommufd(ctx: IommufdCtx): number {
    this.idev = deviceBind(ctx, this.iommuDev);
    this.pasids.clear();
    return this.idev.id;
  }

  unbindIommufd(): void {
    const idev = this.idev;
    if (!idev) return;
    for (const p of [...this.pasids].sort((a, b) => a - b)) {
      deviceDetach(idev, p);
      this.pasids.delete(p);
    }
    if (this.iommufdAttached) {
      deviceDetach(idev, undefined);
      this.iommufdAttached = false;
    }
    deviceUnbind(idev);
    this.idev = null;
  }

  /** First attach is an attach, later ones a replace; returns the resulting pt_id. */
  attachIoas(ptId: number): number {
    const idev = this.idev;
    if (!idev) fail('EINVAL', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT: the device is not bound');
    const out = this.iommufdAttached ? deviceReplace(idev, undefined, ptId) : deviceAttach(idev, undefined, ptId);
    this.iommufdAttached = true;
    return out;
  }

  detachIoas(): void {
    if (!this.idev || !this.iommufdAttached) return;
    deviceDetach(this.idev, undefined);
    this.iommufdAttached = false;
  }

  pasidAttachIoas(pasid: number, ptId: number): number {
    const idev = this.idev;
    if (!idev) fail('EINVAL', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT: the device is not bound');
    if (this.pasids.has(pasid)) return deviceReplace(idev, pasid, ptId);
    // ida_alloc_range(pasid, pasid): PASIDs above INT_MAX cannot be allocated.
    if (pasid > 0x7fffffff) fail('ENOSPC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT: pasid above INT_MAX');
    this.pasids.add(pasid);
    try {
      return deviceAttach(idev, pasid, ptId);
    } catch (e) {
      this.pasids.delete(pasid);
      throw e;
    }
  }

  pasidDetachIoas(pasid: number): void {
    if (!this.idev || !this.pasids.has(pasid)) return;
    deviceDetach(this.idev, pasid);
    this.pasids.delete(pasid);
  }

  // ---- PCI core operations the vfio-pci driver uses --------------------------------------------

  private pcieCap(): number {
    return pciFindCap(this.pci, PCI_CAP_ID.EXP);
  }

  /** pci_save_state. */
  private saveState(): SavedState {
    const header: number[] = [];
    for (let i = 0; i < 16; i++) header.push(this.pci.configRead(4 * i, 4));
    const e = this.pcieCap();
    const pcie = e ? { devctl: this.pci.configRead(e + PCI_EXP.DEVCTL, 2), devctl2: this.pci.configRead(e + PCI_EXP.DEVCTL2, 2) } : null;
    return { header, pcie };
  }

  /** pci_restore_state: PCIe controls, then the header from the top down (BARs before the command register), then MSI/MSI-X. */
  private restoreState(s: SavedState): void {
    const e = this.pcieCap();
    if (e && s.pcie) {
      this.pci.configWrite(e + PCI_EXP.DEVCTL, 2, s.pcie.devctl & ~PCI_EXP.DEVCTL_BCR_FLR);
      this.pci.configWrite(e + PCI_EXP.DEVCTL2, 2, s.pcie.devctl2);
    }
    const put = (i: number) => {
      if (this.pci.configRead(4 * i, 4) !== s.header[i]) this.pci.configWrite(4 * i, 4, s.header[i]!);
    };
    for (let i = 15; i >= 10; i--) put(i);
    for (let i = 9; i >= 4; i--) put(i);
    for (let i = 3; i >= 0; i--) put(i);
    this.irqs.restoreHw();
  }

  /** The function-level reset itself (pcie_flr): set BCR_FLR in the device control register. */
  private flrLocked(): boolean {
    const e = this.pcieCap();
    if (!e || !(this.pci.configRead(e + PCI_EXP.DEVCAP, 4) & PCI_EXP.DEVCAP_FLR)) return false;
    this.pci.configWrite(e + PCI_EXP.DEVCTL, 2, this.pci.configRead(e + PCI_EXP.DEVCTL, 2) | PCI_EXP.DEVCTL_BCR_FLR);
    return true;
  }

  /** pci_try_reset_function: save, disable, reset, restore; ENOTTY when the function has no reset. */
  private tryReset(): 0 | 'ENOTTY' {
    const e = this.pcieCap();
    if (!e || !(this.pci.configRead(e + PCI_EXP.DEVCAP, 4) & PCI_EXP.DEVCAP_FLR)) return 'ENOTTY';
    const s = this.saveState();
    this.pci.configWrite(PCI.COMMAND, 2, PCI_COMMAND.INTX_DISABLE);
    this.flrLocked();
    this.restoreState(s);
    return 0;
  }

  private setCommand(fn: (cmd: number) => number): void {
    const cmd = this.pci.configRead(PCI.COMMAND, 2);
    const n = fn(cmd);
    if (n !== cmd) this.pci.configWrite(PCI.COMMAND, 2, n);
  }

  // ---- VfioPciConfigHost ------------------------------------------------------------------------

  zapBars(): void {
    this.zapCount++;
  }
  tryResetFunction(): void {
    this.tryReset();
  }
  setVirqDisabled(disabled: boolean): void {
    this.virqDisabled = disabled;
  }
  setPowerState(state: number): void {
    if (state >= 3) this.zapBars();
    this.powerState = state;
  }

  // ---- open / close (vfio_pci_core_enable / _disable) -----------------------------------------

  openDevice(): void {
    this.setCommand((c) => c & ~PCI_COMMAND.MASTER);
    // pci_enable_device: memory decode for the memory BARs.
    this.setCommand((c) => c | PCI_COMMAND.MEMORY);
    this.resetWorks = this.tryReset() === 0;
    this.saved = this.saveState();
    // INTx masking works on these functions (PCI 2.3): start with INTx enabled.
    this.setCommand((c) => c & ~PCI_COMMAND.INTX_DISABLE);
    this.emu.allocPoint(); // vconfig and the map
    this.config = new VfioPciConfig(this);
    const m = pciFindCap(this.pci, PCI_CAP_ID.MSIX);
    if (m) {
      const flags = this.pci.configRead(m + PCI_MSIX.FLAGS, 2);
      const table = this.pci.configRead(m + PCI_MSIX.TABLE, 4);
      this.msixBar = table & PCI_MSIX.TABLE_BIR;
      this.msixOffset = (table & PCI_MSIX.TABLE_OFFSET) >>> 0;
      this.msixSize = ((flags & PCI_MSIX.FLAGS_QSIZE) + 1) * PCI_MSIX.ENTRY_SIZE;
    } else {
      this.msixBar = 0xff;
    }
    // vfio_pci_probe_mmaps: memory BARs of at least a page.
    for (let i = 0; i < 6; i++) {
      const b = this.pci.bars[i];
      this.barMmapSupported[i] = !!b && b.size >= PAGE_SIZE;
    }
  }

  closeDevice(): void {
    this.pmExit();
    this.powerState = 0;
    this.setCommand((c) => c & ~PCI_COMMAND.MASTER);
    try {
      this.irqs.setIrqs(null, VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_TRIGGER, this.irqs.irqType, 0, 0, null);
    } catch (e) {
      if (!isErrno(e)) throw e;
    }
    this.virqDisabled = false;
    this.config = null;
    this.needsReset = true;
    if (this.saved) {
      this.pci.configWrite(PCI.COMMAND, 2, PCI_COMMAND.INTX_DISABLE);
      if (this.resetWorks && this.flrLocked()) this.needsReset = false;
      this.restoreState(this.saved);
      this.saved = null;
    }
    this.setCommand((c) => c & ~PCI_COMMAND.MASTER);
    this.irqs.releaseSingle();
  }

  // ---- device ioctls -----------------------------------------------------------------------------

  /** The runtime-PM wrapper around every access: a wake-up eventfd fires and exits low power. */
  pmRuntimeGet(): void {
    if (this.pmRuntimeEngaged && this.pmWake) {
      this.pmWake.signal();
      this.pmExit();
    }
  }

  private pmExit(): void {
    if (!this.pmRuntimeEngaged) return;
    this.pmRuntimeEngaged = false;
    this.pmWake?.put();
    this.pmWake = null;
  }

  /** vfio_pci_core_ioctl (GET_INFO, GET_IRQ_INFO, hot reset, RESET, SET_IRQS; ENOTTY otherwise). */
  ioctl(request: number, arg: bigint, caller: VfioCaller): number {
    const mem = caller.mem;
    switch (request >>> 0) {
      case VFIO_REQ.DEVICE_GET_INFO: return this.getInfo(mem, arg);
      case VFIO_REQ.DEVICE_GET_IRQ_INFO: return this.getIrqInfo(mem, arg);
      case VFIO_REQ.DEVICE_GET_PCI_HOT_RESET_INFO: return this.hotResetInfo(mem, arg);
      case VFIO_REQ.DEVICE_PCI_HOT_RESET: return this.hotReset(mem, arg);
      case VFIO_REQ.DEVICE_RESET: return this.reset();
      case VFIO_REQ.DEVICE_SET_IRQS: return this.setIrqs(caller, arg);
      default: fail('ENOTTY', 'not a vfio-pci device ioctl');
    }
  }

  private getInfo(mem: UserMemory, arg: bigint): number {
    const minsz = vfioMinsz('VFIO_DEVICE_GET_INFO');
    const info = decode(vfio_device_info, padTo(copyFromUser(this.emu, mem, arg, minsz), 24));
    if (info.argsz < minsz) fail('EINVAL', 'VFIO_DEVICE_GET_INFO: argsz below the minimum');
    const n = Math.min(info.argsz, 24);
    info.flags = VFIO_DEVICE_FLAGS.PCI | (this.resetWorks ? VFIO_DEVICE_FLAGS.RESET : 0);
    info.num_regions = VFIO_PCI.NUM_REGIONS;
    info.num_irqs = VFIO_PCI.NUM_IRQS;
    // No zPCI (not s390) and no AtomicOps completer capability: no capability chain.
    info.cap_offset = 0;
    info.pad = 0;
    copyToUser(this.emu, mem, arg, encode(vfio_device_info, info).subarray(0, n));
    return 0;
  }

  /** vfio_get_region_info + vfio_pci_ioctl_get_region_info. */
  getRegionInfo(mem: UserMemory, arg: bigint): number {
    const minsz = vfioMinsz('VFIO_DEVICE_GET_REGION_INFO');
    const raw = copyFromUser(this.emu, mem, arg, minsz);
    const info = decode(vfio_region_info, raw);
    if (info.argsz < minsz) fail('EINVAL', 'VFIO_DEVICE_GET_REGION_INFO: argsz below the minimum');
    const caps = new InfoCaps();
    const index = info.index;
    if (index === VFIO_PCI.CONFIG_REGION_INDEX) {
      info.offset = vfioRegionOffset(index);
      info.size = BigInt(this.pci.cfgSize);
      info.flags = VFIO_REGION_INFO_FLAG.READ | VFIO_REGION_INFO_FLAG.WRITE;
    } else if (index <= VFIO_PCI.BAR5_REGION_INDEX) {
      info.offset = vfioRegionOffset(index);
      const bar = this.pci.bars[index];
      info.size = BigInt(bar?.size ?? 0);
      if (!bar) {
        info.flags = 0;
      } else {
        info.flags = VFIO_REGION_INFO_FLAG.READ | VFIO_REGION_INFO_FLAG.WRITE;
        if (this.barMmapSupported[index]) {
          info.flags |= VFIO_REGION_INFO_FLAG.MMAP;
          if (index === this.msixBar) caps.add(VFIO_REGION_INFO_CAP.MSIX_MAPPABLE, 1);
        }
      }
    } else if (index === VFIO_PCI.ROM_REGION_INDEX) {
      // No expansion ROM.
      info.offset = vfioRegionOffset(index);
      info.flags = 0;
      info.size = 0n;
    } else {
      // No VGA and no device-specific regions.
      fail('EINVAL', 'VFIO_DEVICE_GET_REGION_INFO: no such region index');
    }
    if (caps.size) {
      info.flags |= VFIO_REGION_INFO_FLAG.CAPS;
      if (info.argsz < minsz + caps.size) {
        info.argsz = minsz + caps.size;
        info.cap_offset = 0;
      } else {
        copyToUser(this.emu, mem, arg + BigInt(minsz), caps.shifted(minsz));
        info.cap_offset = minsz;
      }
    }
    copyToUser(this.emu, mem, arg, encodeInto(vfio_region_info, info, raw.slice()));
    return 0;
  }

  private getIrqInfo(mem: UserMemory, arg: bigint): number {
    const minsz = vfioMinsz('VFIO_DEVICE_GET_IRQ_INFO');
    const info = decode(vfio_irq_info, copyFromUser(this.emu, mem, arg, minsz));
    if (info.argsz < minsz || info.index >= VFIO_PCI.NUM_IRQS) fail('EINVAL', 'VFIO_DEVICE_GET_IRQ_INFO: argsz below the minimum or no such IRQ index');
    info.flags = VFIO_IRQ_INFO.EVENTFD;
    info.count = this.irqs.count(info.index);
    if (info.index === VFIO_PCI.INTX_IRQ_INDEX) info.flags |= VFIO_IRQ_INFO.MASKABLE | VFIO_IRQ_INFO.AUTOMASKED;
    // x86 with interrupt remapping allocates MSI-X vectors dynamically: MSI-X can grow.
    else if (info.index !== VFIO_PCI.MSIX_IRQ_INDEX) info.flags |= VFIO_IRQ_INFO.NORESIZE;
    copyToUser(this.emu, mem, arg, encode(vfio_irq_info, info));
    return 0;
  }

  /** The emulated machine has no bridges: no slot or bus reset is ever possible. */
  private hotResetInfo(mem: UserMemory, arg: bigint): number {
    const minsz = vfioMinsz('VFIO_DEVICE_GET_PCI_HOT_RESET_INFO');
    const hdr = decode(vfio_pci_hot_reset_info, copyFromUser(this.emu, mem, arg, minsz));
    if (hdr.argsz < minsz) fail('EINVAL', 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: argsz below the minimum');
    fail('ENODEV', 'no slot or bus reset on the root bus');
  }

  private hotReset(mem: UserMemory, arg: bigint): number {
    const b = copyFromUser(this.emu, mem, arg, 12);
    const dv = new DataView(b.buffer, b.byteOffset, 12);
    const argsz = dv.getUint32(0, true);
    const flags = dv.getUint32(4, true);
    const count = dv.getUint32(8, true);
    if (argsz < 12 || flags) fail('EINVAL', 'VFIO_DEVICE_PCI_HOT_RESET: argsz below the minimum or flags not 0');
    // A zero-length array is only for cdev-opened devices.
    if (!!count === this.cdevOpened) fail('EINVAL', 'VFIO_DEVICE_PCI_HOT_RESET: an empty group list is for cdev-opened devices only');
    fail('ENODEV', 'no slot or bus reset on the root bus');
  }

  private reset(): number {
    if (!this.resetWorks) fail('EINVAL', 'VFIO_DEVICE_RESET: the device has no working reset');
    this.zapBars();
    this.powerState = 0;
    const r = this.tryReset();
    if (r) fail(r);
    return 0;
  }

  private setIrqs(caller: VfioCaller, arg: bigint): number {
    const minsz = vfioMinsz('VFIO_DEVICE_SET_IRQS');
    const hdr = decode(vfio_irq_set, copyFromUser(this.emu, caller.mem, arg, minsz));
    const max = this.irqs.count(hdr.index);
    // vfio_set_irqs_validate_and_prepare
    if (hdr.argsz < minsz || hdr.index >= VFIO_PCI.NUM_IRQS || hdr.count >= U32_MAX - hdr.start ||
      hdr.flags & ~(VFIO_IRQ_SET.DATA_TYPE_MASK | VFIO_IRQ_SET.ACTION_TYPE_MASK)) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: argsz, index, count or flags invalid');
    if (hdr.start >= max || hdr.start + hdr.count > max) fail('EINVAL', `VFIO_DEVICE_SET_IRQS: start + count beyond the index's vectors`);
    let size: number;
    switch (hdr.flags & VFIO_IRQ_SET.DATA_TYPE_MASK) {
      case VFIO_IRQ_SET.DATA_NONE: size = 0; break;
      case VFIO_IRQ_SET.DATA_BOOL: size = 1; break;
      case VFIO_IRQ_SET.DATA_EVENTFD: size = 4; break;
      default: fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: not exactly one data type');
    }
    let data: Uint8Array | null = null;
    if (size) {
      if (hdr.argsz - minsz < hdr.count * size) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: argsz too small for count entries');
      this.emu.allocPoint();
      data = copyFromUser(this.emu, caller.mem, arg + BigInt(VFIO_IRQ_SET_DATA_OFFSET), hdr.count * size);
    }
    return this.irqs.setIrqs(caller, hdr.flags, hdr.index, hdr.start, hdr.count, data);
  }

  /** VFIO_DEVICE_FEATURE (vfio_ioctl_device_feature, then vfio_pci_core_ioctl_feature). */
  feature(caller: VfioCaller, arg: bigint): number {
    const F = VFIO_DEVICE_FEATURE;
    const minsz = vfioMinsz('VFIO_DEVICE_FEATURE');
    const hdr = decode(vfio_device_feature, copyFromUser(this.emu, caller.mem, arg, minsz));
    if (hdr.argsz < minsz) fail('EINVAL', 'VFIO_DEVICE_FEATURE: argsz below the minimum');
    if (hdr.flags & ~(F.MASK | F.SET | F.GET | F.PROBE)) fail('EINVAL', 'VFIO_DEVICE_FEATURE: unknown flags');
    if (!(hdr.flags & F.PROBE) && hdr.flags & F.SET && hdr.flags & F.GET) fail('EINVAL', 'VFIO_DEVICE_FEATURE: both SET and GET without PROBE');
    const argsz = hdr.argsz - minsz;
    const data = arg + BigInt(VFIO_FEATURE_DATA_OFFSET);
    switch (hdr.flags & F.MASK) {
      case F.LOW_POWER_ENTRY:
        if (checkFeature(hdr.flags, argsz, F.SET, 0) !== 1) return 0;
        return this.pmEntry(null);
      case F.LOW_POWER_ENTRY_WITH_WAKEUP: {
        if (checkFeature(hdr.flags, argsz, F.SET, 8) !== 1) return 0;
        const e = decode(vfio_device_low_power_entry_with_wakeup, copyFromUser(this.emu, caller.mem, data, 8));
        if (e.wakeup_eventfd < 0) fail('EINVAL', 'VFIO_DEVICE_FEATURE: wakeup_eventfd < 0');
        const t = eventfdCtxFdget(caller, e.wakeup_eventfd);
        try {
          return this.pmEntry(t);
        } catch (err) {
          t.put();
          throw err;
        }
      }
      case F.LOW_POWER_EXIT:
        if (checkFeature(hdr.flags, argsz, F.SET, 0) !== 1) return 0;
        this.pmExit();
        return 0;
      // Migration and DMA logging need driver ops plain vfio-pci has not; the VF token needs a PF;
      // DMA_BUF export is not modelled; zPCI exists on s390 only.
      default:
        fail('ENOTTY', 'VFIO_DEVICE_FEATURE: feature not supported');
    }
  }

  private pmEntry(wake: EventFdCtx | null): number {
    this.zapBars();
    if (this.pmRuntimeEngaged) fail('EINVAL', 'VFIO_DEVICE_FEATURE: low-power entry while already in low power');
    this.pmRuntimeEngaged = true;
    this.pmWake = wake;
    return 0;
  }

  // ---- read / write / mmap ------------------------------------------------------------------

  /** BAR access is refused while memory decode is off in the virtual command register or in low power. */
  memoryEnabled(): boolean {
    const v = this.config?.vconfig;
    return !!v && this.powerState < 3 && !!((v[PCI.COMMAND]! | (v[PCI.COMMAND + 1]! << 8)) & PCI_COMMAND.MEMORY);
  }

  /** vfio_pci_rw: `count` bytes at file position `pos` between user memory `buf` and the region. */
  rw(mem: UserMemory, buf: bigint, count: number, pos: bigint, iswrite: boolean): number {
    if (!count) return 0;
    const index = Number(pos >> VFIO_PCI.OFFSET_SHIFT);
    if (index >= VFIO_PCI.NUM_REGIONS) fail('EINVAL', 'vfio-pci read/write: no such region');
    this.pmRuntimeGet();
    const off = Number(pos & VFIO_PCI_OFFSET_MASK);
    if (index === VFIO_PCI.CONFIG_REGION_INDEX) return this.configRw(mem, buf, count, off, iswrite);
    if (index === VFIO_PCI.ROM_REGION_INDEX) {
      if (iswrite) fail('EINVAL', 'vfio-pci read/write: the ROM is read-only');
      fail('EINVAL', 'no expansion ROM');
    }
    if (index <= VFIO_PCI.BAR5_REGION_INDEX) return this.barRw(mem, buf, count, index, off, iswrite);
    fail('EINVAL', 'no VGA region');
  }

  private configRw(mem: UserMemory, buf: bigint, count: number, pos: number, iswrite: boolean): number {
    const cfg = this.config!;
    let done = 0;
    while (count) {
      const at = buf + BigInt(done);
      const n = cfg.rwSingle(pos, count, iswrite, {
        get: (k) => le(copyFromUser(this.emu, mem, at, k)),
        put: (k, v) => copyToUser(this.emu, mem, at, toLe(v, k)),
      });
      count -= n;
      done += n;
      pos += n;
    }
    return done;
  }

  /** vfio_pci_bar_rw: naturally aligned pieces up to 8 bytes; the MSI-X table reads as ones, writes are dropped. */
  private barRw(mem: UserMemory, buf: bigint, count: number, bar: number, pos: number, iswrite: boolean): number {
    const b = this.pci.bars[bar];
    if (!b || !b.addr) fail('EINVAL', 'vfio-pci read/write: the BAR is not implemented');
    if (pos >= b.size) fail('EINVAL', 'vfio-pci read/write: offset beyond the BAR');
    count = Math.min(count, b.size - pos);
    const xStart = bar === this.msixBar ? this.msixOffset : 0;
    const xEnd = bar === this.msixBar ? this.msixOffset + this.msixSize : 0;
    let done = 0;
    while (count) {
      const fillable = pos < xStart ? Math.min(count, xStart - pos) : pos >= xEnd ? count : 0;
      const at = buf + BigInt(done);
      let n: number;
      if (fillable) {
        n = fillable >= 8 && !(pos % 8) ? 8 : fillable >= 4 && !(pos % 4) ? 4 : fillable >= 2 && !(pos % 2) ? 2 : 1;
        if (!this.memoryEnabled()) fail('EIO', 'vfio-pci read/write: memory decoding is disabled');
        if (iswrite) {
          const v = copyFromUser(this.emu, mem, at, n);
          this.pci.mmioWrite(bar, pos, n as AccessSize, leBig(v));
        } else {
          copyToUser(this.emu, mem, at, toLeBig(this.pci.mmioRead(bar, pos, n as AccessSize), n));
        }
      } else {
        n = Math.min(count, xEnd - pos);
        if (!iswrite) copyToUser(this.emu, mem, at, new Uint8Array(n).fill(0xff));
      }
      count -= n;
      done += n;
      pos += n;
    }
    return done;
  }

  /** vfio_pci_core_mmap's checks: returns the BAR and the offset inside it. */
  mmapCheck(offset: bigint, length: bigint, shared: boolean): { bar: number; start: number; length: number } {
    if (offset % PS || offset < 0n) fail('EINVAL', 'vfio-pci mmap: offset not page aligned');
    const pgoff = offset / PS;
    const index = Number(pgoff >> (VFIO_PCI.OFFSET_SHIFT - 12n));
    if (index >= VFIO_PCI.NUM_REGIONS) fail('EINVAL', 'vfio-pci mmap: no such region');
    if (length < 0n) fail('EINVAL', 'vfio-pci mmap: negative length');
    if (!shared) fail('EINVAL', 'vfio-pci mmap: only MAP_SHARED mappings');
    if (index >= VFIO_PCI.ROM_REGION_INDEX) fail('EINVAL', 'vfio-pci mmap: only BARs can be mapped');
    if (!this.barMmapSupported[index]) fail('EINVAL', 'vfio-pci mmap: this BAR cannot be mapped');
    const bar = this.pci.bars[index]!;
    const physLen = BigInt(Math.ceil(bar.size / PAGE_SIZE) * PAGE_SIZE);
    const reqStart = (pgoff & ((1n << (VFIO_PCI.OFFSET_SHIFT - 12n)) - 1n)) * PS;
    if (reqStart + length > physLen) fail('EINVAL', 'vfio-pci mmap: the mapping runs past the BAR');
    return { bar: index, start: Number(reqStart), length: Number(length) };
  }

  /**
   * One load or store through a BAR mapping (the access a trapped MOV makes):
   * it faults (EIO, SIGBUS for the program) while memory is disabled or in
   * low power, as an access to a zapped mapping does.
   */
  mmioAccess(bar: number, off: number, size: AccessSize, write: boolean, value = 0n): bigint {
    if (!this.memoryEnabled() || this.pmRuntimeEngaged) fail('EIO', 'BAR access while memory is disabled');
    if (write) {
      this.pci.mmioWrite(bar, off, size, value);
      return 0n;
    }
    return this.pci.mmioRead(bar, off, size);
  }

  // ---- GET_DEVICE_FD name matching and VF tokens ----------------------------------------------------

  /** vfio_pci_core_match: 0 = not this device, 1 = match; errors for a bad option list. */
  match(buf: string): number {
    const name = this.name;
    if (!buf.startsWith(name)) return 0;
    let vfToken = false;
    let uuid: Uint8Array | null = null;
    if (buf.length > name.length) {
      let rest = buf.slice(name.length);
      if (rest[0] !== ' ') return 0;
      while (rest.length) {
        if (rest[0] === ' ') {
          rest = rest.slice(1);
          continue;
        }
        if (!vfToken && rest.startsWith('vf_token=')) {
          rest = rest.slice('vf_token='.length);
          if (rest.length < UUID_STRING_LEN) fail('EINVAL', 'VFIO_GROUP_GET_DEVICE_FD: vf_token is not a UUID');
          uuid = parseUuid(rest.slice(0, UUID_STRING_LEN));
          vfToken = true;
          rest = rest.slice(UUID_STRING_LEN);
        } else {
          fail('EINVAL', 'VFIO_GROUP_GET_DEVICE_FD: unknown option after the device name');
        }
      }
    }
    this.matchTokenUuid(uuid);
    return 1;
  }

  /** No SR-IOV is modelled: every function is neither PF nor VF, so a token is refused. */
  matchTokenUuid(uuid: Uint8Array | null): void {
    if (uuid) fail('EINVAL', 'VF token given for a function that is neither PF nor VF');
  }
}

/** vfio_check_feature: 1 = do it, 0 = PROBE answered; errors throw. */
function checkFeature(flags: number, argsz: number, supported: number, minsz: number): number {
  const F = VFIO_DEVICE_FEATURE;
  if (flags & (F.GET | F.SET) & ~supported) fail('EINVAL', 'VFIO_DEVICE_FEATURE: GET/SET not supported by this feature');
  if (flags & F.PROBE) return 0;
  if (!(flags & (F.GET | F.SET))) fail('EINVAL', 'VFIO_DEVICE_FEATURE: neither GET nor SET');
  if (argsz < minsz) fail('EINVAL', `VFIO_DEVICE_FEATURE: argsz too small for the feature's data`);
  return 1;
}

/** uuid_parse: the 8-4-4-4-12 hex form; EINVAL otherwise. */
export function parseUuid(s: string): Uint8Array {
  if (!/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/.test(s)) fail('EINVAL', 'not a UUID');
  return Uint8Array.from(Buffer.from(s.slice(0, 36).replace(/-/g, ''), 'hex'));
}

function padTo(b: Uint8Array, n: number): Uint8Array {
  if (b.length >= n) return b;
  const out = new Uint8Array(n);
  out.set(b);
  return out;
}
function le(b: Uint8Array): number {
  let v = 0;
  for (let i = b.length - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}
function toLe(v: number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    b[i] = v & 0xff;
    v = Math.floor(v / 256);
  }
  return b;
}
function leBig(b: Uint8Array): bigint {
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
  return v;
}
function toLeBig(v: bigint, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return b;
}

