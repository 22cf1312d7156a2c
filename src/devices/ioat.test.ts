// The IOAT model alone, on a DMA port backed by a plain IOVA -> page map (the
// IOMMU path is covered by the VFIO tests): registers, the descriptor chain,
// completion, MSI-X, errors and reset.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DmaPort, DmaResult } from './dma.js';
import {
  CHANCTRL, CHANCMD, CHANERR, CHANSTS, DESC_CTL, INTRCTRL, IOAT, IOAT_MSIX_TABLE, IoatDevice, ioatDescriptor,
} from './ioat.js';
import { PCI, PCI_COMMAND, PCI_MSIX } from './pci/pci_regs.js';

/** IOVA pages that exist; any other access faults. */
class MapDma implements DmaPort {
  readonly pages = new Map<bigint, Uint8Array>();
  map(iova: bigint, len: number): void {
    for (let p = iova; p < iova + BigInt(len); p += 4096n) this.pages.set(p, new Uint8Array(4096));
  }
  private each(iova: bigint, len: number, write: boolean, fn: (pg: Uint8Array, off: number, done: number, n: number) => void): DmaResult {
    let done = 0;
    while (done < len) {
      const a = iova + BigInt(done);
      const pg = this.pages.get(a & ~4095n);
      if (!pg) return { ok: false, fault: { kind: 'translation', iova: a, write }, done };
      const off = Number(a & 4095n);
      const n = Math.min(len - done, 4096 - off);
      fn(pg, off, done, n);
      done += n;
    }
    return { ok: true };
  }
  read(iova: bigint, buf: Uint8Array): DmaResult {
    return this.each(iova, buf.length, false, (pg, off, done, n) => buf.set(pg.subarray(off, off + n), done));
  }
  write(iova: bigint, data: Uint8Array): DmaResult {
    return this.each(iova, data.length, true, (pg, off, done, n) => pg.set(data.subarray(done, done + n), off));
  }
  bytes(iova: bigint, len: number): Uint8Array {
    const b = new Uint8Array(len);
    assert.ok(this.read(iova, b).ok);
    return b;
  }
}

const CH = IOAT.CHANNEL;
const DESC = 0x10000n;
const SRC = 0x20000n;
const DST = 0x40000n;

function setup(opts: { xfercap?: number } = {}) {
  const dev = new IoatDevice([0xfe000000n], opts);
  const dma = new MapDma();
  const msis: { addr: bigint; data: number }[] = [];
  dev.connect({ dma, msi: (addr, data) => msis.push({ addr, data }) });
  const trace: string[] = [];
  dev.trace = (l) => trace.push(l);
  dev.configWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER | PCI_COMMAND.INTX_DISABLE);
  // The host's PCI core enabling MSI-X: table entry 0, then enable.
  dev.mmioWrite(0, IOAT_MSIX_TABLE, 8, 0xfee00000n);
  dev.mmioWrite(0, IOAT_MSIX_TABLE + 8, 4, 0x41n);
  dev.mmioWrite(0, IOAT_MSIX_TABLE + 12, 4, 0n);
  dev.configWrite(0x80 + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE);
  dma.map(DESC, 4096);
  dma.map(SRC, 0x10000);
  dma.map(DST, 0x10000);
  const rd = (off: number, size: 1 | 2 | 4 | 8) => dev.mmioRead(0, off, size);
  const wr = (off: number, size: 1 | 2 | 4 | 8, v: bigint | number) => dev.mmioWrite(0, off, size, BigInt(v));
  const status = () => Number(rd(CH + IOAT.CHANSTS, 8) & CHANSTS.STATUS_MASK);
  const reset = () => {
    wr(CH + IOAT.CHANCMD, 1, CHANCMD.RESET);
    assert.equal(Number(rd(CH + IOAT.CHANCMD, 1)) & CHANCMD.RESET, 0);
  };
  /** One self-linked descriptor, started `count` times, like the selftest driver. */
  const start = (src: bigint, dst: bigint, size: number, count: number, intEn = false) => {
    dma.write(DESC, ioatDescriptor({ size, ctl: intEn ? DESC_CTL.INT_EN : 0, src, dst, next: DESC }));
    wr(CH + IOAT.CHAINADDR, 8, DESC);
    wr(CH + IOAT.CHANCTRL, 2, CHANCTRL.INT_REARM | CHANCTRL.ANY_ERR_ABORT_EN);
    wr(CH + IOAT.DMACOUNT, 2, count);
  };
  return { dev, dma, msis, trace, rd, wr, status, reset, start };
}

test('probe registers: version 3.3, XFERCAP, one channel; reset leaves the channel HALTED', () => {
  const t = setup({ xfercap: 14 });
  assert.equal(Number(t.rd(IOAT.CBVER, 1)), 0x33);
  assert.equal(Number(t.rd(IOAT.XFERCAP, 1)), 14);
  assert.equal(Number(t.rd(IOAT.CHANCNT, 1)), 1);
  assert.equal(t.dev.configRead(PCI.VENDOR_ID, 2), 0x8086);
  assert.equal(t.dev.configRead(PCI.DEVICE_ID, 2), 0x2021);
  t.reset();
  assert.equal(t.status(), CHANSTS.HALTED);
});

