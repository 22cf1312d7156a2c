// The common part of an emulated PCI function: type-0 header, memory BARs,
// command register, MSI and MSI-X (table and PBA in a BAR), a PCIe capability
// with function-level reset, and bus-master gating of DMA and MSI writes. A
// device model extends it with its registers (barRead/barWrite), its
// device-specific config registers (plain ConfigSpace bytes) and deviceReset.
import { NO_DMA, type DmaResult } from '../dma.js';
import type { AccessSize, DeviceTrace, PciBar, PciDeviceModel, PciPort } from '../device.js';
import { ConfigSpace } from './config.js';
import {
  PCI, PCI_BASE_ADDRESS, PCI_CAP_ID, PCI_COMMAND, PCI_EXP, PCI_MSI, PCI_MSIX, PCI_STATUS,
} from './pci_regs.js';

export interface PciIdentity {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly revision: number;
  /** 24-bit class code (base, sub, prog-if). */
  readonly classCode: number;
  readonly subsystemVendorId: number;
  readonly subsystemId: number;
}

export interface BarDef {
  readonly index: number;
  readonly size: number;
  readonly is64?: boolean;
  readonly prefetch?: boolean;
}

export interface PciLayout {
  /** 4096 with a PCIe capability. */
  readonly cfgSize: 256 | 4096;
  readonly bars: readonly BarDef[];
  /** Offsets of the capabilities to build (chain order = this order). */
  readonly pcie?: { readonly at: number; readonly type: number; readonly flr: boolean };
  readonly msix?: { readonly at: number; readonly vectors: number; readonly bar: number; readonly table: number; readonly pba: number };
  readonly msi?: { readonly at: number; readonly vectors: 1 | 2 | 4 | 8 | 16 | 32; readonly is64: boolean };
}

/** BAR placement by the platform: `addrs[i]` for BAR i. */
export type BarAddrs = readonly bigint[];

export abstract class PciFunction implements PciDeviceModel {
  abstract readonly model: string;
  readonly cfg: ConfigSpace;
  readonly bars: (PciBar | null)[] = [null, null, null, null, null, null];
  trace: DeviceTrace | null = null;
  private port: PciPort | null = null;
  private readonly powerOn: Uint8Array;
  /** MSI-X vector table (addr, data, ctrl) and pending bits. */
  private readonly msixTable: { addr: bigint; data: number; ctrl: number }[] = [];
  private msixPending: boolean[] = [];

  constructor(readonly id: PciIdentity, readonly layout: PciLayout, barAddrs: BarAddrs) {
    const cfg = (this.cfg = new ConfigSpace(layout.cfgSize));
    cfg.set(PCI.VENDOR_ID, 2, id.vendorId);
    cfg.set(PCI.DEVICE_ID, 2, id.deviceId);
    cfg.set(PCI.REVISION_ID, 1, id.revision);
    cfg.set(PCI.CLASS_PROG, 3, id.classCode);
    cfg.set(PCI.SUBSYSTEM_VENDOR_ID, 2, id.subsystemVendorId);
    cfg.set(PCI.SUBSYSTEM_ID, 2, id.subsystemId);
    cfg.writable(PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER | PCI_COMMAND.PARITY | PCI_COMMAND.SERR |
      PCI_COMMAND.INTX_DISABLE);
    cfg.w1c(PCI.STATUS, 2, PCI_STATUS.MASTER_PARITY | PCI_STATUS.SIG_TARGET_ABORT | PCI_STATUS.REC_TARGET_ABORT |
      PCI_STATUS.REC_MASTER_ABORT | PCI_STATUS.SIG_SYSTEM_ERROR | PCI_STATUS.DETECTED_PARITY);
    cfg.writable(PCI.CACHE_LINE_SIZE, 1, 0xff);
    cfg.writable(PCI.LATENCY_TIMER, 1, 0xff);
    cfg.writable(PCI.INTERRUPT_LINE, 1, 0xff);
    for (const b of layout.bars) this.addBar(b, barAddrs[b.index] ?? 0n);
    if (layout.pcie) this.addPcie(layout.pcie);
    if (layout.msix) this.addMsix(layout.msix);
    if (layout.msi) this.addMsi(layout.msi);
    this.powerOn = cfg.bytes.slice();
  }

