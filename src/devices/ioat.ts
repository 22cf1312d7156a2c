// Intel I/OAT (Crystal Beach DMA) v3.3, as on Skylake-SP (8086:2021): one DMA
// channel that copies memory by walking a chain of 64-byte descriptors, all
// addressed by IOVA and translated by the IOMMU (spec 06 §11). Register
// offsets and bit values are the hardware's (drivers/dma/ioat/registers.h).
//
// The engine runs a doorbell's descriptors to the end synchronously, inside
// the DMACOUNT write: the channel status a driver then polls already says
// DONE (or HALTED after an error), which every driver's wait loop accepts.
import type { AccessSize } from './device.js';
import type { DmaResult } from './dma.js';
import { PciFunction, type BarAddrs } from './pci/function.js';
import { PCI_CLASS, PCI_EXP, PCI_VENDOR_ID_INTEL } from './pci/pci_regs.js';
import { RegisterFile, roReg, rwReg } from './regs.js';

export const IOAT_DEVICE_ID_SKX = 0x2021;
export const IOAT_VER_3_3 = 0x33;

export const IOAT = {
  CHANCNT: 0x00, XFERCAP: 0x01, GENCTRL: 0x02, INTRCTRL: 0x03, ATTNSTATUS: 0x04, CBVER: 0x08,
  INTRDELAY: 0x0c, CSSTATUS: 0x0e, DMACAPABILITY: 0x10,
  /** Channel 0's registers start here (each channel has 0x80 bytes). */
  CHANNEL: 0x80,
  // offsets inside a channel block
  CHANCTRL: 0x00, DMA_COMP: 0x02, CHANCMD: 0x04, DMACOUNT: 0x06, CHANSTS: 0x08, CHAINADDR: 0x10,
  CHANCMP: 0x18, CDAR: 0x20, CHANERR: 0x28, CHANERRMASK: 0x2c,
  /** Config space, outside every capability. */
  PCI_DMAUNCERRSTS: 0x148, PCI_CHANERR_INT: 0x180, PCI_CHANERRMASK_INT: 0x184,
} as const;

export const INTRCTRL = { MASTER_INT_EN: 0x01, INT_STATUS: 0x02, INT: 0x04, MSIX_VECTOR_CONTROL: 0x08 } as const;
export const CHANCTRL = {
  INT_REARM: 0x0001, ERR_COMPLETION_EN: 0x0004, ANY_ERR_ABORT_EN: 0x0008, ERR_INT_EN: 0x0010,
  DESCRIPTOR_ADDR_SNOOP_CONTROL: 0x0020, CHANNEL_IN_USE: 0x0100,
} as const;
export const CHANCMD = { START: 0x01, APPEND: 0x02, SUSPEND: 0x04, ABORT: 0x08, RESUME: 0x10, RESET: 0x20 } as const;
export const CHANSTS = { ACTIVE: 0, DONE: 1, SUSPENDED: 2, HALTED: 3, STATUS_MASK: 0x7n, ADDR_MASK: ~0x3fn } as const;
export const CHANERR = {
  SRC_ADDR_ERR: 0x1, DEST_ADDR_ERR: 0x2, NEXT_ADDR_ERR: 0x4, NEXT_DESC_ALIGN_ERR: 0x8, CHAIN_ADDR_VALUE_ERR: 0x10,
  CHANCMD_ERR: 0x20, READ_DATA_ERR: 0x100, WRITE_DATA_ERR: 0x200, CONTROL_ERR: 0x400, LENGTH_ERR: 0x800,
  COMPLETION_ADDR_ERR: 0x1000,
} as const;
/** Descriptor control bits (ioat_dma_descriptor.ctl). */
export const DESC_CTL = { INT_EN: 0x1, COMPL_WRITE: 0x8, NULL: 0x20, OP_SHIFT: 24 } as const;
export const IOAT_OP_COPY = 0x00;
export const IOAT_DESC_SIZE = 64;

/** BAR0 layout: registers, then the MSI-X table and PBA (as the real part places them). */
export const IOAT_BAR0_SIZE = 16 * 1024;
export const IOAT_MSIX_TABLE = 0x2000;
export const IOAT_MSIX_PBA = 0x3000;

/** A 64-byte descriptor as the engine reads it (tests and example drivers build them with this). */
export function ioatDescriptor(d: { size: number; ctl?: number; src: bigint; dst: bigint; next: bigint }): Uint8Array {
  const b = new Uint8Array(IOAT_DESC_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, d.size, true);
  dv.setUint32(4, d.ctl ?? 0, true);
  dv.setBigUint64(8, d.src, true);
  dv.setBigUint64(16, d.dst, true);
  dv.setBigUint64(24, d.next, true);
  return b;
}

