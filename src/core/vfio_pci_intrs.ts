// vfio-pci interrupts (vfio_pci_intrs.c): VFIO_DEVICE_SET_IRQS for MSI, MSI-X,
// ERR and REQ, with eventfds as triggers; and the host side of MSI/MSI-X --
// what the kernel's PCI core writes into the function's MSI capability and
// MSI-X table so that its interrupts reach the host, where the vector's
// eventfd is signalled. INTx is not modelled (the functions have no pin).
import { fail } from '../uapi/errno.js';
import { VFIO_IRQ_SET, VFIO_PCI } from '../uapi/vfio.js';
import type { PciDeviceModel } from '../devices/device.js';
import { PCI, PCI_CAP_ID, PCI_COMMAND, PCI_MSI, PCI_MSIX } from '../devices/pci/pci_regs.js';
import { eventfdCtxFdget, type EventFdCtx, type VfioCaller } from './vfio_file.js';

/** The host's interrupt address (x86 local APIC window) and a data range per device. */
export const HOST_MSI_ADDR = 0xfee00000n;
/**
 * The message data of vector 0 (16-bit, MSI takes the vector in the low bits).
 * Messages reach the host through the device's own port, so the mapping back
 * to a vector is per device and every device can use the same base.
 */
const VECTOR_BASE = 0x4000;

const NONE = VFIO_PCI.NUM_IRQS;

/** Find a standard capability by walking the function's list (pci_find_capability). */
export function pciFindCap(pci: PciDeviceModel, id: number): number {
  let pos = pci.configRead(PCI.CAPABILITY_LIST, 1) & ~3;
  for (let n = 0; pos && n < 48; n++) {
    if (pci.configRead(pos, 1) === id) return pos;
    pos = pci.configRead(pos + 1, 1) & ~3;
  }
  return 0;
}

export class VfioPciIrqs {
  /** VFIO_PCI_*_IRQ_INDEX of the enabled type, NONE (NUM_IRQS) when none. */
  irqType: number = NONE;
  /** log2 of the MSI vectors the host allocated (what the user's view of the MSI queue size says). */
  msiQmax = 0;
  /** Triggers by vector (MSI/MSI-X). */
  private readonly ctx = new Map<number, EventFdCtx>();
  /** Vectors allocated (pci_alloc_irq_vectors). */
  private nvec = 0;
  errTrigger: EventFdCtx | null = null;
  reqTrigger: EventFdCtx | null = null;
  private readonly vectorBase: number;

  constructor(private readonly pci: PciDeviceModel, private readonly msixInfo: () => { bar: number; offset: number } | null) {
    this.vectorBase = VECTOR_BASE;
  }

  /** vfio_pci_get_irq_count. */
  count(index: number): number {
    const pci = this.pci;
    switch (index) {
      case VFIO_PCI.INTX_IRQ_INDEX:
        return 0;
      case VFIO_PCI.MSI_IRQ_INDEX: {
        const pos = pciFindCap(pci, PCI_CAP_ID.MSI);
        return pos ? 1 << ((pci.configRead(pos + PCI_MSI.FLAGS, 2) & PCI_MSI.FLAGS_QMASK) >> 1) : 0;
      }
      case VFIO_PCI.MSIX_IRQ_INDEX: {
        const pos = pciFindCap(pci, PCI_CAP_ID.MSIX);
        return pos ? (pci.configRead(pos + PCI_MSIX.FLAGS, 2) & PCI_MSIX.FLAGS_QSIZE) + 1 : 0;
      }
      case VFIO_PCI.ERR_IRQ_INDEX:
      case VFIO_PCI.REQ_IRQ_INDEX:
        return 1;
      default:
        return 0;
    }
  }

  /** An MSI write reached the host: signal the vector's eventfd. */
  deliver(addr: bigint, data: number): void {
    if (addr < HOST_MSI_ADDR || addr > HOST_MSI_ADDR + 0xfffffn) return;
    this.ctx.get(data - this.vectorBase)?.signal();
  }

