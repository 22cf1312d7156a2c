// End to end in process: the IOAT bound through the VFIO uAPI (cdev + iommufd,
// and group + container), a buffer mapped in an IOAS, the engine driven through
// BAR MMIO the way the kernel's selftest driver drives it, and the copy,
// completion and MSI-X checked -- plus the unmapped-IOVA error cases.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VFIO } from '../uapi/ioctls.js';
import * as S from '../uapi/structs.js';
import {
  VFIO_DEVICE_FLAGS, VFIO_GROUP_FLAGS, VFIO_IRQ_INFO, VFIO_IRQ_SET, VFIO_PCI, VFIO_REGION_INFO_CAP, VFIO_REGION_INFO_FLAG,
  VFIO_REQ, vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_info, vfio_group_status, vfio_irq_info,
  vfio_irq_set, vfio_region_info, vfioRegionOffset,
} from '../uapi/vfio.js';
import { CHANCTRL, CHANCMD, CHANERR, CHANSTS, DESC_CTL, INTRCTRL, IOAT, ioatDescriptor } from '../devices/ioat.js';
import { PCI, PCI_COMMAND } from '../devices/pci/pci_regs.js';
import { VtdDevice } from '../drivers/intel_vtd/vtd.js';
import { ObjType } from './object.js';
import { errOf, iommufdCall, structCall, vfioSetup, type TestProcess } from './vfio_test_helpers.js';
import type { BarMapping } from './vfio_device.js';

const CFG = vfioRegionOffset(VFIO_PCI.CONFIG_REGION_INDEX);
const CH = IOAT.CHANNEL;

function cfgRead(p: TestProcess, fd: number, off: number, n: 1 | 2 | 4): number {
  const b = p.pread(fd, n, CFG + BigInt(off));
  assert.equal(b.length, n);
  let v = 0;
  for (let i = n - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}
function cfgWrite(p: TestProcess, fd: number, off: number, n: 1 | 2 | 4, v: number): void {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (v >>> (8 * i)) & 0xff;
  assert.equal(p.pwrite(fd, b, CFG + BigInt(off)), n);
}

/** Bind the cdev to a fresh iommufd and attach it to a new IOAS (the iommufd mode of the selftests). */
function iommufdMode(p: TestProcess) {
  const iommufd = p.openIommu();
  const ioasId = iommufdCall(p, iommufd, 'IOAS_ALLOC', {}).out_ioas_id as number;
  const dev = p.openCdev(0);
  const bind = structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 24, iommufd });
  const att = structCall(p, dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: ioasId });
  return { iommufd, ioasId, dev, devid: bind.out.out_devid, hwptId: att.out.pt_id };
}

/** Map `len` bytes of fresh shared memory at `iova`; returns the user address. */
function mapAt(p: TestProcess, iommufd: number, ioasId: number, iova: bigint, len: number): bigint {
  const va = p.mem.mmap(len, { shared: true });
  iommufdCall(p, iommufd, 'IOAS_MAP', { flags: 1 | 2 | 4, ioas_id: ioasId, user_va: va, length: BigInt(len), iova });
  return va;
}