export interface IoatOptions {
  /** log2 of the largest copy one descriptor may ask for (XFERCAP); spec 06 §11.4: 12..16 for the selftests. */
  readonly xfercap?: number;
  /** MSI-X vectors (the channel uses vector 0). */
  readonly msixVectors?: number;
}

const U64 = (1n << 64n) - 1n;

export class IoatDevice extends PciFunction {
  readonly model = 'ioat';
  readonly xfercap: number;
  private readonly regs: RegisterFile;
  // global registers
  private readonly genctrl = rwReg('GENCTRL', IOAT.GENCTRL, 1, { wmask: 0x01n });
  private readonly intrctrl = rwReg('INTRCTRL', IOAT.INTRCTRL, 1, { wmask: 0x09n });
  private readonly intrdelay = rwReg('INTRDELAY', IOAT.INTRDELAY, 2, { wmask: 0x3fffn });
  // channel 0
  private readonly chanctrl = rwReg('CHANCTRL', IOAT.CHANNEL + IOAT.CHANCTRL, 2, { wmask: 0xf33dn });
  private readonly chancmp = rwReg('CHANCMP', IOAT.CHANNEL + IOAT.CHANCMP, 8, { wmask: ~0x3fn & U64 });
  private readonly chanerrmask = rwReg('CHANERRMASK', IOAT.CHANNEL + IOAT.CHANERRMASK, 4);
  private state: number = CHANSTS.HALTED;
  /** Address of the last completed descriptor (CHANSTS bits 63:6). */
  private completed = 0n;
  private chainaddr = 0n;
  /** Descriptor the engine fetches next; null = start from CHAINADDR. */
  private nextDesc: bigint | null = null;
  private dmacount = 0;
  private processed = 0;
  private chanerr = 0;
  private cdar = 0n;
  /** What the engine has done since it was created (a reset does not clear it): descriptors completed, copies among them, bytes copied. */
  readonly stats = { descriptors: 0, copies: 0, bytes: 0 };

  constructor(barAddrs: BarAddrs, opts: IoatOptions = {}) {
    const msixVectors = opts.msixVectors ?? 1;
    super({
      vendorId: PCI_VENDOR_ID_INTEL, deviceId: IOAT_DEVICE_ID_SKX, revision: 0x04, classCode: PCI_CLASS.SYSTEM_OTHER << 8,
      subsystemVendorId: PCI_VENDOR_ID_INTEL, subsystemId: 0,
    }, {
      cfgSize: 4096,
      bars: [{ index: 0, size: IOAT_BAR0_SIZE, is64: true }],
      msix: { at: 0x80, vectors: msixVectors, bar: 0, table: IOAT_MSIX_TABLE, pba: IOAT_MSIX_PBA },
      pcie: { at: 0x90, type: PCI_EXP.TYPE_RC_END, flr: true },
      msi: { at: 0xd0, vectors: 1, is64: true },
    }, barAddrs);
    const xfercap = opts.xfercap ?? 14;
    if (!Number.isInteger(xfercap) || xfercap < 1 || xfercap > 31) throw new Error(`ioat: xfercap ${xfercap} must be 1..31`);
    this.xfercap = xfercap;
    // Device-specific config registers: CHANERR_INT mirrors CHANERR (write 1 to clear), DMAUNCERRSTS reads 0.
    this.cfg.w1c(IOAT.PCI_CHANERR_INT, 4, 0xffffffff);
    this.cfg.writable(IOAT.PCI_CHANERRMASK_INT, 4, 0xffffffff);
    const ch = IOAT.CHANNEL;
    this.regs = new RegisterFile([
      roReg('CHANCNT', IOAT.CHANCNT, 1, () => 1n),
      roReg('XFERCAP', IOAT.XFERCAP, 1, () => BigInt(this.xfercap)),
      this.genctrl,
      this.intrctrl,
      roReg('ATTNSTATUS', IOAT.ATTNSTATUS, 4, () => 0n),
      roReg('CBVER', IOAT.CBVER, 1, () => BigInt(IOAT_VER_3_3)),
      this.intrdelay,
      roReg('CSSTATUS', IOAT.CSSTATUS, 2, () => 0n),
      roReg('DMACAPABILITY', IOAT.DMACAPABILITY, 4, () => 0n),
      this.chanctrl,
      roReg('DMA_COMP', ch + IOAT.DMA_COMP, 2, () => 0x2n),
      { name: 'CHANCMD', off: ch + IOAT.CHANCMD, size: 1, read: () => 0n, write: (v) => this.command8(Number(v)) },
      {
        name: 'DMACOUNT', off: ch + IOAT.DMACOUNT, size: 2, read: () => BigInt(this.dmacount),
        write: (v, mask) => this.doorbell(Number((BigInt(this.dmacount) & ~mask) | v)),
      },
      roReg('CHANSTS', ch + IOAT.CHANSTS, 8, () => this.chansts),
      {
        name: 'CHAINADDR', off: ch + IOAT.CHAINADDR, size: 8, read: () => this.chainaddr,
        write: (v, mask) => this.setChainaddr((this.chainaddr & ~mask) | v),
      },
      this.chancmp,
      roReg('CDAR', ch + IOAT.CDAR, 8, () => this.cdar),
      {
        name: 'CHANERR', off: ch + IOAT.CHANERR, size: 4, read: () => BigInt(this.chanerr),
        write: (v) => this.clearErrors(Number(v)),
      },
      this.chanerrmask,
    ]);
  }