  /** vfio_pci_set_irqs_ioctl (validation already done); `data` is the payload (fds or bools). */
  setIrqs(caller: VfioCaller | null, flags: number, index: number, start: number, count: number, data: Uint8Array | null): number {
    const action = flags & VFIO_IRQ_SET.ACTION_TYPE_MASK;
    switch (index) {
      case VFIO_PCI.MSI_IRQ_INDEX:
      case VFIO_PCI.MSIX_IRQ_INDEX:
        // MASK/UNMASK have no MSI support in vfio-pci.
        if (action === VFIO_IRQ_SET.ACTION_TRIGGER) return this.msiTrigger(caller, index, start, count, flags, data);
        break;
      case VFIO_PCI.ERR_IRQ_INDEX:
        if (action === VFIO_IRQ_SET.ACTION_TRIGGER) return this.singleTrigger(caller, 'errTrigger', start, count, flags, data);
        break;
      case VFIO_PCI.REQ_IRQ_INDEX:
        if (action === VFIO_IRQ_SET.ACTION_TRIGGER) return this.singleTrigger(caller, 'reqTrigger', start, count, flags, data);
        break;
    }
    fail('ENOTTY', 'VFIO_DEVICE_SET_IRQS: no such IRQ index');
  }

  private msiTrigger(caller: VfioCaller | null, index: number, start: number, count: number, flags: number, data: Uint8Array | null): number {
    const msix = index === VFIO_PCI.MSIX_IRQ_INDEX;
    if (this.irqType === index && !count && flags & VFIO_IRQ_SET.DATA_NONE) {
      this.disable(msix);
      return 0;
    }
    if (!(this.irqType === index || this.irqType === NONE)) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: another interrupt type is enabled');
    if (flags & VFIO_IRQ_SET.DATA_EVENTFD) {
      const fds = data ? new DataView(data.buffer, data.byteOffset, data.byteLength) : null;
      if (this.irqType === index) {
        this.setBlock(caller, start, count, fds, msix);
        return 0;
      }
      const r = this.enable(start + count, msix);
      if (r) return r;
      try {
        this.setBlock(caller, start, count, fds, msix);
      } catch (e) {
        this.disable(msix);
        throw e;
      }
      return 0;
    }
    if (this.irqType !== index) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: this interrupt type is not enabled');
    // DATA_NONE / DATA_BOOL on the active index: loopback triggering.
    for (let i = start; i < start + count; i++) {
      const t = this.ctx.get(i);
      if (!t) continue;
      if (flags & VFIO_IRQ_SET.DATA_NONE) t.signal();
      else if (flags & VFIO_IRQ_SET.DATA_BOOL && data![i - start]) t.signal();
    }
    return 0;
  }

  /** vfio_msi_enable: allocate `nvec` vectors; returns 0, or the (smaller) number available. */
  private enable(nvec: number, msix: boolean): number {
    if (this.irqType !== NONE) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: another interrupt type is enabled');
    const avail = this.count(msix ? VFIO_PCI.MSIX_IRQ_INDEX : VFIO_PCI.MSI_IRQ_INDEX);
    if (avail < nvec) return avail;
    this.withMemory(() => (msix ? this.hwMsixEnable() : this.hwMsiEnable(nvec)));
    this.nvec = nvec;
    this.irqType = msix ? VFIO_PCI.MSIX_IRQ_INDEX : VFIO_PCI.MSI_IRQ_INDEX;
    // The user-visible MSI queue size: log2 of the vectors allocated.
    if (!msix) this.msiQmax = Math.ceil(Math.log2(nvec));
    return 0;
  }

  /** vfio_msi_set_block: on failure every vector of the block set so far is released. */
  private setBlock(caller: VfioCaller | null, start: number, count: number, fds: DataView | null, msix: boolean): void {
    let j = start;
    try {
      for (let i = 0; i < count; i++, j++) this.setVectorSignal(caller, j, fds ? fds.getInt32(4 * i, true) : -1, msix);
    } catch (e) {
      for (let i = start; i < j; i++) this.setVectorSignal(caller, i, -1, msix);
      throw e;
    }
  }