  get vendorId(): number {
    return this.id.vendorId;
  }
  get deviceId(): number {
    return this.id.deviceId;
  }
  get cfgSize(): number {
    return this.layout.cfgSize;
  }
  get flrCapable(): boolean {
    return !!this.layout.pcie?.flr;
  }

  // ---- layout -------------------------------------------------------------------------

  private addBar(b: BarDef, addr: bigint): void {
    if (b.size < 16 || (b.size & (b.size - 1))) throw new Error(`BAR${b.index}: size ${b.size} is not a power of two >= 16`);
    const off = PCI.BASE_ADDRESS_0 + 4 * b.index;
    let flags = 0;
    if (b.is64) flags |= PCI_BASE_ADDRESS.MEM_TYPE_64;
    if (b.prefetch) flags |= PCI_BASE_ADDRESS.MEM_PREFETCH;
    if (addr % BigInt(b.size)) throw new Error(`BAR${b.index}: address 0x${addr.toString(16)} not aligned to its size`);
    if (!b.is64 && addr >= 1n << 32n) throw new Error(`BAR${b.index}: a 32-bit BAR cannot sit at 0x${addr.toString(16)}`);
    // The address bits that decode are writable (BAR sizing reads back ~(size - 1)).
    const mask = ((1n << 64n) - BigInt(b.size)) & ~0xfn;
    this.cfg.set(off, 4, Number(addr & 0xfffffff0n) | flags);
    this.cfg.writable(off, 4, Number(mask & 0xffffffffn));
    if (b.is64) {
      this.cfg.set(off + 4, 4, Number(addr >> 32n));
      this.cfg.writable(off + 4, 4, Number(mask >> 32n));
    }
    this.bars[b.index] = { index: b.index, size: b.size, is64: !!b.is64, prefetch: !!b.prefetch, addr };
  }

  private addPcie(p: NonNullable<PciLayout['pcie']>): void {
    const at = this.cfg.addCap(PCI_CAP_ID.EXP, p.at, PCI_EXP.ENDPOINT_SIZEOF_V2);
    this.cfg.set(at + PCI_EXP.FLAGS, 2, 2 | (p.type << 4));
    this.cfg.set(at + PCI_EXP.DEVCAP, 4, p.flr ? PCI_EXP.DEVCAP_FLR : 0);
    // Device control: error reporting, relaxed ordering, payload/read request sizes, no snoop; FLR handled on write.
    this.cfg.writable(at + PCI_EXP.DEVCTL, 2, 0x7fff & ~PCI_EXP.DEVCTL_PHANTOM | PCI_EXP.DEVCTL_BCR_FLR);
    this.cfg.set(at + PCI_EXP.DEVCTL, 2, PCI_EXP.DEVCTL_RELAX_EN | PCI_EXP.DEVCTL_NOSNOOP_EN | 0x2000);
    this.cfg.w1c(at + PCI_EXP.DEVSTA, 2, 0x000f);
    this.cfg.writable(at + PCI_EXP.DEVCTL2, 2, 0x041f);
  }

  private addMsix(m: NonNullable<PciLayout['msix']>): void {
    if (m.vectors < 1 || m.vectors > 2048) throw new Error(`MSI-X: ${m.vectors} vectors`);
    const bar = this.bars[m.bar];
    if (!bar || m.table + m.vectors * PCI_MSIX.ENTRY_SIZE > bar.size || m.pba + Math.ceil(m.vectors / 64) * 8 > bar.size) {
      throw new Error('MSI-X table or PBA outside its BAR');
    }
    const at = this.cfg.addCap(PCI_CAP_ID.MSIX, m.at, PCI_MSIX.SIZEOF);
    this.cfg.set(at + PCI_MSIX.FLAGS, 2, m.vectors - 1);
    this.cfg.writable(at + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE | PCI_MSIX.FLAGS_MASKALL);
    this.cfg.set(at + PCI_MSIX.TABLE, 4, m.table | m.bar);
    this.cfg.set(at + PCI_MSIX.PBA, 4, m.pba | m.bar);
    this.resetMsixTable();
  }

