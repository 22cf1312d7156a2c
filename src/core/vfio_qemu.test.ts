// QEMU 10.0's vfio-pci realize, reset, MSI-X and exit sequence on the iommufd
// backend (hw/vfio/iommufd.c, device.c, pci.c, backends/iommufd.c), replayed in
// process against the emulated IOAT: every call with the struct sizes QEMU's
// headers give it, and the answers a 6.12 kernel gives for this function on the
// root bus. What the shim must add around it (sysfs, fstat, mmap) is listed in
// docs/QEMU.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  VFIO_DEVICE_FEATURE, VFIO_DEVICE_FLAGS, VFIO_IRQ_INFO, VFIO_IRQ_SET, VFIO_PCI, VFIO_REGION_INFO_CAP,
  VFIO_REGION_INFO_FLAG, VFIO_REQ, vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_feature,
  vfio_device_info, vfio_irq_info, vfio_irq_set, vfio_pci_hot_reset_info, vfio_region_info, vfioRegionOffset,
} from '../uapi/vfio.js';
import { CHANCTRL, CHANSTS, DESC_CTL, INTRCTRL, IOAT, ioatDescriptor } from '../devices/ioat.js';
import { PCI, PCI_COMMAND } from '../devices/pci/pci_regs.js';
import { ObjType } from './object.js';
import { errOf, iommufdCall, structCall, vfioSetup, type TestProcess } from './vfio_test_helpers.js';

const CFG = vfioRegionOffset(VFIO_PCI.CONFIG_REGION_INDEX);
const RAM_TOP = 0x800000n; // 8 MiB of "guest RAM" is enough for the sequence

function le(b: Uint8Array): number {
  let v = 0;
  for (let i = b.length - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}
function leBytes(v: number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (v >>> (8 * i)) & 0xff;
  return b;
}

/** SET_IRQS with DATA_EVENTFD and one fd per vector (QEMU's vfio_device_irq_set_signaling / enable_vectors). */
function setIrqFds(p: TestProcess, dev: number, index: number, start: number, fds: number[]): number {
  const tail = new Uint8Array(4 * fds.length);
  fds.forEach((fd, i) => new DataView(tail.buffer).setInt32(4 * i, fd, true));
  return structCall(p, dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, {
    argsz: 20 + tail.length, flags: VFIO_IRQ_SET.DATA_EVENTFD | VFIO_IRQ_SET.ACTION_TRIGGER, index, start, count: fds.length,
  }, { tail }).ret;
}
/** vfio_device_irq_disable: DATA_NONE | TRIGGER, count 0. */
function irqDisable(p: TestProcess, dev: number, index: number): number {
  return structCall(p, dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, {
    argsz: 20, flags: VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_TRIGGER, index, start: 0, count: 0,
  }).ret;
}

/** vfio_device_get_region_info: argsz = sizeof, retried with the argsz the kernel asks for. */
function regionInfo(p: TestProcess, dev: number, index: number) {
  let argsz = 32;
  for (;;) {
    const r = structCall(p, dev, VFIO_REQ.DEVICE_GET_REGION_INFO, vfio_region_info, { argsz, index }, { room: argsz - 32 });
    if (r.out.argsz <= argsz) return r;
    argsz = r.out.argsz;
  }
}

/** What QEMU does from `-device vfio-pci,host=...,iommufd=...` to a realized device. */
function qemuRealize(p: TestProcess) {
  // iommufd_cdev_getfd (sysfs + open_cdev) then iommufd_backend_connect.
  const dev = p.openCdev(0);
  const iommufd = p.openIommu();
  const bind = structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 16, flags: 0, iommufd }, { size: 16 });
  assert.equal(bind.ret, 0);
  const devid = bind.out.out_devid;
  const ioasId = iommufdCall(p, iommufd, 'IOAS_ALLOC', { flags: 0 }).out_ioas_id as number;
  // iommufd_cdev_autodomains_get: hardware info without data, then an HWPT (dirty tracking only if offered).
  const hw = iommufdCall(p, iommufd, 'GET_HW_INFO', { dev_id: devid, data_len: 0, data_uptr: 0n });
  const dirty = (Number(hw.out_capabilities) & 1) !== 0;
  const hwptId = iommufdCall(p, iommufd, 'HWPT_ALLOC', {
    flags: dirty ? 2 : 0, dev_id: devid, pt_id: ioasId, data_type: 0, data_len: 0, data_uptr: 0n,
  }).out_hwpt_id as number;
  const att = structCall(p, dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 12, flags: 0, pt_id: hwptId }, { size: 12 });
  assert.equal(att.out.pt_id, hwptId);
  // iommufd_cdev_get_info_iova_range: size-only first (EMSGSIZE tells the count), then the array.
  assert.equal(errOf(() => iommufdCall(p, iommufd, 'IOAS_IOVA_RANGES', { ioas_id: ioasId, num_iovas: 0, allowed_iovas: 0n })), 'EMSGSIZE');
  const arr = p.mem.alloc(32);
  const ranges = iommufdCall(p, iommufd, 'IOAS_IOVA_RANGES', { ioas_id: ioasId, num_iovas: 2, allowed_iovas: arr });
  assert.equal(ranges.num_iovas, 2);
  assert.equal(ranges.out_iova_alignment, 4096n);
  // The memory listener: RAM below the VGA hole, the BIOS ROM read-only, RAM above 1 MiB.
  const ram = p.mem.mmap(Number(RAM_TOP), {});
  const map = (iova: bigint, len: bigint, ro = false) => iommufdCall(p, iommufd, 'IOAS_MAP', {
    flags: 1 /* FIXED_IOVA */ | 4 /* READABLE */ | (ro ? 0 : 2), ioas_id: ioasId, user_va: ram + iova, iova, length: len,
  });
  map(0n, 0xa0000n);
  map(0xc0000n, 0x40000n, true);
  map(0x100000n, RAM_TOP - 0x100000n);
  const info = structCall(p, dev, VFIO_REQ.DEVICE_GET_INFO, vfio_device_info, { argsz: 24 }).out;
  // vfio_device_hiod_create_and_realize: hardware info into QEMU's VendorCaps union (40 bytes).
  const caps = p.mem.alloc(40);
  p.mem.write(caps, new Uint8Array(40).fill(0xee));
  const hw2 = iommufdCall(p, iommufd, 'GET_HW_INFO', { dev_id: devid, data_len: 40, data_uptr: caps });
  return { dev, iommufd, devid, ioasId, hwptId, ram, info, hw, hw2, caps };
}