  /** Bind (fd >= 0) or unbind (fd < 0) vector `v`'s trigger. */
  private setVectorSignal(caller: VfioCaller | null, v: number, fd: number, msix: boolean): void {
    const old = this.ctx.get(v);
    if (old) {
      if (msix) this.withMemory(() => this.msixEntryMask(v, true));
      old.put();
      this.ctx.delete(v);
    }
    if (fd < 0) return;
    // MSI vectors beyond those allocated do not exist; MSI-X ones are allocated on demand (x86 dynamic MSI-X).
    if (v >= this.nvec && !msix) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: MSI vector beyond those enabled');
    if (!caller) fail('EBADF', 'VFIO_DEVICE_SET_IRQS: no caller to resolve the eventfd');
    const trigger = eventfdCtxFdget(caller, fd);
    // The message is (re)written before the vector is unmasked.
    if (msix) this.withMemory(() => this.msixEntryProgram(v));
    this.ctx.set(v, trigger);
  }

  /** vfio_msi_disable: release every trigger, free the vectors. */
  disable(msix: boolean): void {
    for (const v of [...this.ctx.keys()]) this.setVectorSignal(null, v, -1, msix);
    this.withMemory(() => (msix ? this.hwMsixDisable() : this.hwMsiDisable()));
    this.nvec = 0;
    this.irqType = NONE;
  }

  /** ERR / REQ (vfio_pci_set_ctx_trigger_single). */
  private singleTrigger(caller: VfioCaller | null, which: 'errTrigger' | 'reqTrigger', start: number, count: number,
    flags: number, data: Uint8Array | null): number {
    if (start !== 0 || count > 1) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: ERR/REQ have one vector (start 0, count 1)');
    const cur = this[which];
    if (flags & VFIO_IRQ_SET.DATA_NONE) {
      if (!cur) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: no eventfd set to trigger');
      if (count) {
        cur.signal();
        return 0;
      }
      cur.put();
      this[which] = null;
      return 0;
    }
    if (flags & VFIO_IRQ_SET.DATA_BOOL) {
      if (!count) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: count is 0');
      if (data![0]) cur?.signal();
      return 0;
    }
    if (flags & VFIO_IRQ_SET.DATA_EVENTFD) {
      if (!count) fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: count is 0');
      const fd = new DataView(data!.buffer, data!.byteOffset, 4).getInt32(0, true);
      if (fd === -1) {
        cur?.put();
        this[which] = null;
        return 0;
      }
      if (fd >= 0) {
        if (!caller) fail('EBADF', 'VFIO_DEVICE_SET_IRQS: no caller to resolve the eventfd');
        const t = eventfdCtxFdget(caller, fd);
        cur?.put();
        this[which] = t;
        return 0;
      }
    }
    fail('EINVAL', 'VFIO_DEVICE_SET_IRQS: bad data type');
  }

  /** Drop the ERR/REQ triggers (close_device). */
  releaseSingle(): void {
    this.errTrigger?.put();
    this.errTrigger = null;
    this.reqTrigger?.put();
    this.reqTrigger = null;
  }

  // ---- the host PCI core's side -----------------------------------------------------------

  /** vfio_pci_memory_lock_and_enable / unlock_and_restore: memory decode on while the table is touched. */
  private withMemory(fn: () => void): void {
    const cmd = this.pci.configRead(PCI.COMMAND, 2);
    if (!(cmd & PCI_COMMAND.MEMORY)) this.pci.configWrite(PCI.COMMAND, 2, cmd | PCI_COMMAND.MEMORY);
    try {
      fn();
    } finally {
      this.pci.configWrite(PCI.COMMAND, 2, cmd);
    }
  }

  /** MSI (or MSI-X) on: INTx is disabled in the command register (pci_intx_for_msi). */
  private intxForMsi(disable: boolean): void {
    const cmd = this.pci.configRead(PCI.COMMAND, 2);
    const want = disable ? cmd | PCI_COMMAND.INTX_DISABLE : cmd & ~PCI_COMMAND.INTX_DISABLE;
    if (want !== cmd) this.pci.configWrite(PCI.COMMAND, 2, want);
  }