/** What the selftest's ioat driver does, in TypeScript (init, memcpy start/wait, send_msi, reset). */
class IoatDriver {
  readonly bar: BarMapping;
  readonly irq: ReturnType<TestProcess['eventfd']>;
  constructor(readonly p: TestProcess, readonly dev: number, readonly descVa: bigint, readonly descIova: bigint) {
    this.bar = p.mmap(dev, vfioRegionOffset(0), 16384n);
    this.irq = p.eventfd();
  }
  status(): number {
    return Number(this.bar.read(CH + IOAT.CHANSTS, 8) & CHANSTS.STATUS_MASK);
  }
  reset(): void {
    const errs = cfgRead(this.p, this.dev, IOAT.PCI_CHANERR_INT, 4);
    cfgWrite(this.p, this.dev, IOAT.PCI_CHANERR_INT, 4, errs);
    cfgWrite(this.p, this.dev, IOAT.PCI_CHANERR_INT, 4, cfgRead(this.p, this.dev, IOAT.PCI_DMAUNCERRSTS, 4));
    const e = this.bar.read(CH + IOAT.CHANERR, 4);
    this.bar.write(CH + IOAT.CHANERR, 4, e);
    this.bar.write(CH + IOAT.CHANCMD, 1, BigInt(CHANCMD.RESET));
    assert.equal(Number(this.bar.read(CH + IOAT.CHANCMD, 1)) & CHANCMD.RESET, 0);
    assert.equal(this.status(), CHANSTS.HALTED);
  }
  init(): number {
    assert.equal(Number(this.bar.read(IOAT.CBVER, 1)), 0x33);
    cfgWrite(this.p, this.dev, PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER | PCI_COMMAND.INTX_DISABLE);
    this.reset();
    this.bar.write(IOAT.INTRCTRL, 1, BigInt(INTRCTRL.MSIX_VECTOR_CONTROL));
    const fds = new Uint8Array(4);
    new DataView(fds.buffer).setInt32(0, this.irq.fd, true);
    structCall(this.p, this.dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, {
      argsz: 24, flags: VFIO_IRQ_SET.DATA_EVENTFD | VFIO_IRQ_SET.ACTION_TRIGGER, index: VFIO_PCI.MSIX_IRQ_INDEX, start: 0, count: 1,
    }, { tail: fds });
    return 2 ** Number(this.bar.read(IOAT.XFERCAP, 1));
  }
  start(src: bigint, dst: bigint, size: number, count: number, intEn = false): void {
    this.p.mem.write(this.descVa, ioatDescriptor({ size, ctl: intEn ? DESC_CTL.INT_EN : 0, src, dst, next: this.descIova }));
    this.bar.write(CH + IOAT.CHAINADDR, 8, this.descIova);
    this.bar.write(CH + IOAT.CHANCTRL, 2, BigInt(CHANCTRL.INT_REARM | CHANCTRL.ANY_ERR_ABORT_EN));
    this.bar.write(CH + IOAT.DMACOUNT, 2, BigInt(count));
  }
  /** memcpy_wait: 0 on DONE (then SUSPENDED), -1 on HALTED (after printing and resetting). */
  wait(): number {
    for (let spins = 0; ; spins++) {
      const s = this.status();
      if (s === CHANSTS.DONE) break;
      if (s === CHANSTS.HALTED) {
        this.reset();
        return -1;
      }
      assert.ok(spins < 1000, 'engine never finished');
    }
    this.bar.write(CH + IOAT.CHANCMD, 1, BigInt(CHANCMD.SUSPEND));
    assert.equal(this.status(), CHANSTS.SUSPENDED);
    return 0;
  }
}

const DRIVER_IOVA = 0x1_0000_0000n;
const COPY_IOVA = 0x4000_0000n;
const UNMAPPED_IOVA = 0x8000_0000n;

function ioatSetup(machine?: string) {
  const { emu, m, p } = vfioSetup({ machine });
  const io = iommufdMode(p);
  const descVa = mapAt(p, io.iommufd, io.ioasId, DRIVER_IOVA, 0x10000);
  const copyVa = mapAt(p, io.iommufd, io.ioasId, COPY_IOVA, 0x40000);
  const drv = new IoatDriver(p, io.dev, descVa, DRIVER_IOVA);
  const maxCopy = drv.init();
  return { emu, m, p, io, drv, copyVa, maxCopy };
}