  get chansts(): bigint {
    return (this.completed & CHANSTS.ADDR_MASK) | BigInt(this.state);
  }

  /** The channel's error bits (CHANERR). */
  get errors(): number {
    return this.chanerr;
  }

  protected barRead(bar: number, off: number, size: AccessSize): bigint {
    return bar === 0 ? this.regs.read(off, size) : 0n;
  }

  protected barWrite(bar: number, off: number, size: AccessSize, value: bigint): void {
    if (bar === 0) this.regs.write(off, size, value);
  }

  protected deviceReset(): void {
    this.genctrl.reset();
    this.intrctrl.reset();
    this.intrdelay.reset();
    this.chanctrl.reset();
    this.chancmp.reset();
    this.chanerrmask.reset();
    this.resetChannel();
  }

  private resetChannel(): void {
    this.state = CHANSTS.HALTED;
    this.completed = 0n;
    this.chainaddr = 0n;
    this.nextDesc = null;
    this.dmacount = 0;
    this.processed = 0;
    this.cdar = 0n;
    this.chanerr = 0;
    this.cfg.set(IOAT.PCI_CHANERR_INT, 4, 0);
  }

  private command8(cmd: number): void {
    if (cmd & CHANCMD.RESET) {
      this.traceLine('CHANCMD reset: channel HALTED, errors cleared');
      this.chanctrl.reset();
      this.resetChannel();
      return;
    }
    if (cmd & CHANCMD.ABORT) {
      this.traceLine('CHANCMD abort');
      this.state = CHANSTS.HALTED;
      return;
    }
    if (cmd & CHANCMD.SUSPEND) {
      if (this.state === CHANSTS.ACTIVE || this.state === CHANSTS.DONE) this.state = CHANSTS.SUSPENDED;
      this.traceLine(`CHANCMD suspend: status ${this.state}`);
      return;
    }
    if (cmd & CHANCMD.RESUME && this.state === CHANSTS.SUSPENDED) this.run();
  }

  private setChainaddr(addr: bigint): void {
    this.chainaddr = addr;
    // A new chain: the engine starts over at CHAINADDR and counts from 0.
    this.nextDesc = null;
    this.processed = 0;
    this.dmacount = 0;
  }

  private clearErrors(bits: number): void {
    this.chanerr &= ~bits;
    this.cfg.set(IOAT.PCI_CHANERR_INT, 4, this.cfg.get(IOAT.PCI_CHANERR_INT, 4) & ~bits);
  }

  private doorbell(count: number): void {
    this.dmacount = count & 0xffff;
    if (this.chanerr) {
      this.traceLine(`DMACOUNT ${this.dmacount}: channel halted on errors 0x${this.chanerr.toString(16)}, ignored`);
      return;
    }
    this.traceLine(`DMACOUNT ${this.dmacount}: chain at 0x${this.chainaddr.toString(16)}`);
    this.run();
  }