  private hwMsiEnable(nvec: number): void {
    const pos = pciFindCap(this.pci, PCI_CAP_ID.MSI);
    const flags = this.pci.configRead(pos + PCI_MSI.FLAGS, 2);
    const is64 = !!(flags & PCI_MSI.FLAGS_64BIT);
    this.pci.configWrite(pos + PCI_MSI.ADDRESS_LO, 4, Number(HOST_MSI_ADDR));
    if (is64) this.pci.configWrite(pos + PCI_MSI.ADDRESS_HI, 4, 0);
    this.pci.configWrite(pos + (is64 ? PCI_MSI.DATA_64 : PCI_MSI.DATA_32), 2, this.vectorBase & 0xffff);
    const mme = Math.ceil(Math.log2(nvec));
    this.intxForMsi(true);
    this.pci.configWrite(pos + PCI_MSI.FLAGS, 2, (flags & ~PCI_MSI.FLAGS_QSIZE) | (mme << 4) | PCI_MSI.FLAGS_ENABLE);
  }

  private hwMsiDisable(): void {
    const pos = pciFindCap(this.pci, PCI_CAP_ID.MSI);
    if (!pos) return;
    const flags = this.pci.configRead(pos + PCI_MSI.FLAGS, 2);
    this.pci.configWrite(pos + PCI_MSI.FLAGS, 2, flags & ~(PCI_MSI.FLAGS_ENABLE | PCI_MSI.FLAGS_QSIZE));
    this.intxForMsi(false);
  }

  private msixCtl(set: number, clear: number): void {
    const pos = pciFindCap(this.pci, PCI_CAP_ID.MSIX);
    const ctl = this.pci.configRead(pos + PCI_MSIX.FLAGS, 2);
    this.pci.configWrite(pos + PCI_MSIX.FLAGS, 2, (ctl & ~clear) | set);
  }

  private hwMsixEnable(): void {
    // Enabled with the function masked while every entry is masked, then unmasked (msix_capability_init).
    this.msixCtl(PCI_MSIX.FLAGS_ENABLE | PCI_MSIX.FLAGS_MASKALL, 0);
    const total = this.count(VFIO_PCI.MSIX_IRQ_INDEX);
    for (let v = 0; v < total; v++) this.msixEntryMask(v, true);
    this.intxForMsi(true);
    this.msixCtl(0, PCI_MSIX.FLAGS_MASKALL);
  }

  private hwMsixDisable(): void {
    const total = this.count(VFIO_PCI.MSIX_IRQ_INDEX);
    for (let v = 0; v < total; v++) this.msixEntryMask(v, true);
    this.msixCtl(0, PCI_MSIX.FLAGS_ENABLE);
    this.intxForMsi(false);
  }

  private entryAt(v: number): { bar: number; off: number } {
    const info = this.msixInfo()!;
    return { bar: info.bar, off: info.offset + v * PCI_MSIX.ENTRY_SIZE };
  }

  private msixEntryProgram(v: number): void {
    const { bar, off } = this.entryAt(v);
    this.pci.mmioWrite(bar, off, 4, HOST_MSI_ADDR & 0xffffffffn);
    this.pci.mmioWrite(bar, off + 4, 4, HOST_MSI_ADDR >> 32n);
    this.pci.mmioWrite(bar, off + 8, 4, BigInt(this.vectorBase + v));
    this.pci.mmioWrite(bar, off + PCI_MSIX.ENTRY_VECTOR_CTRL, 4, 0n);
  }

  private msixEntryMask(v: number, masked: boolean): void {
    const { bar, off } = this.entryAt(v);
    this.pci.mmioWrite(bar, off + PCI_MSIX.ENTRY_VECTOR_CTRL, 4, masked ? 1n : 0n);
  }

  /** pci_restore_msi_state after a reset: the enabled type and the bound vectors' messages come back. */
  restoreHw(): void {
    if (this.irqType === NONE) return;
    const msix = this.irqType === VFIO_PCI.MSIX_IRQ_INDEX;
    this.withMemory(() => {
      if (msix) {
        this.hwMsixEnable();
        for (const v of this.ctx.keys()) this.msixEntryProgram(v);
      } else {
        this.hwMsiEnable(this.nvec);
      }
    });
  }
}