  private addMsi(m: NonNullable<PciLayout['msi']>): void {
    const len = m.is64 ? 14 : 10;
    const at = this.cfg.addCap(PCI_CAP_ID.MSI, m.at, len);
    const mmc = Math.log2(m.vectors);
    this.cfg.set(at + PCI_MSI.FLAGS, 2, (mmc << 1) | (m.is64 ? PCI_MSI.FLAGS_64BIT : 0));
    this.cfg.writable(at + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE | PCI_MSI.FLAGS_QSIZE);
    this.cfg.writable(at + PCI_MSI.ADDRESS_LO, 4, 0xfffffffc);
    if (m.is64) this.cfg.writable(at + PCI_MSI.ADDRESS_HI, 4, 0xffffffff);
    this.cfg.writable(at + (m.is64 ? PCI_MSI.DATA_64 : PCI_MSI.DATA_32), 2, 0xffff);
  }

  private resetMsixTable(): void {
    const n = this.layout.msix?.vectors ?? 0;
    this.msixTable.length = 0;
    for (let i = 0; i < n; i++) this.msixTable.push({ addr: 0n, data: 0, ctrl: PCI_MSIX.ENTRY_CTRL_MASKBIT });
    this.msixPending = new Array<boolean>(n).fill(false);
  }

  // ---- config space -----------------------------------------------------------------------

  configRead(off: number, size: 1 | 2 | 4): number {
    this.checkCfg(off, size);
    return this.cfg.get(off, size);
  }

  configWrite(off: number, size: 1 | 2 | 4, value: number): void {
    this.checkCfg(off, size);
    const cmdBefore = this.command;
    const msixBefore = this.msixControl;
    this.cfg.busWrite(off, size, value);
    const pcie = this.layout.pcie ? this.cfg.caps.get(PCI_CAP_ID.EXP)! : -1;
    if (pcie >= 0 && overlaps(off, size, pcie + PCI_EXP.DEVCTL + 1, 1)) {
      const ctl = this.cfg.get(pcie + PCI_EXP.DEVCTL, 2);
      if (ctl & PCI_EXP.DEVCTL_BCR_FLR) {
        // Initiate Function Level Reset reads as 0; the reset itself only if advertised.
        this.cfg.set(pcie + PCI_EXP.DEVCTL, 2, ctl & ~PCI_EXP.DEVCTL_BCR_FLR);
        if (this.flrCapable) this.flr();
        return;
      }
    }
    if (this.command !== cmdBefore) this.traceLine(`command 0x${cmdBefore.toString(16)} -> 0x${this.command.toString(16)}`);
    if (this.msixControl !== msixBefore) this.msixFlushPending();
  }

  private checkCfg(off: number, size: number): void {
    if (off < 0 || off + size > this.cfgSize || off % size) throw new Error(`config access 0x${off.toString(16)}/${size} out of range or unaligned`);
  }

  get command(): number {
    return this.cfg.get(PCI.COMMAND, 2);
  }
  get memoryEnabled(): boolean {
    return !!(this.command & PCI_COMMAND.MEMORY);
  }
  get busMaster(): boolean {
    return !!(this.command & PCI_COMMAND.MASTER);
  }

  // ---- MMIO -----------------------------------------------------------------------------

  mmioRead(bar: number, off: number, size: AccessSize): bigint {
    this.checkMmio(bar, off, size);
    // Memory decode off: the access is not claimed (all ones).
    if (!this.memoryEnabled) return (1n << BigInt(8 * size)) - 1n;
    const m = this.layout.msix;
    if (m && bar === m.bar) {
      if (off >= m.table && off < m.table + m.vectors * PCI_MSIX.ENTRY_SIZE) return this.msixTableRead(off - m.table, size);
      if (off >= m.pba && off < m.pba + Math.ceil(m.vectors / 64) * 8) return this.msixPbaRead(off - m.pba, size);
    }
    return this.barRead(bar, off, size);
  }