test('a copy completes: data moved, CHANSTS DONE with the descriptor address, then SUSPENDED; no interrupt', () => {
  const t = setup();
  const data = Uint8Array.from({ length: 8192 }, (_, i) => (i * 7 + 3) & 0xff);
  t.dma.write(SRC, data);
  t.reset();
  t.wr(IOAT.INTRCTRL, 1, INTRCTRL.MSIX_VECTOR_CONTROL);
  t.start(SRC, DST, 8192, 1);
  assert.equal(t.status(), CHANSTS.DONE);
  assert.equal(t.rd(CH + IOAT.CHANSTS, 8) & CHANSTS.ADDR_MASK, DESC);
  assert.deepEqual(t.dma.bytes(DST, 8192), data);
  t.wr(CH + IOAT.CHANCMD, 1, CHANCMD.SUSPEND);
  assert.equal(t.status(), CHANSTS.SUSPENDED);
  assert.equal(t.msis.length, 0);
});

test('DMACOUNT runs the self-linked descriptor count times', () => {
  const t = setup();
  t.reset();
  t.dma.write(SRC, Uint8Array.of(1, 2, 3, 4));
  t.start(SRC, DST, 4, 300);
  assert.equal(t.status(), CHANSTS.DONE);
  assert.ok(t.trace.some((l) => l.includes('done: 300 descriptor(s)')));
});

test('stats count completed descriptors, copies and bytes; a NULL descriptor and a faulting copy add no copy', () => {
  const t = setup();
  t.reset();
  t.start(SRC, DST, 100, 3);
  assert.deepEqual(t.dev.stats, { descriptors: 3, copies: 3, bytes: 300 });
  t.reset(); // a channel reset keeps the counts
  t.dma.write(DESC, ioatDescriptor({ size: 0, ctl: DESC_CTL.NULL, src: 0n, dst: 0n, next: DESC }));
  t.wr(CH + IOAT.CHAINADDR, 8, DESC);
  t.wr(CH + IOAT.DMACOUNT, 2, 1);
  assert.deepEqual(t.dev.stats, { descriptors: 4, copies: 3, bytes: 300 });
  t.reset();
  t.start(0x900000n, DST, 64, 1); // unmapped source: READ_DATA_ERR
  assert.equal(t.status(), CHANSTS.HALTED);
  assert.deepEqual(t.dev.stats, { descriptors: 4, copies: 3, bytes: 300 });
});

test('a descriptor with int_en raises MSI-X vector 0 exactly once per arm', () => {
  const t = setup();
  t.reset();
  t.wr(IOAT.INTRCTRL, 1, INTRCTRL.MSIX_VECTOR_CONTROL);
  t.start(SRC, DST, 8, 3, true);
  assert.deepEqual(t.msis, [{ addr: 0xfee00000n, data: 0x41 }]);
  t.wr(CH + IOAT.CHANCMD, 1, CHANCMD.SUSPEND);
  t.start(SRC, DST, 8, 1, true);
  assert.equal(t.msis.length, 2);
});

test('a masked MSI-X vector becomes pending and fires when unmasked', () => {
  const t = setup();
  t.reset();
  t.wr(IOAT.INTRCTRL, 1, INTRCTRL.MSIX_VECTOR_CONTROL);
  t.wr(IOAT_MSIX_TABLE + 12, 4, 1);
  t.start(SRC, DST, 8, 1, true);
  assert.equal(t.msis.length, 0);
  assert.equal(t.rd(0x3000, 8), 1n);
  t.wr(IOAT_MSIX_TABLE + 12, 4, 0);
  assert.equal(t.msis.length, 1);
  assert.equal(t.rd(0x3000, 8), 0n);
});

test('source fault: READ_DATA_ERR in CHANERR and config 0x180, HALTED, no interrupt, nothing written', () => {
  const t = setup();
  t.reset();
  t.wr(IOAT.INTRCTRL, 1, INTRCTRL.MSIX_VECTOR_CONTROL);
  t.start(0x7000000n, DST, 64, 1, true);
  assert.equal(t.status(), CHANSTS.HALTED);
  assert.equal(Number(t.rd(CH + IOAT.CHANERR, 4)), CHANERR.READ_DATA_ERR);
  assert.equal(t.dev.configRead(IOAT.PCI_CHANERR_INT, 4), CHANERR.READ_DATA_ERR);
  assert.equal(t.dev.configRead(IOAT.PCI_DMAUNCERRSTS, 4), 0);
  assert.equal(t.msis.length, 0);
  // Errors are write-1-to-clear, in both places.
  t.wr(CH + IOAT.CHANERR, 4, CHANERR.READ_DATA_ERR);
  t.dev.configWrite(IOAT.PCI_CHANERR_INT, 4, CHANERR.READ_DATA_ERR);
  assert.equal(Number(t.rd(CH + IOAT.CHANERR, 4)), 0);
  assert.equal(t.dev.configRead(IOAT.PCI_CHANERR_INT, 4), 0);
});