test('QEMU 10 realize on iommufd: bind, auto HWPT on an IOAS, IOVA ranges, RAM maps, device and IOMMU info', () => {
  const { p } = vfioSetup({ profile: '6.12' });
  const q = qemuRealize(p);
  const ctx = p.ctxOf(q.iommufd);
  assert.equal(ctx.objects.find(q.hwptId, ObjType.HWPT_PAGING)?.type, ObjType.HWPT_PAGING);
  // VT-d: no dirty tracking on this unit, so QEMU allocates a plain HWPT.
  assert.equal(q.hw.out_data_type, 1 /* IOMMU_HW_INFO_TYPE_INTEL_VTD */);
  assert.equal(Number(q.hw.out_capabilities) & 1, 0);
  assert.equal(q.info.flags, VFIO_DEVICE_FLAGS.PCI | VFIO_DEVICE_FLAGS.RESET);
  assert.equal(q.info.num_regions, 9);
  assert.equal(q.info.num_irqs, 5);
  assert.equal(q.info.cap_offset, 0);
  // The vtd data is 24 bytes: data_len comes back 24, the rest of QEMU's union is zeroed.
  assert.equal(q.hw2.data_len, 24);
  const vendor = p.mem.read(q.caps, 40);
  assert.ok(vendor.subarray(24).every((b) => b === 0));
  assert.notEqual(new DataView(vendor.buffer, vendor.byteOffset).getBigUint64(8, true), 0n, 'cap_reg');
});