  mmioWrite(bar: number, off: number, size: AccessSize, value: bigint): void {
    this.checkMmio(bar, off, size);
    if (!this.memoryEnabled) return;
    const m = this.layout.msix;
    if (m && bar === m.bar) {
      if (off >= m.table && off < m.table + m.vectors * PCI_MSIX.ENTRY_SIZE) return this.msixTableWrite(off - m.table, size, value);
      if (off >= m.pba && off < m.pba + Math.ceil(m.vectors / 64) * 8) return;
    }
    this.barWrite(bar, off, size, value);
  }

  private checkMmio(bar: number, off: number, size: number): void {
    const b = this.bars[bar];
    if (!b || off < 0 || off + size > b.size) throw new Error(`MMIO BAR${bar} 0x${off.toString(16)}/${size} outside the BAR`);
  }

  /** The model's registers. */
  protected abstract barRead(bar: number, off: number, size: AccessSize): bigint;
  protected abstract barWrite(bar: number, off: number, size: AccessSize, value: bigint): void;
  /** Device state back to power-on values (registers, engines); config space is the base's. */
  protected abstract deviceReset(): void;

  // ---- MSI-X ----------------------------------------------------------------------------

  get msixControl(): number {
    const at = this.cfg.caps.get(PCI_CAP_ID.MSIX);
    return at === undefined ? 0 : this.cfg.get(at + PCI_MSIX.FLAGS, 2);
  }