test('cdev + iommufd: bind gives a DEVICE, attach to an IOAS gives an auto HWPT on a VT-d domain', () => {
  const { p, m } = vfioSetup();
  const io = iommufdMode(p);
  const ctx = p.ctxOf(io.iommufd);
  assert.equal(ctx.objects.find(io.devid, ObjType.DEVICE)?.type, ObjType.DEVICE);
  assert.equal(ctx.objects.find(io.hwptId, ObjType.HWPT_PAGING)?.type, ObjType.HWPT_PAGING);
  assert.notEqual(io.hwptId, io.ioasId);
  const vtd = m.devices[0]!.iommuDev as VtdDevice;
  assert.ok(vtd.attached, 'the RID context points at the auto domain');
  // The IOAS reports the VT-d geometry: 48 bits minus the MSI window.
  const arr = p.mem.alloc(16 * 4);
  const r = iommufdCall(p, io.iommufd, 'IOAS_IOVA_RANGES', { ioas_id: io.ioasId, num_iovas: 4, allowed_iovas: arr });
  assert.equal(r.num_iovas, 2);
  const dv = new DataView(p.mem.read(arr, 32).buffer);
  assert.deepEqual([dv.getBigUint64(0, true), dv.getBigUint64(8, true), dv.getBigUint64(16, true), dv.getBigUint64(24, true)],
    [0n, 0xfedfffffn, 0xfef00000n, 0xffffffffffffn]);
});

test('GET_INFO, REGION_INFO (config, BAR0 with the MSIX_MAPPABLE capability) and IRQ_INFO', () => {
  const { p } = vfioSetup();
  const { dev } = iommufdMode(p);
  const info = structCall(p, dev, VFIO_REQ.DEVICE_GET_INFO, vfio_device_info, { argsz: 24 }).out;
  assert.equal(info.flags, VFIO_DEVICE_FLAGS.PCI | VFIO_DEVICE_FLAGS.RESET);
  assert.equal(info.num_regions, 9);
  assert.equal(info.num_irqs, 5);
  const cfg = structCall(p, dev, VFIO_REQ.DEVICE_GET_REGION_INFO, vfio_region_info, { argsz: 32, index: 7 }).out;
  assert.equal(cfg.size, 4096n);
  assert.equal(cfg.flags, VFIO_REGION_INFO_FLAG.READ | VFIO_REGION_INFO_FLAG.WRITE);
  assert.equal(cfg.offset, 0x70000000000n);
  // The library's 32-byte buffer: CAPS set, argsz raised to 40, no chain copied.
  const bar = structCall(p, dev, VFIO_REQ.DEVICE_GET_REGION_INFO, vfio_region_info, { argsz: 32, index: 0 }).out;
  assert.equal(bar.size, 16384n);
  assert.equal(bar.flags, VFIO_REGION_INFO_FLAG.READ | VFIO_REGION_INFO_FLAG.WRITE | VFIO_REGION_INFO_FLAG.MMAP | VFIO_REGION_INFO_FLAG.CAPS);
  assert.equal(bar.argsz, 40);
  assert.equal(bar.cap_offset, 0);
  const big = structCall(p, dev, VFIO_REQ.DEVICE_GET_REGION_INFO, vfio_region_info, { argsz: 40, index: 0 }, { room: 8 });
  assert.equal(big.out.cap_offset, 32);
  const capDv = new DataView(big.bytes.buffer, big.bytes.byteOffset + 32, 8);
  assert.deepEqual([capDv.getUint16(0, true), capDv.getUint16(2, true), capDv.getUint32(4, true)], [VFIO_REGION_INFO_CAP.MSIX_MAPPABLE, 1, 0]);
  // BAR1 (the upper half of the 64-bit BAR0) and BAR2..5: no region.
  for (const index of [1, 2, 5]) {
    const r = structCall(p, dev, VFIO_REQ.DEVICE_GET_REGION_INFO, vfio_region_info, { argsz: 32, index }).out;
    assert.equal(r.size, 0n);
    assert.equal(r.flags, 0);
  }
  const irq = (index: number) => structCall(p, dev, VFIO_REQ.DEVICE_GET_IRQ_INFO, vfio_irq_info, { argsz: 16, index }).out;
  assert.deepEqual([irq(1).count, irq(1).flags], [1, VFIO_IRQ_INFO.EVENTFD | VFIO_IRQ_INFO.NORESIZE]);
  assert.deepEqual([irq(2).count, irq(2).flags], [1, VFIO_IRQ_INFO.EVENTFD]);
  assert.equal(irq(0).count, 0);
  assert.equal(irq(3).count, 1);
});