test('destination fault: WRITE_DATA_ERR; the channel works again after a reset', () => {
  const t = setup();
  t.reset();
  t.start(SRC, 0x9000000n, 64, 1);
  assert.equal(t.status(), CHANSTS.HALTED);
  assert.equal(Number(t.rd(CH + IOAT.CHANERR, 4)), CHANERR.WRITE_DATA_ERR);
  // Halted on errors: a doorbell does nothing until reset.
  t.start(SRC, DST, 64, 1);
  assert.equal(t.status(), CHANSTS.HALTED);
  t.reset();
  assert.equal(Number(t.rd(CH + IOAT.CHANERR, 4)), 0);
  t.dma.write(SRC, Uint8Array.of(9, 9, 9));
  t.start(SRC, DST, 3, 1);
  assert.equal(t.status(), CHANSTS.DONE);
  assert.deepEqual(t.dma.bytes(DST, 3), Uint8Array.of(9, 9, 9));
});

test('descriptor errors: unmapped chain address, oversized copy, unknown op', () => {
  const t = setup({ xfercap: 12 });
  t.reset();
  t.wr(CH + IOAT.CHAINADDR, 8, 0x5000000n);
  t.wr(CH + IOAT.DMACOUNT, 2, 1);
  assert.equal(Number(t.rd(CH + IOAT.CHANERR, 4)), CHANERR.CHAIN_ADDR_VALUE_ERR);
  t.reset();
  t.start(SRC, DST, 4097, 1);
  assert.equal(Number(t.rd(CH + IOAT.CHANERR, 4)), CHANERR.LENGTH_ERR);
  t.reset();
  t.dma.write(DESC, ioatDescriptor({ size: 0, ctl: 0x01 << DESC_CTL.OP_SHIFT, src: 0n, dst: 0n, next: DESC }));
  t.wr(CH + IOAT.CHAINADDR, 8, DESC);
  t.wr(CH + IOAT.DMACOUNT, 2, 1);
  assert.equal(Number(t.rd(CH + IOAT.CHANERR, 4)), CHANERR.CONTROL_ERR);
});

test('no DMA and no MSI without bus master', () => {
  const t = setup();
  t.reset();
  t.dev.configWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  t.wr(IOAT.INTRCTRL, 1, INTRCTRL.MSIX_VECTOR_CONTROL);
  t.start(SRC, DST, 8, 1, true);
  assert.equal(t.status(), CHANSTS.HALTED);
  assert.ok(Number(t.rd(CH + IOAT.CHANERR, 4)) !== 0);
  assert.equal(t.msis.length, 0);
});

test('memory decode off: BAR reads are all ones and writes are dropped', () => {
  const t = setup();
  t.dev.configWrite(PCI.COMMAND, 2, 0);
  assert.equal(t.rd(IOAT.CBVER, 1), 0xffn);
  assert.equal(t.rd(CH + IOAT.CHANSTS, 8), (1n << 64n) - 1n);
});

test('FLR through the PCIe device control register resets registers, config and the MSI-X table', () => {
  const t = setup();
  t.reset();
  t.start(0x7000000n, DST, 64, 1);
  assert.notEqual(t.dev.configRead(IOAT.PCI_CHANERR_INT, 4), 0);
  t.dev.configWrite(0x90 + 8, 2, 0x8000);
  assert.equal(t.dev.configRead(PCI.COMMAND, 2), 0);
  assert.equal(t.dev.configRead(IOAT.PCI_CHANERR_INT, 4), 0);
  assert.equal(t.dev.configRead(0x80 + PCI_MSIX.FLAGS, 2) & PCI_MSIX.FLAGS_ENABLE, 0);
  assert.equal(t.dev.configRead(0x90 + 8, 2) & 0x8000, 0);
  t.dev.configWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  assert.equal(Number(t.rd(IOAT_MSIX_TABLE + 12, 4)), PCI_MSIX.ENTRY_CTRL_MASKBIT);
  assert.equal(t.status(), CHANSTS.HALTED);
});

test('BAR sizing: all ones written to BAR0 reads back the size mask and the type bits', () => {
  const t = setup();
  t.dev.configWrite(PCI.BASE_ADDRESS_0, 4, 0xffffffff);
  t.dev.configWrite(PCI.BASE_ADDRESS_0 + 4, 4, 0xffffffff);
  assert.equal(t.dev.configRead(PCI.BASE_ADDRESS_0, 4) >>> 0, (0xffffc000 | 0x4) >>> 0);
  assert.equal(t.dev.configRead(PCI.BASE_ADDRESS_0 + 4, 4) >>> 0, 0xffffffff);
});