  private msixTableRead(off: number, size: number): bigint {
    let v = 0n;
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.msixByte(off + i));
    return v;
  }

  private msixByte(off: number): number {
    const e = this.msixTable[Math.floor(off / 16)]!;
    const o = off % 16;
    if (o < 8) return Number((e.addr >> BigInt(8 * o)) & 0xffn);
    if (o < 12) return (e.data >>> (8 * (o - 8))) & 0xff;
    return (e.ctrl >>> (8 * (o - 12))) & 0xff;
  }

  private msixTableWrite(off: number, size: number, value: bigint): void {
    for (let i = 0; i < size; i++) {
      const b = Number((value >> BigInt(8 * i)) & 0xffn);
      const at = off + i;
      const e = this.msixTable[Math.floor(at / 16)]!;
      const o = at % 16;
      if (o < 8) e.addr = (e.addr & ~(0xffn << BigInt(8 * o))) | (BigInt(b) << BigInt(8 * o));
      else if (o < 12) e.data = ((e.data & ~(0xff << (8 * (o - 8)))) | (b << (8 * (o - 8)))) >>> 0;
      else if (o === 12) e.ctrl = (e.ctrl & ~0xff) | (b & PCI_MSIX.ENTRY_CTRL_MASKBIT);
    }
    this.msixFlushPending();
  }

  private msixPbaRead(off: number, size: number): bigint {
    let v = 0n;
    for (let bit = 8 * off; bit < 8 * (off + size); bit++) {
      if (this.msixPending[bit]) v |= 1n << BigInt(bit - 8 * off);
    }
    return v;
  }

  /** Deliver pending vectors that are now unmasked. */
  private msixFlushPending(): void {
    const ctl = this.msixControl;
    if (!(ctl & PCI_MSIX.FLAGS_ENABLE) || ctl & PCI_MSIX.FLAGS_MASKALL) return;
    this.msixPending.forEach((p, v) => {
      const e = this.msixTable[v]!;
      if (p && !(e.ctrl & PCI_MSIX.ENTRY_CTRL_MASKBIT)) {
        this.msixPending[v] = false;
        this.sendMsi(e.addr, e.data, `MSI-X vector ${v} (was pending)`);
      }
    });
  }

  // ---- interrupts and DMA -------------------------------------------------------------------

  /** Signal interrupt `vector`: MSI-X when enabled, else MSI when enabled (INTx is not modelled). */
  protected raise(vector: number): void {
    const ctl = this.msixControl;
    if (ctl & PCI_MSIX.FLAGS_ENABLE) {
      const e = this.msixTable[vector];
      if (!e) return this.traceLine(`MSI-X vector ${vector} does not exist: dropped`);
      if (ctl & PCI_MSIX.FLAGS_MASKALL || e.ctrl & PCI_MSIX.ENTRY_CTRL_MASKBIT) {
        this.msixPending[vector] = true;
        return this.traceLine(`MSI-X vector ${vector} masked: pending`);
      }
      return this.sendMsi(e.addr, e.data, `MSI-X vector ${vector}`);
    }
    const at = this.cfg.caps.get(PCI_CAP_ID.MSI);
    if (at !== undefined) {
      const flags = this.cfg.get(at + PCI_MSI.FLAGS, 2);
      if (flags & PCI_MSI.FLAGS_ENABLE) {
        const n = 1 << ((flags & PCI_MSI.FLAGS_QSIZE) >> 4);
        if (vector >= n) return this.traceLine(`MSI vector ${vector} beyond the ${n} enabled: dropped`);
        const is64 = !!(flags & PCI_MSI.FLAGS_64BIT);
        const addr = BigInt(this.cfg.get(at + PCI_MSI.ADDRESS_LO, 4)) |
          (is64 ? BigInt(this.cfg.get(at + PCI_MSI.ADDRESS_HI, 4)) << 32n : 0n);
        const data = this.cfg.get(at + (is64 ? PCI_MSI.DATA_64 : PCI_MSI.DATA_32), 2);
        return this.sendMsi(addr, (data & ~(n - 1)) | vector, `MSI vector ${vector}`);
      }
    }
    this.traceLine(`interrupt ${vector}: MSI/MSI-X disabled, dropped`);
  }

  private sendMsi(addr: bigint, data: number, what: string): void {
    // An MSI is a memory write by the function: no bus master, no interrupt.
    if (!this.busMaster) return this.traceLine(`${what}: bus master disabled, dropped`);
    this.traceLine(`${what}: write 0x${data.toString(16)} to 0x${addr.toString(16)}`);
    this.port?.msi(addr, data);
  }

  connect(port: PciPort | null): void {
    this.port = port;
  }

  /** DMA read by the function (bus master required). */
  protected dmaRead(iova: bigint, buf: Uint8Array): DmaResult {
    if (!this.busMaster) return { ok: false, fault: { kind: 'access', iova, write: false, detail: { reason: 'bus master disabled' } }, done: 0 };
    return (this.port?.dma ?? NO_DMA).read(iova, buf);
  }

  protected dmaWrite(iova: bigint, data: Uint8Array): DmaResult {
    if (!this.busMaster) return { ok: false, fault: { kind: 'access', iova, write: true, detail: { reason: 'bus master disabled' } }, done: 0 };
    return (this.port?.dma ?? NO_DMA).write(iova, data);
  }

  // ---- reset ------------------------------------------------------------------------------

  /** FLR: config space, MSI-X table and device state back to power-on values. */
  flr(): void {
    this.traceLine('function-level reset');
    this.cfg.bytes.set(this.powerOn);
    // The platform-assigned BAR addresses are not part of the power-on state.
    for (const b of this.bars) {
      if (!b) continue;
      const off = PCI.BASE_ADDRESS_0 + 4 * b.index;
      this.cfg.set(off, 4, this.cfg.get(off, 4) & 0xf);
      if (b.is64) this.cfg.set(off + 4, 4, 0);
    }
    this.resetMsixTable();
    this.deviceReset();
  }

  protected traceLine(s: string): void {
    this.trace?.(`${this.model}: ${s}`);
  }
}

function overlaps(off: number, size: number, at: number, n: number): boolean {
  return off < at + n && at < off + size;
}