  /** Process descriptors until `processed` catches up with DMACOUNT, or an error halts the channel. */
  private run(): void {
    this.state = CHANSTS.ACTIVE;
    const desc = new Uint8Array(IOAT_DESC_SIZE);
    const dv = new DataView(desc.buffer);
    while (this.processed !== this.dmacount) {
      const first = this.nextDesc === null;
      const addr = first ? this.chainaddr : this.nextDesc!;
      this.cdar = addr;
      if (addr & 0x3fn) return this.error(first ? CHANERR.CHAIN_ADDR_VALUE_ERR : CHANERR.NEXT_DESC_ALIGN_ERR, `descriptor 0x${addr.toString(16)} misaligned`);
      const f = this.dmaRead(addr, desc);
      if (!f.ok) return this.error(first ? CHANERR.CHAIN_ADDR_VALUE_ERR : CHANERR.NEXT_ADDR_ERR, `descriptor fetch at 0x${addr.toString(16)}: ${faultText(f)}`);
      const size = dv.getUint32(0, true);
      const ctl = dv.getUint32(4, true);
      const src = dv.getBigUint64(8, true);
      const dst = dv.getBigUint64(16, true);
      const next = dv.getBigUint64(24, true);
      const op = ctl >>> DESC_CTL.OP_SHIFT;
      if (!(ctl & DESC_CTL.NULL)) {
        if (op !== IOAT_OP_COPY) return this.error(CHANERR.CONTROL_ERR, `descriptor op 0x${op.toString(16)} not supported`);
        if (size > 2 ** this.xfercap) return this.error(CHANERR.LENGTH_ERR, `copy of ${size} bytes > 1 << XFERCAP`);
        const err = this.copy(src, dst, size);
        if (err) return;
        this.stats.copies++;
        this.stats.bytes += size;
      }
      this.stats.descriptors++;
      this.completed = addr;
      this.processed = (this.processed + 1) & 0xffff;
      this.nextDesc = next;
      if (ctl & DESC_CTL.COMPL_WRITE && !this.writeCompletion(BigInt(CHANSTS.DONE))) return;
      if (ctl & DESC_CTL.INT_EN) this.completionInterrupt();
    }
    this.state = CHANSTS.DONE;
    this.traceLine(`done: ${this.dmacount} descriptor(s), last 0x${this.completed.toString(16)}`);
  }

  /** Copy `size` bytes src -> dst through the IOMMU, a page at a time; true on error (channel halted). */
  private copy(src: bigint, dst: bigint, size: number): boolean {
    const PAGE = 4096;
    let done = 0;
    const buf = new Uint8Array(Math.min(size, PAGE));
    while (done < size) {
      const s = src + BigInt(done);
      const d = dst + BigInt(done);
      const n = Math.min(size - done, PAGE - Number(s % 4096n), PAGE - Number(d % 4096n));
      const chunk = buf.subarray(0, n);
      const r = this.dmaRead(s, chunk);
      if (!r.ok) {
        this.error(CHANERR.READ_DATA_ERR, `source read at 0x${s.toString(16)}: ${faultText(r)}`);
        return true;
      }
      const w = this.dmaWrite(d, chunk);
      if (!w.ok) {
        this.error(CHANERR.WRITE_DATA_ERR, `destination write at 0x${d.toString(16)}: ${faultText(w)}`);
        return true;
      }
      done += n;
    }
    return false;
  }

  /** Write the channel status to CHANCMP (a completion write); a fault there is an error unless already halting. */
  private writeCompletion(status: bigint, halting = false): boolean {
    const addr = this.chancmp.value;
    if (!addr) return true;
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, (this.completed & CHANSTS.ADDR_MASK) | status, true);
    const r = this.dmaWrite(addr, b);
    if (r.ok) return true;
    if (!halting) this.error(CHANERR.COMPLETION_ADDR_ERR, `completion write at 0x${addr.toString(16)}: ${faultText(r)}`);
    return false;
  }

  /** A descriptor asked for an interrupt: one per arm (CHANCTRL INT_REARM), on MSI-X vector 0. */
  private completionInterrupt(): void {
    if (!(this.chanctrl.value & BigInt(CHANCTRL.INT_REARM))) return this.traceLine('interrupt: channel not armed');
    this.chanctrl.value &= ~BigInt(CHANCTRL.INT_REARM);
    this.signal();
  }

  private signal(): void {
    const ic = Number(this.intrctrl.value);
    if (!(ic & (INTRCTRL.MSIX_VECTOR_CONTROL | INTRCTRL.MASTER_INT_EN))) return this.traceLine('interrupt: INTRCTRL disabled');
    this.raise(0);
  }

  /** A channel error: latch the bits (CHANERR and the config mirror) and halt. */
  private error(bits: number, why: string): void {
    this.chanerr |= bits;
    this.cfg.set(IOAT.PCI_CHANERR_INT, 4, this.cfg.get(IOAT.PCI_CHANERR_INT, 4) | bits);
    this.state = CHANSTS.HALTED;
    this.traceLine(`error 0x${bits.toString(16)} (${why}): channel HALTED`);
    const ctl = Number(this.chanctrl.value);
    if (ctl & CHANCTRL.ERR_COMPLETION_EN) this.writeCompletion(BigInt(CHANSTS.HALTED), true);
    if (ctl & CHANCTRL.ERR_INT_EN) this.signal();
  }
}

function faultText(r: DmaResult): string {
  if (r.ok) return 'ok';
  const d = r.fault.detail as { reason?: string } | undefined;
  return `${r.fault.kind} fault${d?.reason ? ` (${d.reason})` : ''}`;
}