test('QEMU 10 region and IRQ probing: BAR0 mappable with MSIX_MAPPABLE, no ROM, config 4 KiB, ERR/REQ/MSI-X counts', () => {
  const { p } = vfioSetup({ profile: '6.12' });
  const { dev } = qemuRealize(p);
  const F = VFIO_REGION_INFO_FLAG;
  const bar0 = regionInfo(p, dev, 0);
  assert.equal(bar0.out.size, 16384n);
  assert.equal(bar0.out.flags, F.READ | F.WRITE | F.MMAP | F.CAPS);
  assert.equal(bar0.out.argsz, 40);
  assert.equal(bar0.out.cap_offset, 32);
  const cap = new DataView(bar0.bytes.buffer, bar0.bytes.byteOffset + 32, 8);
  assert.deepEqual([cap.getUint16(0, true), cap.getUint32(4, true)], [VFIO_REGION_INFO_CAP.MSIX_MAPPABLE, 0]);
  for (const index of [1, 2, 3, 4, 5, VFIO_PCI.ROM_REGION_INDEX]) {
    const r = regionInfo(p, dev, index).out;
    assert.deepEqual([r.size, r.flags], [0n, 0], `region ${index}`);
  }
  const cfg = regionInfo(p, dev, VFIO_PCI.CONFIG_REGION_INDEX).out;
  assert.deepEqual([cfg.size, cfg.flags, cfg.offset], [4096n, F.READ | F.WRITE, CFG]);
  // No VGA region: EINVAL, which QEMU only asks for with x-vga=on.
  assert.equal(errOf(() => regionInfo(p, dev, VFIO_PCI.VGA_REGION_INDEX)), 'EINVAL');
  const irq = (index: number) => structCall(p, dev, VFIO_REQ.DEVICE_GET_IRQ_INFO, vfio_irq_info, { argsz: 16, index }).out;
  // ERR: one (a PCIe function) => QEMU turns on AER forwarding; REQ: one; MSI-X resizable (no NORESIZE).
  assert.equal(irq(VFIO_PCI.ERR_IRQ_INDEX).count, 1);
  assert.equal(irq(VFIO_PCI.REQ_IRQ_INDEX).count, 1);
  const msix = irq(VFIO_PCI.MSIX_IRQ_INDEX);
  assert.equal(msix.count, 1);
  assert.equal(msix.flags & VFIO_IRQ_INFO.NORESIZE, 0);
  // The whole config space in one pread, as vfio_pci_realize reads it.
  const all = p.pread(dev, 4096, CFG);
  assert.equal(all.length, 4096);
  assert.equal(le(all.subarray(0, 2)), 0x8086);
  assert.equal(le(all.subarray(2, 4)), 0x2021);
  // The interrupt pin reads 0 (no INTx), so QEMU never wires INTx.
  assert.equal(all[PCI.INTERRUPT_PIN], 0);
  // No extended capabilities: QEMU leaves the extended space to the device.
  assert.equal(le(all.subarray(0x100, 0x104)), 0);
});

test('QEMU 10 feature probes: migration and DMA logging are ENOTTY (a migration blocker, no error)', () => {
  const { p } = vfioSetup({ profile: '6.12' });
  const { dev } = qemuRealize(p);
  const F = VFIO_DEVICE_FEATURE;
  const feat = (flags: number, extra: number) => errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_FEATURE, vfio_device_feature,
    { argsz: 8 + extra, flags }, { tail: new Uint8Array(extra) }));
  assert.equal(feat(F.GET | F.MIGRATION, 8), 'ENOTTY');
  assert.equal(feat(F.PROBE | F.DMA_LOGGING_START, 24), 'ENOTTY');
  assert.equal(feat(F.PROBE | F.MIG_DATA_SIZE, 8), 'ENOTTY');
});