test('config space through pread: identity equals the device, bus master starts clear, command reads back', () => {
  const { p } = vfioSetup();
  const { dev } = iommufdMode(p);
  assert.equal(cfgRead(p, dev, PCI.VENDOR_ID, 2), 0x8086);
  assert.equal(cfgRead(p, dev, PCI.DEVICE_ID, 2), 0x2021);
  assert.equal(cfgRead(p, dev, PCI.COMMAND, 2) & PCI_COMMAND.MASTER, 0);
  const cmd = cfgRead(p, dev, PCI.COMMAND, 2);
  cfgWrite(p, dev, PCI.COMMAND, 2, cmd | PCI_COMMAND.MASTER);
  assert.equal(cfgRead(p, dev, PCI.COMMAND, 2), cmd | PCI_COMMAND.MASTER);
  cfgWrite(p, dev, PCI.COMMAND, 2, cmd);
  assert.equal(cfgRead(p, dev, PCI.COMMAND, 2), cmd);
  // A 4-byte read at an odd offset is split into aligned pieces.
  assert.equal(p.pread(dev, 4, CFG + 1n).length, 4);
});

test('IOAT memcpy through the IOMMU: data copied, DONE then SUSPENDED, no interrupt', () => {
  const { p, drv, copyVa, maxCopy } = ioatSetup();
  assert.equal(maxCopy, 16384);
  const data = Uint8Array.from({ length: 0x20000 }, (_, i) => (i * 13 + 5) & 0xff);
  p.mem.write(copyVa, data);
  // In max_memcpy_size chunks (8 x 16 KiB), one start + wait each, as memcpy_success does.
  for (let off = 0; off < 0x20000; off += maxCopy) {
    drv.start(COPY_IOVA + BigInt(off), COPY_IOVA + 0x20000n + BigInt(off), maxCopy, 1);
    assert.equal(drv.wait(), 0);
  }
  assert.deepEqual(p.mem.read(copyVa + 0x20000n, 0x20000), data);
  assert.equal(drv.irq.efd.read(), 'EAGAIN');
});

test('send_msi: a one-descriptor copy with int_en increments the MSI-X eventfd exactly once', () => {
  const { drv } = ioatSetup();
  drv.start(DRIVER_IOVA + 0x100n, DRIVER_IOVA + 0x108n, 8, 1, true);
  assert.equal(drv.wait(), 0);
  assert.equal(drv.irq.efd.read(), 1n);
  assert.equal(drv.irq.efd.read(), 'EAGAIN');
});

test('memcpy from an unmapped IOVA: channel HALTED with READ_DATA_ERR (CHANERR and config 0x180), no MSI, VT-d logs the fault', () => {
  const { p, io, drv, m } = ioatSetup();
  drv.start(UNMAPPED_IOVA, COPY_IOVA, 64, 1, true);
  assert.equal(drv.status(), CHANSTS.HALTED);
  assert.equal(Number(drv.bar.read(CH + IOAT.CHANERR, 4)), CHANERR.READ_DATA_ERR);
  assert.equal(cfgRead(p, io.dev, IOAT.PCI_CHANERR_INT, 4), CHANERR.READ_DATA_ERR);
  assert.equal(drv.wait(), -1);
  assert.equal(drv.irq.efd.read(), 'EAGAIN');
  const unit = (m.devices[0]!.iommuDev as VtdDevice).unit;
  assert.equal(unit.faults.at(-1)!.iova, UNMAPPED_IOVA);
  // After the reset the next copy works (mix_and_match).
  drv.start(DRIVER_IOVA + 0x100n, DRIVER_IOVA + 0x108n, 8, 1, true);
  assert.equal(drv.wait(), 0);
  assert.equal(drv.irq.efd.read(), 1n);
});

