// The device interface: what the rest of the emulator (VFIO, the machine, a
// future VMM front end) sees of an emulated PCI function. A model is one
// module implementing it (usually by extending PciFunction, pci/function.ts);
// the models the machine can instantiate are listed in models.ts.
import type { DmaPort } from './dma.js';

export type AccessSize = 1 | 2 | 4 | 8;

/** A memory BAR as the platform assigned it. */
export interface PciBar {
  readonly index: number;
  /** Bytes; a power of two. */
  readonly size: number;
  readonly is64: boolean;
  readonly prefetch: boolean;
  /** Host physical address the platform placed it at. */
  readonly addr: bigint;
}

/** Where a function's bus-master traffic goes: its DMA and its MSI writes. */
export interface PciPort {
  readonly dma: DmaPort;
  /** A message-signalled interrupt: the function wrote `data` to `addr`. */
  msi(addr: bigint, data: number): void;
}

/** Trace hook: one line per device decision (register write, doorbell, fault, interrupt). */
export type DeviceTrace = (line: string) => void;

export interface PciDeviceModel {
  /** Model name in the machine description ("ioat"). */
  readonly model: string;
  readonly vendorId: number;
  readonly deviceId: number;
  /** 256 (conventional) or 4096 (PCIe). */
  readonly cfgSize: number;
  /** BARs 0..5; null where there is none (and for the upper half of a 64-bit BAR). */
  readonly bars: readonly (PciBar | null)[];
  /** Physical config space access, as the host's PCI core does it (1, 2 or 4 aligned bytes). */
  configRead(off: number, size: 1 | 2 | 4): number;
  configWrite(off: number, size: 1 | 2 | 4, value: number): void;
  /** A memory access to BAR `bar` at `off` (naturally sized, within the BAR). */
  mmioRead(bar: number, off: number, size: AccessSize): bigint;
  mmioWrite(bar: number, off: number, size: AccessSize, value: bigint): void;
  /** The function advertises a function-level reset (PCIe FLR). */
  readonly flrCapable: boolean;
  /** Function-level reset: registers to power-on values (config too; the host restores what it saved). */
  flr(): void;
  /** Plug the function into a port (its requester side). */
  connect(port: PciPort | null): void;
  trace: DeviceTrace | null;
}