test('QEMU 10 reset path: ERR/REQ notifiers, FLR through VFIO_DEVICE_RESET, BARs cleared by pwrite, hot reset refused', () => {
  const { p } = vfioSetup({ profile: '6.12' });
  const { dev } = qemuRealize(p);
  const err = p.eventfd();
  const req = p.eventfd();
  assert.equal(setIrqFds(p, dev, VFIO_PCI.ERR_IRQ_INDEX, 0, [err.fd]), 0);
  assert.equal(setIrqFds(p, dev, VFIO_PCI.REQ_IRQ_INDEX, 0, [req.fd]), 0);
  assert.equal(err.efd.refs, 1);
  // vfio_pci_pre_reset: memory, I/O and bus master off through the config region.
  const cmd = le(p.pread(dev, 2, CFG + BigInt(PCI.COMMAND)));
  assert.equal(p.pwrite(dev, leBytes(cmd & ~(PCI_COMMAND.IO | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER), 2), CFG + BigInt(PCI.COMMAND)), 2);
  assert.equal(structCall(p, dev, VFIO_REQ.DEVICE_RESET, vfio_device_info, { argsz: 0 }, { size: 0 }).ret, 0);
  // vfio_pci_post_reset: a zero written to each of the six BAR registers.
  for (let nr = 0; nr < 6; nr++) assert.equal(p.pwrite(dev, new Uint8Array(4), CFG + BigInt(PCI.BASE_ADDRESS_0 + 4 * nr)), 4);
  // Sizing (the guest's BIOS, through QEMU's config write-through): BAR0 says 16 KiB, 64-bit memory.
  p.pwrite(dev, leBytes(0xffffffff, 4), CFG + BigInt(PCI.BASE_ADDRESS_0));
  assert.equal(le(p.pread(dev, 4, CFG + BigInt(PCI.BASE_ADDRESS_0))) >>> 0, (0xffffc000 | 0x4) >>> 0);
  // A root-bus function has no slot or bus reset: QEMU only asks when FLR is missing, and gets ENODEV.
  assert.equal(errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_GET_PCI_HOT_RESET_INFO, vfio_pci_hot_reset_info, { argsz: 12 })), 'ENODEV');
  // Unregistering the notifiers (unrealize) drops the eventfd references.
  for (const index of [VFIO_PCI.REQ_IRQ_INDEX, VFIO_PCI.ERR_IRQ_INDEX]) {
    assert.equal(structCall(p, dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, {
      argsz: 20, flags: VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_TRIGGER, index, start: 0, count: 0,
    }).ret, 0);
  }
  assert.deepEqual([err.efd.refs, req.efd.refs], [0, 0]);
});

test('QEMU 10 MSI-X: enable with no vector (fd -1), then vector 0 wired alone, the guest driver\'s copy interrupts it', () => {
  const { p } = vfioSetup({ profile: '6.12' });
  const { dev, ram } = qemuRealize(p);
  // The guest's pci_enable_msix (QEMU's vfio_enable_msix_no_vec): MSI-X on, vector 0 without an eventfd.
  assert.equal(setIrqFds(p, dev, VFIO_PCI.MSIX_IRQ_INDEX, 0, [-1]), 0);
  // request_irq -> vector unmasked -> vfio_msix_vector_do_use: wire vector 0 alone (dynamic MSI-X).
  const irq = p.eventfd();
  assert.equal(setIrqFds(p, dev, VFIO_PCI.MSIX_IRQ_INDEX, 0, [irq.fd]), 0);
  // The guest enables memory and bus master (QEMU writes it through).
  const cmd = le(p.pread(dev, 2, CFG + BigInt(PCI.COMMAND)));
  p.pwrite(dev, leBytes(cmd | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER, 2), CFG + BigInt(PCI.COMMAND));
  // ioatdma's self-test in miniature: a copy descriptor with INT_EN and a completion write, addressed by
  // guest-physical address (= IOVA: QEMU mapped RAM 1:1).
  const bar = p.mmap(dev, vfioRegionOffset(0), 16384n);
  const CH = IOAT.CHANNEL;
  const desc = 0x200000n;
  const src = 0x300000n;
  const dst = 0x301000n;
  const compl = 0x302000n;
  p.mem.write(ram + src, Uint8Array.from({ length: 2000 }, (_, i) => i & 0xff));
  p.mem.write(ram + desc, ioatDescriptor({ size: 2000, ctl: DESC_CTL.INT_EN | DESC_CTL.COMPL_WRITE, src, dst, next: desc }));
  bar.write(IOAT.INTRCTRL, 1, BigInt(INTRCTRL.MASTER_INT_EN));
  bar.write(CH + IOAT.CHANCTRL, 2, BigInt(CHANCTRL.INT_REARM | CHANCTRL.ERR_INT_EN | CHANCTRL.ERR_COMPLETION_EN | CHANCTRL.ANY_ERR_ABORT_EN));
  bar.write(CH + IOAT.CHANCMP, 4, compl & 0xffffffffn);
  bar.write(CH + IOAT.CHANCMP + 4, 4, compl >> 32n);
  bar.write(CH + IOAT.CHAINADDR, 4, desc & 0xffffffffn);
  bar.write(CH + IOAT.CHAINADDR + 4, 4, desc >> 32n);
  bar.write(CH + IOAT.DMACOUNT, 2, 1n);
  assert.deepEqual(p.mem.read(ram + dst, 2000), p.mem.read(ram + src, 2000));
  const status = new DataView(p.mem.read(ram + compl, 8).buffer).getBigUint64(0, true);
  assert.equal(status & CHANSTS.STATUS_MASK, BigInt(CHANSTS.DONE));
  assert.equal(status & CHANSTS.ADDR_MASK, desc);
  assert.equal(irq.efd.read(), 1n);
  // The guest disables MSI-X (or the machine resets): all vectors off, the eventfd released.
  assert.equal(irqDisable(p, dev, VFIO_PCI.MSIX_IRQ_INDEX), 0);
  assert.equal(irq.efd.refs, 0);
});