test('memcpy to an unmapped IOVA: WRITE_DATA_ERR and nothing written anywhere', () => {
  const { p, drv, copyVa } = ioatSetup();
  p.mem.write(copyVa, Uint8Array.of(1, 2, 3, 4));
  drv.start(COPY_IOVA, UNMAPPED_IOVA, 4, 1);
  assert.equal(Number(drv.bar.read(CH + IOAT.CHANERR, 4)), CHANERR.WRITE_DATA_ERR);
  assert.equal(drv.wait(), -1);
});

test('unmapping the destination revokes the device access: the next copy faults', () => {
  const { p, io, drv } = ioatSetup();
  drv.start(COPY_IOVA, COPY_IOVA + 0x20000n, 4096, 1);
  assert.equal(drv.wait(), 0);
  iommufdCall(p, io.iommufd, 'IOAS_UNMAP', { ioas_id: io.ioasId, iova: COPY_IOVA, length: 0x40000n });
  drv.start(DRIVER_IOVA + 0x100n, COPY_IOVA + 0x20000n, 8, 1);
  assert.equal(Number(drv.bar.read(CH + IOAT.CHANERR, 4)), CHANERR.WRITE_DATA_ERR);
});

test('a read-only mapping: the engine may read it but a write faults (permission)', () => {
  const { p, io, drv } = ioatSetup();
  const va = p.mem.mmap(4096, { shared: true });
  iommufdCall(p, io.iommufd, 'IOAS_MAP', { flags: 1 | 4, ioas_id: io.ioasId, user_va: va, length: 4096n, iova: 0x9000_0000n });
  drv.start(0x9000_0000n, COPY_IOVA, 8, 1);
  assert.equal(drv.wait(), 0);
  drv.start(COPY_IOVA, 0x9000_0000n, 8, 1);
  assert.equal(Number(drv.bar.read(CH + IOAT.CHANERR, 4)), CHANERR.WRITE_DATA_ERR);
});

test('detached from its IOAS the device DMA is blocked; re-attached it works', () => {
  const { p, io, drv } = ioatSetup();
  structCall(p, io.dev, VFIO_REQ.DEVICE_DETACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 8 }, { size: 8 });
  drv.start(COPY_IOVA, COPY_IOVA + 0x100n, 8, 1);
  assert.equal(drv.status(), CHANSTS.HALTED);
  drv.reset();
  structCall(p, io.dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 12, pt_id: io.ioasId }, { size: 12 });
  drv.start(COPY_IOVA, COPY_IOVA + 0x100n, 8, 1);
  assert.equal(drv.wait(), 0);
});

test('storm: one doorbell of 65535 descriptors completes', () => {
  const { drv } = ioatSetup();
  drv.start(COPY_IOVA, COPY_IOVA + 0x20000n, 8, 65535);
  assert.equal(drv.wait(), 0);
});

