// A function's physical configuration space as the hardware implements it:
// bytes plus a writable mask and a write-1-to-clear mask per byte (the shape
// of QEMU's PCIDevice config/wmask/w1cmask), with helpers to lay out the
// header and a capability chain.
import { PCI, PCI_CAP_LIST_NEXT, PCI_STATUS } from './pci_regs.js';

/** Store `v` little-endian in `n` bytes (values up to 2^53, so no 32-bit bit operations). */
function setBytes(b: Uint8Array, off: number, n: number, v: number): void {
  for (let i = 0; i < n; i++) {
    b[off + i] = v % 256;
    v = Math.floor(v / 256);
  }
}

export class ConfigSpace {
  readonly bytes: Uint8Array;
  readonly wmask: Uint8Array;
  readonly w1cmask: Uint8Array;
  /** Standard capabilities by ID -> offset (first of each). */
  readonly caps = new Map<number, number>();
  private lastCap = -1;

  constructor(readonly size: number) {
    this.bytes = new Uint8Array(size);
    this.wmask = new Uint8Array(size);
    this.w1cmask = new Uint8Array(size);
  }

  get(off: number, n: number): number {
    let v = 0;
    for (let i = n - 1; i >= 0; i--) v = v * 256 + this.bytes[off + i]!;
    return v;
  }

  /** Set bytes directly (device-side state, not a bus write). */
  set(off: number, n: number, v: number): void {
    setBytes(this.bytes, off, n, v);
  }

  /** Declare [off, off+n) writable with `mask` (little-endian, n bytes). */
  writable(off: number, n: number, mask: number): void {
    setBytes(this.wmask, off, n, mask);
  }

  /** Declare the bits of `mask` write-1-to-clear. */
  w1c(off: number, n: number, mask: number): void {
    setBytes(this.w1cmask, off, n, mask);
  }

  /** A bus write of `n` bytes: writable bits take the value, W1C bits clear where 1 is written. */
  busWrite(off: number, n: number, v: number): void {
    for (let i = 0; i < n; i++) {
      const b = v & 0xff;
      v = Math.floor(v / 256);
      const o = off + i;
      const wm = this.wmask[o]!;
      const cm = this.w1cmask[o]!;
      this.bytes[o] = ((this.bytes[o]! & ~wm) | (b & wm)) & ~(b & cm);
    }
  }

  /** Append a standard capability of `len` bytes at `off` to the chain; returns `off`. */
  addCap(id: number, off: number, len: number): number {
    if (off < PCI.STD_HEADER_SIZEOF || off + len > PCI.CFG_SPACE_SIZE || off % 4) throw new Error(`bad capability offset 0x${off.toString(16)}`);
    this.bytes[off] = id;
    this.bytes[off + PCI_CAP_LIST_NEXT] = 0;
    if (this.lastCap < 0) this.bytes[PCI.CAPABILITY_LIST] = off;
    else this.bytes[this.lastCap + PCI_CAP_LIST_NEXT] = off;
    this.lastCap = off;
    this.set(PCI.STATUS, 2, this.get(PCI.STATUS, 2) | PCI_STATUS.CAP_LIST);
    if (!this.caps.has(id)) this.caps.set(id, off);
    return off;
  }

  snapshot(): { bytes: Uint8Array } {
    return { bytes: this.bytes.slice() };
  }
}