test('QEMU 10 exit without unrealize: closing the fds in fd order frees the device, the HWPT and the IOAS', () => {
  const { p, m } = vfioSetup({ profile: '6.12' });
  const q = qemuRealize(p);
  const irq = p.eventfd();
  setIrqFds(p, q.dev, VFIO_PCI.MSIX_IRQ_INDEX, 0, [irq.fd]);
  const ctx = p.ctxOf(q.iommufd);
  p.exit();
  assert.equal(irq.efd.refs, 0);
  assert.equal(ctx.objects.find(q.devid, ObjType.DEVICE), undefined);
  assert.equal(m.devices[0]!.vfio.openCount, 0);
  // The function is free again: another process binds it.
  const { dev } = qemuRealize(new (p.constructor as new (e: typeof p.emu) => TestProcess)(p.emu));
  assert.ok(dev > 0);
});

test('the trace names and decodes every VFIO device ioctl QEMU makes, told apart from the container requests of the same number', async () => {
  const { TracePrinter } = await import('../server/trace.js');
  const { p, emu } = vfioSetup({ profile: '6.12' });
  const lines: string[] = [];
  const stop = emu.bus.subscribe((e) => {
    const l = TracePrinter.line(emu, e);
    if (l !== null) lines.push(l);
  });
  const { dev } = qemuRealize(p);
  regionInfo(p, dev, 0);
  errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_GET_PCI_HOT_RESET_INFO, vfio_pci_hot_reset_info, { argsz: 12 }));
  errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_FEATURE, vfio_device_feature,
    { argsz: 16, flags: VFIO_DEVICE_FEATURE.GET | VFIO_DEVICE_FEATURE.MIGRATION }, { tail: new Uint8Array(8) }));
  setIrqFds(p, dev, VFIO_PCI.MSIX_IRQ_INDEX, 0, [-1]);
  stop();
  const find = (re: RegExp) => lines.find((l) => re.test(l));
  assert.ok(find(/VFIO_DEVICE_BIND_IOMMUFD \{argsz=16 flags=0 iommufd=\d+\} = 0 -> \{out_devid=\d+\}/), lines.join('\n'));
  assert.ok(find(/VFIO_DEVICE_ATTACH_IOMMUFD_PT \{argsz=12 flags=0 pt_id=\d+\} = 0/));
  assert.ok(find(/VFIO_DEVICE_GET_INFO \{argsz=24\b.*\} = 0 -> \{.*num_regions=9 num_irqs=5/));
  assert.ok(find(/VFIO_DEVICE_GET_REGION_INFO \{argsz=32 index=0\} = 0 -> \{argsz=40 flags=0xf .*size=0x4000/));
  assert.ok(find(/VFIO_DEVICE_GET_PCI_HOT_RESET_INFO \{argsz=12.*\} = ENODEV/));
  assert.ok(find(/VFIO_DEVICE_FEATURE \{argsz=16 flags=0x10001\} = ENOTTY/));
  assert.ok(find(/VFIO_DEVICE_SET_IRQS \{argsz=24 flags=0x24 index=2 start=0 count=1\} = 0/));
  assert.ok(find(/IOMMU_HWPT_ALLOC/) && find(/IOMMU_IOAS_MAP/));
  assert.equal(lines.filter((l) => /VFIO_IOMMU_|ioctl\(0x/.test(l)).length, 0, 'no device request traced under a container name');
});

/**
 * Linux 6.1's ioatdma probe on this function, as the guest does it through
 * QEMU (config writes go through to the device, MMIO to BAR0, DMA addresses =
 * guest-physical = IOVA): version and counts, channel reset with the 3.2-style
 * CHANERR_INT clearing (SKX parts are driven as 3.2), interrupts, a ring of
 * linked descriptors started with a NULL descriptor, then the 2000-byte copy
 * self-test appended with a cumulative DMACOUNT, re-arm between interrupts,
 * DCA control and relaxed-ordering writes, and the reset at channel release.
 */
function linuxIoatProbe(p: TestProcess, dev: number, ram: bigint, opts: { unmapFirst?: () => void } = {}) {
  const CH = IOAT.CHANNEL;
  const bar = p.mmap(dev, vfioRegionOffset(0), 16384n);
  const cfg32 = (off: number) => le(p.pread(dev, 4, CFG + BigInt(off)));
  const cfgW = (off: number, n: 2 | 4, v: number) => assert.equal(p.pwrite(dev, leBytes(v, n), CFG + BigInt(off)), n);
  // pcim_enable_device + pci_set_master.
  cfgW(PCI.COMMAND, 2, le(p.pread(dev, 2, CFG + BigInt(PCI.COMMAND))) | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  const version = Number(bar.read(IOAT.CBVER, 1));
  assert.ok(version >= 0x30);
  const cap = Number(bar.read(IOAT.DMACAPABILITY, 4));
  const chancnt = Number(bar.read(IOAT.CHANCNT, 1)) & 0x1f;
  const xfercap = Number(bar.read(IOAT.XFERCAP, 1)) & 0x1f;
  assert.ok(chancnt >= 1 && xfercap > 0);
  // ioat_reset_hw: CHANERR back to itself, CHANERR_INT (config) too, then CHANCMD RESET until it reads clear.
  bar.write(CH + IOAT.CHANERR, 4, bar.read(CH + IOAT.CHANERR, 4));
  cfgW(IOAT.PCI_CHANERR_INT, 4, cfg32(IOAT.PCI_CHANERR_INT));
  bar.write(CH + IOAT.CHANCMD, 1, 0x20n);
  assert.equal(Number(bar.read(CH + IOAT.CHANCMD, 1)) & 0x20, 0);
  // ioat_dma_setup_interrupts: MSI-X, one vector per channel (QEMU: no-vector enable, then the vector), master enable.
  const irq = p.eventfd();
  setIrqFds(p, dev, VFIO_PCI.MSIX_IRQ_INDEX, 0, [-1]);
  setIrqFds(p, dev, VFIO_PCI.MSIX_IRQ_INDEX, 0, [irq.fd]);
  bar.write(IOAT.INTRCTRL, 1, bar.read(IOAT.INTRCTRL, 1) | BigInt(INTRCTRL.MASTER_INT_EN));
  // ioat_alloc_chan_resources: CHANCTRL_RUN, completion area by two 32-bit writes, a ring of 8 descriptors.
  const RUN = CHANCTRL.INT_REARM | CHANCTRL.ERR_INT_EN | CHANCTRL.ERR_COMPLETION_EN | CHANCTRL.ANY_ERR_ABORT_EN;
  bar.write(CH + IOAT.CHANCTRL, 2, BigInt(RUN));
  const compl = 0x280000n;
  p.mem.write(ram + compl, new Uint8Array(8));
  bar.write(CH + IOAT.CHANCMP, 4, compl & 0xffffffffn);
  bar.write(CH + IOAT.CHANCMP + 4, 4, compl >> 32n);
  const ring = 0x200000n;
  const slot = (i: number) => ring + BigInt(64 * (i % 8));
  const put = (i: number, d: { size: number; ctl: number; src: bigint; dst: bigint }) =>
    p.mem.write(ram + slot(i), ioatDescriptor({ ...d, next: slot(i + 1) }));
  opts.unmapFirst?.();
  // ioat_start_null_desc: NULL + INT_EN + COMPL_WRITE, size 1, chain address by two writes, DMACOUNT 1.
  put(0, { size: 1, ctl: DESC_CTL.NULL | DESC_CTL.INT_EN | DESC_CTL.COMPL_WRITE, src: 0n, dst: 0n });
  bar.write(CH + IOAT.CHAINADDR, 4, slot(0) & 0xffffffffn);
  bar.write(CH + IOAT.CHAINADDR + 4, 4, slot(0) >> 32n);
  bar.write(CH + IOAT.DMACOUNT, 2, 1n);
  const chansts = () => Number(bar.read(CH + IOAT.CHANSTS, 8) & CHANSTS.STATUS_MASK);
  const started = chansts() === CHANSTS.ACTIVE || chansts() === CHANSTS.DONE;
  if (!started) return { started, chanerr: Number(bar.read(CH + IOAT.CHANERR, 4)), irq, bar };
  assert.equal(irq.efd.read(), 1n);
  // The interrupt's cleanup re-arms the channel.
  bar.write(CH + IOAT.CHANCTRL, 2, BigInt(RUN));
  // ioat_dma_self_test: 2000 bytes, DMA_PREP_INTERRUPT, appended behind the NULL descriptor.
  const src = 0x300000n;
  const dst = 0x310000n;
  p.mem.write(ram + src, Uint8Array.from({ length: 2000 }, (_, i) => (i * 7) & 0xff));
  put(1, { size: 2000, ctl: DESC_CTL.INT_EN | DESC_CTL.COMPL_WRITE, src, dst });
  bar.write(CH + IOAT.DMACOUNT, 2, 2n);
  const status = new DataView(p.mem.read(ram + compl, 8).buffer).getBigUint64(0, true);
  const copied = Buffer.compare(Buffer.from(p.mem.read(ram + dst, 2000)), Buffer.from(p.mem.read(ram + src, 2000))) === 0;
  const irqs = irq.efd.read();
  // ioat3_dma_probe after the self-test: DCA control per channel, relaxed ordering off in DEVCTL.
  bar.write(CH + 0x30, 4, 0xffffn);
  // ioat_free_chan_resources -> ioat_reset_hw.
  bar.write(CH + IOAT.CHANCMD, 1, 0x20n);
  return { started, status, copied, irqs, cap, version, slot, chansts: chansts(), irq, bar };
}

test('Linux ioatdma probe through QEMU: the NULL-descriptor start, the copy self-test with completion and interrupt, then reset', () => {
  const { p, m } = vfioSetup({ profile: '6.12' });
  const { dev, ram } = qemuRealize(p);
  const r = linuxIoatProbe(p, dev, ram);
  assert.ok(r.started);
  assert.equal(r.copied, true);
  assert.equal(r.status! & CHANSTS.STATUS_MASK, BigInt(CHANSTS.DONE));
  assert.equal(r.status! & CHANSTS.ADDR_MASK, r.slot!(1), 'completion names the self-test descriptor');
  assert.equal(r.irqs, 1n);
  // No XOR/PQ: the XOR self-test is skipped, memcpy only.
  assert.equal(r.cap! & 0x300, 0);
  assert.equal(r.chansts, CHANSTS.HALTED, 'reset at release halts the channel');
  assert.equal(m.devices[0]!.vfio.dma.faults.length, 0);
});

test('Linux ioatdma probe after the host removed the guest RAM mappings: the channel does not start, CHANERR says why, the IOMMU faults', () => {
  const { p, m } = vfioSetup({ profile: '6.12' });
  const q = qemuRealize(p);
  const r = linuxIoatProbe(p, q.dev, q.ram, {
    unmapFirst: () => {
      iommufdCall(p, q.iommufd, 'IOAS_UNMAP', { ioas_id: q.ioasId, iova: 0n, length: (1n << 64n) - 1n });
    },
  });
  // ioat_alloc_chan_resources: neither ACTIVE nor DONE -> "failed to start channel chanerr: ..." and the
  // self-test gives up ("selftest cannot allocate chan resource"), so the probe fails.
  assert.equal(r.started, false);
  assert.notEqual(r.chanerr, 0);
  assert.ok(m.devices[0]!.vfio.dma.faults.length >= 1);
  assert.equal(r.irq.efd.read(), 1n, 'ERR_INT_EN: the halt interrupts');
});