test('MSI (not MSI-X): enable, loopback trigger, device interrupt, disable', () => {
  const { p, io, drv } = ioatSetup();
  // MSI-X is active: MSI cannot be enabled beside it.
  const e = p.eventfd();
  const fds = new Uint8Array(4);
  new DataView(fds.buffer).setInt32(0, e.fd, true);
  const set = (flags: number, index: number, start: number, count: number, tail?: Uint8Array) =>
    structCall(p, io.dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, { argsz: 20 + (tail?.length ?? 0), flags, index, start, count }, { tail });
  assert.equal(errOf(() => set(VFIO_IRQ_SET.DATA_EVENTFD | VFIO_IRQ_SET.ACTION_TRIGGER, 1, 0, 1, fds)), 'EINVAL');
  set(VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_TRIGGER, 2, 0, 0);
  assert.equal(drv.irq.efd.refs, 0, 'disabling MSI-X released its eventfd');
  set(VFIO_IRQ_SET.DATA_EVENTFD | VFIO_IRQ_SET.ACTION_TRIGGER, 1, 0, 1, fds);
  assert.equal(e.efd.read(), 'EAGAIN');
  set(VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_TRIGGER, 1, 0, 1);
  assert.equal(e.efd.read(), 1n);
  drv.start(DRIVER_IOVA + 0x100n, DRIVER_IOVA + 0x108n, 8, 1, true);
  assert.equal(drv.wait(), 0);
  assert.equal(e.efd.read(), 1n);
  set(VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_TRIGGER, 1, 0, 0);
  assert.equal(e.efd.refs, 0);
});

test('VFIO_DEVICE_RESET: registers back to power-on, config state kept, interrupts still delivered', () => {
  const { p, io, drv } = ioatSetup();
  assert.equal(structCall(p, io.dev, VFIO_REQ.DEVICE_RESET, vfio_device_info, {}, { size: 0 }).ret, 0);
  assert.ok(cfgRead(p, io.dev, PCI.COMMAND, 2) & PCI_COMMAND.MASTER, 'bus master restored with the saved state');
  assert.equal(Number(drv.bar.read(IOAT.INTRCTRL, 1)), 0, 'INTRCTRL back to its power-on value');
  drv.bar.write(IOAT.INTRCTRL, 1, BigInt(INTRCTRL.MSIX_VECTOR_CONTROL));
  drv.reset();
  drv.start(DRIVER_IOVA + 0x100n, DRIVER_IOVA + 0x108n, 8, 1, true);
  assert.equal(drv.wait(), 0);
  assert.equal(drv.irq.efd.read(), 1n);
});

test('the bound device is an ordinary iommufd DEVICE: GET_HW_INFO (VT-d), HWPT_ALLOC, no vIOMMU, no nesting parent', () => {
  const { p } = vfioSetup();
  const io = iommufdMode(p);
  const data = p.mem.alloc(24);
  const hw = iommufdCall(p, io.iommufd, 'GET_HW_INFO', { dev_id: io.devid, data_len: 24, data_uptr: data });
  assert.equal(hw.out_data_type, 1);
  assert.equal(hw.data_len, 24);
  assert.equal(hw.out_max_pasid_log2, 0);
  const hwpt = iommufdCall(p, io.iommufd, 'HWPT_ALLOC', { dev_id: io.devid, pt_id: io.ioasId }).out_hwpt_id;
  assert.ok(hwpt > 0);
  // Replace the auto domain with the manual HWPT through ATTACH again.
  const r = structCall(p, io.dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: hwpt });
  assert.equal(r.out.pt_id, hwpt);
  assert.equal(p.ctxOf(io.iommufd).objects.find(io.hwptId, ObjType.HWPT_PAGING), undefined, 'the unused auto domain went away');
  assert.equal(errOf(() => iommufdCall(p, io.iommufd, 'HWPT_ALLOC', { dev_id: io.devid, pt_id: io.ioasId, flags: 1 })), 'EOPNOTSUPP');
  assert.equal(errOf(() => iommufdCall(p, io.iommufd, 'VIOMMU_ALLOC', { dev_id: io.devid, hwpt_id: hwpt, type: 1 })), 'EOPNOTSUPP');
  // A fault-capable HWPT needs PRI, which the IOAT does not have.
  const fault = iommufdCall(p, io.iommufd, 'FAULT_QUEUE_ALLOC', {});
  const fhwpt = iommufdCall(p, io.iommufd, 'HWPT_ALLOC', { dev_id: io.devid, pt_id: io.ioasId, flags: 4, fault_id: fault.out_fault_id }).out_hwpt_id;
  assert.equal(errOf(() => structCall(p, io.dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: fhwpt })), 'ENODEV');
  // DEVICE objects are not user-destroyable.
  assert.equal(errOf(() => iommufdCall(p, io.iommufd, 'DESTROY', { id: io.devid })), 'EBUSY');
});

test('closing the device fd unbinds: DEVICE and auto HWPT gone, IOAS destroyable, device reset for the next user', () => {
  const { p, io, m } = (() => {
    const s = vfioSetup();
    return { ...s, io: iommufdMode(s.p) };
  })();
  const ctx = p.ctxOf(io.iommufd);
  cfgWrite(p, io.dev, PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  p.close(io.dev);
  assert.equal(ctx.objects.find(io.devid, ObjType.DEVICE), undefined);
  assert.equal(ctx.objects.find(io.hwptId, ObjType.HWPT_PAGING), undefined);
  iommufdCall(p, io.iommufd, 'DESTROY', { id: io.ioasId });
  assert.equal(m.devices[0]!.pci.configRead(PCI.COMMAND, 2) & PCI_COMMAND.MASTER, 0);
  assert.equal(m.vfio.devices[0]!.openCount, 0);
  // The cdev can be bound again.
  const again = iommufdMode(p);
  assert.ok(again.devid > 0);
});

test('process exit releases everything: device unbound, eventfds put, iommufd torn down', () => {
  const { p, io, drv, m } = ioatSetup();
  assert.equal(drv.irq.efd.refs, 1);
  const ctx = p.ctxOf(io.iommufd);
  p.exit();
  assert.equal(drv.irq.efd.refs, 0);
  assert.ok(ctx.closed);
  assert.equal(m.vfio.devices[0]!.idev, null);
  assert.equal(m.vfio.devices[0]!.openCount, 0);
});

test('group + container (/dev/vfio/vfio served by iommufd): SET_CONTAINER, SET_IOMMU, GET_DEVICE_FD, MAP_DMA, DMA works', () => {
  const { p, m } = vfioSetup();
  const container = p.openContainer();
  assert.equal(p.ioctl(container, VFIO.GET_API_VERSION, 0n), 0);
  const group = p.openGroup(3);
  const st = () => structCall(p, group, VFIO_REQ.GROUP_GET_STATUS, vfio_group_status, { argsz: 8 }).out.flags;
  assert.equal(st(), VFIO_GROUP_FLAGS.VIABLE);
  assert.equal(p.setContainer(group, container), 0);
  assert.equal(st(), VFIO_GROUP_FLAGS.VIABLE | VFIO_GROUP_FLAGS.CONTAINER_SET);
  assert.equal(p.ioctl(container, VFIO.CHECK_EXTENSION, BigInt(VFIO.TYPE1v2_IOMMU)), 1);
  assert.equal(p.ioctl(container, VFIO.SET_IOMMU, BigInt(VFIO.TYPE1v2_IOMMU)), 0);
  const dev = p.getDeviceFd(group, '0000:00:03.0');
  assert.ok(dev >= 3);
  // The device is bound and attached to the compat IOAS.
  const ctx = p.ctxOf(container);
  const ioas = ctx.vfioIoas!;
  assert.equal(ioas.type, ObjType.IOAS);
  assert.ok(m.vfio.devices[0]!.iommufdAttached);
  // VFIO_IOMMU_MAP_DMA a buffer; the IOAT copies inside it.
  const va = p.mem.mmap(0x10000, { shared: true });
  structCall(p, container, VFIO.IOMMU_MAP_DMA, S.vfio_iommu_type1_dma_map, { argsz: 32, flags: 3, vaddr: va, iova: DRIVER_IOVA, size: 0x10000n });
  const drv = new IoatDriver(p, dev, va, DRIVER_IOVA);
  drv.init();
  p.mem.write(va + 0x200n, Uint8Array.of(7, 7, 7, 7, 7, 7, 7, 7));
  drv.start(DRIVER_IOVA + 0x200n, DRIVER_IOVA + 0x300n, 8, 1, true);
  assert.equal(drv.wait(), 0);
  assert.deepEqual(p.mem.read(va + 0x300n, 8), Uint8Array.of(7, 7, 7, 7, 7, 7, 7, 7));
  assert.equal(drv.irq.efd.read(), 1n);
  // IOMMU_GET_INFO's IOVA_RANGE capability shows the VT-d ranges.
  const info = structCall(p, container, VFIO.IOMMU_GET_INFO, S.vfio_iommu_type1_info, { argsz: 24 + 64 }, { size: 24, room: 64 });
  assert.ok(info.out.iova_pgsizes & 4096n);
  // Closing: the device fd holds the group; the group holds the container.
  p.close(group);
  p.close(container);
  assert.ok(!ctx.closed);
  p.close(dev);
  assert.ok(ctx.closed);
  assert.equal(m.vfio.devices[0]!.idev, null);
});

test('iommufd as the container (iommufd_compat modes): /dev/iommu works for SET_CONTAINER too', () => {
  const { p } = vfioSetup();
  const iommufd = p.openIommu();
  const group = p.openGroup(3);
  p.setContainer(group, iommufd);
  assert.equal(p.ioctl(iommufd, VFIO.SET_IOMMU, BigInt(VFIO.TYPE1_IOMMU)), 0);
  const dev = p.getDeviceFd(group, '0000:00:03.0');
  // The IOMMU_* ioctls see the compat IOAS and the device's auto domain.
  const vfioIoas = iommufdCall(p, iommufd, 'VFIO_IOAS', { op: 0 });
  assert.ok(vfioIoas.ioas_id > 0);
  assert.equal(errOf(() => iommufdCall(p, iommufd, 'DESTROY', { id: vfioIoas.ioas_id })), 'EBUSY');
  p.close(dev);
  iommufdCall(p, iommufd, 'DESTROY', { id: vfioIoas.ioas_id });
});

test('behind an SMMUv3 (machine ioat-smmu): the same driver flow copies through the SMMU walk; vIOMMU and vDEVICE work', () => {
  const { p, io, drv, copyVa, m } = ioatSetup('ioat-smmu');
  p.mem.write(copyVa, Uint8Array.of(5, 6, 7, 8));
  drv.start(COPY_IOVA, COPY_IOVA + 0x100n, 4, 1, true);
  assert.equal(drv.wait(), 0);
  assert.deepEqual(p.mem.read(copyVa + 0x100n, 4), Uint8Array.of(5, 6, 7, 8));
  assert.equal(drv.irq.efd.read(), 1n);
  drv.start(UNMAPPED_IOVA, COPY_IOVA, 4, 1);
  assert.equal(Number(drv.bar.read(CH + IOAT.CHANERR, 4)), CHANERR.READ_DATA_ERR);
  // The device is an SMMUv3 master: GET_HW_INFO says so, a nesting parent and a vIOMMU can be made.
  const hw = iommufdCall(p, io.iommufd, 'GET_HW_INFO', { dev_id: io.devid, data_len: 0, data_uptr: 0n });
  assert.equal(hw.out_data_type, 2);
  const parent = iommufdCall(p, io.iommufd, 'HWPT_ALLOC', { dev_id: io.devid, pt_id: io.ioasId, flags: 1 }).out_hwpt_id;
  const viommu = iommufdCall(p, io.iommufd, 'VIOMMU_ALLOC', { dev_id: io.devid, hwpt_id: parent, type: 1 }).out_viommu_id;
  assert.ok(viommu > 0);
  assert.ok(iommufdCall(p, io.iommufd, 'VDEVICE_ALLOC', { viommu_id: viommu, dev_id: io.devid, virt_id: 0x18n }).out_vdevice_id > 0);
  assert.equal(m.devices[0]!.iommuDev.constructor.name, 'SmmuMaster');
});
