// Check order and errnos of the VFIO ioctls (spec 06 §5), one behaviour per
// case, through the raw entry with structs laid out from the uAPI table.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VFIO } from '../uapi/ioctls.js';
import {
  VFIO_DEVICE_FEATURE as F, VFIO_IRQ_SET, VFIO_PCI, VFIO_REQ, vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd,
  vfio_device_detach_iommufd_pt, vfio_device_feature, vfio_device_info, vfio_group_status, vfio_irq_info, vfio_irq_set,
  vfio_pci_hot_reset_info, vfio_region_info, vfioRegionOffset,
} from '../uapi/vfio.js';
import { IOAT } from '../devices/ioat.js';
import { PCI, PCI_COMMAND } from '../devices/pci/pci_regs.js';
import { errOf, iommufdCall, structCall, vfioSetup, type TestProcess } from './vfio_test_helpers.js';

const CFG = vfioRegionOffset(VFIO_PCI.CONFIG_REGION_INDEX);

function bound(profile?: 'mainline' | '6.12' | '6.15' | '6.17') {
  const { p, m, emu } = vfioSetup({ profile });
  const iommufd = p.openIommu();
  const ioasId = iommufdCall(p, iommufd, 'IOAS_ALLOC', {}).out_ioas_id as number;
  const dev = p.openCdev(0);
  const devid = structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 16, iommufd }, { size: 16 }).out.out_devid;
  return { p, m, emu, iommufd, ioasId, dev, devid };
}

const bind = (p: TestProcess, dev: number, v: Record<string, unknown>, size = 24, tail?: Uint8Array) =>
  errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: size, ...v }, { size, tail }));
const attach = (p: TestProcess, dev: number, v: Record<string, unknown>, size = 16) =>
  errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: size, ...v }, { size }));
const detach = (p: TestProcess, dev: number, v: Record<string, unknown>, size = 12) =>
  errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_DETACH_IOMMUFD_PT, vfio_device_detach_iommufd_pt, { argsz: size, ...v }, { size }));

// ---- cdev before bind -------------------------------------------------------------------------

test('cdev: before BIND_IOMMUFD every other ioctl, read, write and mmap give EINVAL', () => {
  const { p } = vfioSetup();
  const dev = p.openCdev(0);
  for (const req of [VFIO_REQ.DEVICE_GET_INFO, VFIO_REQ.DEVICE_GET_REGION_INFO, VFIO_REQ.DEVICE_RESET,
    VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, VFIO_REQ.DEVICE_FEATURE, 0x3b99]) {
    assert.equal(errOf(() => structCall(p, dev, req, vfio_device_info, { argsz: 24 })), 'EINVAL', `request 0x${req.toString(16)}`);
  }
  assert.equal(errOf(() => p.pread(dev, 2, CFG)), 'EINVAL');
  assert.equal(errOf(() => p.pwrite(dev, new Uint8Array(2), CFG)), 'EINVAL');
  assert.equal(errOf(() => p.mmap(dev, 0n, 4096n)), 'EINVAL');
});

test('BIND_IOMMUFD: argsz < 16 EINVAL; non-zero bytes past the struct E2BIG; iommufd < 0 or unknown flags EINVAL', () => {
  const { p } = vfioSetup();
  const iommufd = p.openIommu();
  const dev = p.openCdev(0);
  assert.equal(bind(p, dev, { iommufd }, 15), 'EINVAL');
  // argsz 32: the 8 bytes after the 24-byte struct hold a non-zero byte.
  assert.equal(errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 32, iommufd },
    { size: 24, tail: Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 1) })), 'E2BIG');
  assert.equal(bind(p, dev, { iommufd: -2 }), 'EINVAL');
  assert.equal(bind(p, dev, { iommufd, flags: 2 }), 'EINVAL');
  assert.equal(bind(p, dev, { iommufd }, 32), 0, 'zero tail is accepted');
});

test('BIND_IOMMUFD: a closed fd EBADF, an fd that is not an iommufd EBADFD; nothing left bound', () => {
  const { p, m } = vfioSetup();
  const dev = p.openCdev(0);
  assert.equal(bind(p, dev, { iommufd: 999 }), 'EBADF');
  assert.equal(bind(p, dev, { iommufd: p.eventfd().fd }), 'EBADFD');
  assert.equal(bind(p, dev, { iommufd: p.plainFile() }), 'EBADFD');
  assert.equal(m.vfio.devices[0]!.openCount, 0);
  assert.equal(m.vfio.devices[0]!.idev, null);
});

test('BIND_IOMMUFD: bound twice on one fd EINVAL; a second cdev fd of the same device EINVAL', () => {
  const { p, iommufd, dev } = bound();
  assert.equal(bind(p, dev, { iommufd }), 'EINVAL');
  const dev2 = p.openCdev(0);
  assert.equal(bind(p, dev2, { iommufd }), 'EINVAL');
});

test('BIND_IOMMUFD: the TOKEN flag on a function without SR-IOV is EINVAL (6.17+); unknown before 6.17', () => {
  const { p } = vfioSetup();
  const iommufd = p.openIommu();
  const dev = p.openCdev(0);
  const uuid = p.mem.alloc(16);
  assert.equal(bind(p, dev, { iommufd, flags: 1, token_uuid_ptr: uuid }), 'EINVAL');
  assert.equal(bind(p, dev, { iommufd, flags: 1, token_uuid_ptr: 0x10n }), 'EFAULT', 'the UUID is read first');
  const old = vfioSetup({ profile: '6.12' });
  const fd = old.p.openIommu();
  const d = old.p.openCdev(0);
  assert.equal(bind(old.p, d, { iommufd: fd, flags: 1 }, 16), 'EINVAL');
  // 6.12's struct ends at out_devid: a token pointer is "non-zero past the struct".
  assert.equal(bind(old.p, d, { iommufd: fd }, 24, undefined), 0);
});

test('BIND_IOMMUFD while the group is open: EBUSY; and the group cannot be opened while the cdev is bound', () => {
  const { p } = vfioSetup();
  const iommufd = p.openIommu();
  const dev = p.openCdev(0);
  const g = p.openGroup(3);
  assert.equal(bind(p, dev, { iommufd }), 'EBUSY');
  p.close(g);
  assert.equal(bind(p, dev, { iommufd }), 0);
  assert.equal(errOf(() => p.openGroup(3)), 'EBUSY');
});

test('BIND_IOMMUFD on a device fd from GET_DEVICE_FD: EINVAL', () => {
  const { p } = vfioSetup();
  const c = p.openContainer();
  const g = p.openGroup(3);
  p.setContainer(g, c);
  const dev = p.getDeviceFd(g, '0000:00:03.0');
  assert.equal(bind(p, dev, { iommufd: c }), 'EINVAL');
  // cdev-only ioctls are unknown there: the vfio-pci ioctl table answers ENOTTY.
  assert.equal(attach(p, dev, { pt_id: 1 }), 'ENOTTY');
});

// ---- attach / detach --------------------------------------------------------------------------

test('ATTACH_IOMMUFD_PT: argsz < 12 EINVAL; unknown flags EINVAL; PASID needs argsz 16', () => {
  const { p, dev, ioasId } = bound();
  assert.equal(attach(p, dev, { pt_id: ioasId }, 11), 'EINVAL');
  assert.equal(attach(p, dev, { pt_id: ioasId, flags: 2 }), 'EINVAL');
  assert.equal(attach(p, dev, { pt_id: ioasId, flags: 1 }, 12), 'EINVAL');
  assert.equal(attach(p, dev, { pt_id: ioasId }, 12), 0);
});

test('ATTACH_IOMMUFD_PT: unknown pt_id ENOENT, a DEVICE id EINVAL; pt_id written back (IOAS -> auto HWPT)', () => {
  const { p, dev, devid, ioasId } = bound();
  assert.equal(attach(p, dev, { pt_id: 0xffffffff }), 'ENOENT');
  assert.equal(attach(p, dev, { pt_id: devid }), 'EINVAL');
  const r = structCall(p, dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: ioasId });
  assert.notEqual(r.out.pt_id, ioasId);
  // A second attach is a replace: to the same IOAS it finds the same auto domain.
  const r2 = structCall(p, dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: ioasId });
  assert.equal(r2.out.pt_id, r.out.pt_id);
});

test('ATTACH with PASID: an auto domain is not PASID-capable (EINVAL); a PASID HWPT works on a device without PASIDs (6.17 and 7.3)', () => {
  for (const profile of ['6.17', 'mainline'] as const) {
    const { p, iommufd, dev, devid, ioasId } = bound(profile);
    assert.equal(attach(p, dev, { pt_id: ioasId, flags: 1, pasid: 1 }), 'EINVAL');
    const hwpt = iommufdCall(p, iommufd, 'HWPT_ALLOC', { dev_id: devid, pt_id: ioasId, flags: 8 }).out_hwpt_id;
    assert.equal(attach(p, dev, { pt_id: hwpt }), 0);
    // The IOAT has no PASID capability: the IOMMU core skips the PASID validation for such a
    // device (iommu_attach_device_pasid, 7.3.4 too), the attach succeeds.
    assert.equal(attach(p, dev, { pt_id: hwpt, flags: 1, pasid: 5 }), 0, profile);
    assert.equal(detach(p, dev, { flags: 1, pasid: 5 }), 0);
    assert.equal(attach(p, dev, { pt_id: hwpt, flags: 1, pasid: 0x80000000 }), 'ENOSPC');
  }
});

test('ATTACH with PASID on a 6.12 kernel: flags must be 0 (EINVAL)', () => {
  const { p, dev, ioasId } = bound('6.12');
  assert.equal(attach(p, dev, { pt_id: ioasId, flags: 1, pasid: 1 }), 'EINVAL');
  assert.equal(attach(p, dev, { pt_id: ioasId }, 12), 0);
});

test('DETACH_IOMMUFD_PT: argsz < 8 EINVAL; unknown flags EINVAL; PASID needs argsz 12; nothing attached is 0', () => {
  const { p, dev } = bound();
  assert.equal(detach(p, dev, {}, 7), 'EINVAL');
  assert.equal(detach(p, dev, { flags: 4 }), 'EINVAL');
  assert.equal(detach(p, dev, { flags: 1 }, 8), 'EINVAL');
  assert.equal(detach(p, dev, {}, 8), 0);
  assert.equal(detach(p, dev, { flags: 1, pasid: 3 }), 0);
});

// ---- info ioctls -------------------------------------------------------------------------------

test('GET_INFO: argsz < 16 EINVAL; argsz 16 gets only the first 16 bytes', () => {
  const { p, dev } = bound();
  assert.equal(errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_GET_INFO, vfio_device_info, { argsz: 15 })), 'EINVAL');
  const r = structCall(p, dev, VFIO_REQ.DEVICE_GET_INFO, vfio_device_info, { argsz: 16, cap_offset: 0x55 }, { size: 24 });
  assert.equal(r.out.num_irqs, 5);
  assert.equal(r.out.cap_offset, 0x55, 'bytes past argsz untouched');
});

test('GET_REGION_INFO: argsz < 32 EINVAL; VGA (no VGA device) and index >= 9 EINVAL; ROM empty', () => {
  const { p, dev } = bound();
  const ri = (v: Record<string, unknown>) => structCall(p, dev, VFIO_REQ.DEVICE_GET_REGION_INFO, vfio_region_info, { argsz: 32, ...v });
  assert.equal(errOf(() => ri({ argsz: 31, index: 7 })), 'EINVAL');
  assert.equal(errOf(() => ri({ index: 8 })), 'EINVAL');
  assert.equal(errOf(() => ri({ index: 9 })), 'EINVAL');
  const rom = ri({ index: 6 }).out;
  assert.deepEqual([rom.size, rom.flags, rom.offset], [0n, 0, 6n << 40n]);
});

test('GET_IRQ_INFO: argsz < 16 or index >= 5 EINVAL', () => {
  const { p, dev } = bound();
  const ii = (v: Record<string, unknown>) => errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_GET_IRQ_INFO, vfio_irq_info, { argsz: 16, ...v }));
  assert.equal(ii({ argsz: 15, index: 1 }), 'EINVAL');
  assert.equal(ii({ index: 5 }), 'EINVAL');
  assert.equal(ii({ index: 4 }), 0);
});

test('hot reset: no slot or bus reset on the emulated root bus (ENODEV) after the size checks', () => {
  const { p, dev } = bound();
  assert.equal(errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_GET_PCI_HOT_RESET_INFO, vfio_pci_hot_reset_info, { argsz: 11 })), 'EINVAL');
  assert.equal(errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_GET_PCI_HOT_RESET_INFO, vfio_pci_hot_reset_info, { argsz: 16 })), 'ENODEV');
  assert.equal(errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_PCI_HOT_RESET, vfio_pci_hot_reset_info, { argsz: 12, flags: 1 })), 'EINVAL');
  // cdev-opened: the zero-length array is the one accepted.
  assert.equal(errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_PCI_HOT_RESET, vfio_pci_hot_reset_info, { argsz: 12, count: 1 })), 'EINVAL');
  assert.equal(errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_PCI_HOT_RESET, vfio_pci_hot_reset_info, { argsz: 12 })), 'ENODEV');
});

// ---- SET_IRQS ---------------------------------------------------------------------------------

test('SET_IRQS validation: argsz, index, start/count against the index count, data type, data size', () => {
  const { p, dev } = bound();
  const T = VFIO_IRQ_SET.ACTION_TRIGGER;
  const set = (v: Record<string, unknown>, tail?: Uint8Array) =>
    errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, { argsz: 20 + (tail?.length ?? 0), ...v }, { tail }));
  assert.equal(set({ argsz: 19, flags: VFIO_IRQ_SET.DATA_NONE | T, index: 2, count: 1 }), 'EINVAL');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 5 }), 'EINVAL');
  assert.equal(set({ flags: 0x40 | T, index: 2, count: 1 }), 'EINVAL');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 2, start: 1, count: 0 }), 'EINVAL', 'start >= count of the index');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 2, start: 0, count: 2 }), 'EINVAL');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 0, start: 0, count: 0 }), 'EINVAL', 'no INTx: even a disable');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.DATA_BOOL | T, index: 2, count: 1 }), 'EINVAL');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, count: 1 }), 'EINVAL', 'the fd array is missing');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_MASK, index: 2, count: 1 }), 'ENOTTY');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 2, count: 1 }), 'EINVAL', 'loopback on an inactive index');
  const fd = (n: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, n, true);
    return b;
  };
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, count: 1 }, fd(999)), 'EBADF');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, count: 1 }, fd(p.plainFile())), 'EINVAL');
  const e = p.eventfd();
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, count: 1 }, fd(e.fd)), 0);
  // Rebinding the same eventfd (igb's re-enable after reset) succeeds and keeps one reference.
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, count: 1 }, fd(e.fd)), 0);
  assert.equal(e.efd.refs, 1);
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_BOOL | T, index: 2, count: 1 }, Uint8Array.of(1)), 0);
  assert.equal(e.efd.read(), 1n);
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_BOOL | T, index: 2, count: 1 }, Uint8Array.of(0)), 0);
  assert.equal(e.efd.read(), 'EAGAIN');
  // fd -1 unbinds the vector.
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, count: 1 }, fd(-1)), 0);
  assert.equal(e.efd.refs, 0);
});

test('SET_IRQS ERR/REQ: start 0 and count <= 1; DATA_NONE with no trigger EINVAL; eventfd bind, loopback, unbind', () => {
  const { p, dev } = bound();
  const T = VFIO_IRQ_SET.ACTION_TRIGGER;
  const set = (v: Record<string, unknown>, tail?: Uint8Array) =>
    errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, { argsz: 20 + (tail?.length ?? 0), ...v }, { tail }));
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 3, count: 1 }), 'EINVAL');
  const e = p.eventfd();
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, e.fd, true);
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 4, count: 1 }, b), 0);
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 4, count: 1 }), 0);
  assert.equal(e.efd.read(), 1n);
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_UNMASK, index: 4, count: 1 }), 'ENOTTY');
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 4, count: 0 }), 0);
  assert.equal(e.efd.refs, 0);
});

// ---- FEATURE / RESET ------------------------------------------------------------------------

test('DEVICE_FEATURE: argsz, unknown flags, GET with SET; PROBE; VF token and migration ENOTTY; low power', () => {
  const { p, dev } = bound();
  const feat = (flags: number, argsz = 8, tail?: Uint8Array) =>
    errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_FEATURE, vfio_device_feature, { argsz, flags }, { size: 8, tail }));
  assert.equal(feat(F.SET | F.LOW_POWER_ENTRY, 7), 'EINVAL');
  assert.equal(feat(1 << 20), 'EINVAL');
  assert.equal(feat(F.GET | F.SET | F.LOW_POWER_ENTRY), 'EINVAL');
  assert.equal(feat(F.GET | F.SET | F.PROBE | F.LOW_POWER_ENTRY), 'EINVAL', 'GET is not supported for it');
  assert.equal(feat(F.SET | F.PROBE | F.LOW_POWER_ENTRY), 0);
  assert.equal(feat(F.SET | F.PCI_VF_TOKEN, 24, new Uint8Array(16)), 'ENOTTY');
  assert.equal(feat(F.GET | F.MIGRATION, 16, new Uint8Array(8)), 'ENOTTY');
  assert.equal(feat(F.SET | F.DMA_LOGGING_START, 16, new Uint8Array(8)), 'ENOTTY');
  assert.equal(feat(F.LOW_POWER_ENTRY), 'EINVAL', 'neither GET nor SET');
  assert.equal(feat(F.SET | F.LOW_POWER_ENTRY), 0);
  assert.equal(feat(F.SET | F.LOW_POWER_ENTRY), 'EINVAL', 'already engaged');
  assert.equal(feat(F.SET | F.LOW_POWER_EXIT), 0);
  // With a wake-up eventfd: the next access wakes the device and signals it.
  const e = p.eventfd();
  const w = new Uint8Array(8);
  new DataView(w.buffer).setInt32(0, e.fd, true);
  assert.equal(feat(F.SET | F.LOW_POWER_ENTRY_WITH_WAKEUP, 16, Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0)), 'EINVAL');
  assert.equal(feat(F.SET | F.LOW_POWER_ENTRY_WITH_WAKEUP, 16, w), 0);
  p.pread(dev, 2, CFG);
  assert.equal(e.efd.read(), 1n);
  assert.equal(e.efd.refs, 0);
});

test('RESET: 0 (FLR works); device registers go to power-on values', () => {
  const { p, dev, m } = bound();
  const bar = p.mmap(dev, 0n, 16384n);
  bar.write(IOAT.INTRCTRL, 1, 8n);
  assert.equal(structCall(p, dev, VFIO_REQ.DEVICE_RESET, vfio_device_info, {}, { size: 0 }).ret, 0);
  assert.equal(bar.read(IOAT.INTRCTRL, 1), 0n);
  assert.ok(m.vfio.devices[0]!.resetWorks);
});

// ---- read / write / mmap ------------------------------------------------------------------

test('config region: outside 4096 bytes EFAULT; raw registers outside every capability pass through', () => {
  const { p, dev } = bound();
  assert.equal(errOf(() => p.pread(dev, 4, CFG + 4094n)), 'EFAULT');
  assert.equal(errOf(() => p.pread(dev, 1, CFG + 4096n)), 'EFAULT');
  assert.deepEqual(p.pread(dev, 4, CFG + BigInt(IOAT.PCI_DMAUNCERRSTS)), new Uint8Array(4));
  // Virtualised: vendor/device are not writable, capability list bytes come from the virtual copy.
  p.pwrite(dev, Uint8Array.of(0x34, 0x12), CFG);
  assert.deepEqual(p.pread(dev, 2, CFG), Uint8Array.of(0x86, 0x80));
  // The BARs: sizing through the virtual register.
  p.pwrite(dev, Uint8Array.of(0xff, 0xff, 0xff, 0xff), CFG + BigInt(PCI.BASE_ADDRESS_0));
  const v = new DataView(p.pread(dev, 4, CFG + BigInt(PCI.BASE_ADDRESS_0)).buffer).getUint32(0, true);
  assert.equal(v, (0xffffc000 | 0x4) >>> 0);
  // Unknown region index EINVAL.
  assert.equal(errOf(() => p.pread(dev, 4, 9n << 40n)), 'EINVAL');
});

test('BAR region: beyond the BAR EINVAL; the MSI-X table reads as ones and ignores writes; memory off EIO', () => {
  const { p, dev } = bound();
  assert.deepEqual(p.pread(dev, 1, BigInt(IOAT.CBVER)), Uint8Array.of(0x33));
  assert.equal(errOf(() => p.pread(dev, 4, 16384n)), 'EINVAL');
  assert.deepEqual(p.pread(dev, 4, 0x2000n), Uint8Array.of(0xff, 0xff, 0xff, 0xff));
  // An empty BAR: EINVAL.
  assert.equal(errOf(() => p.pread(dev, 4, 2n << 40n)), 'EINVAL');
  // Memory decode off in the (virtual) command register: BAR access EIO, mappings fault.
  const bar = p.mmap(dev, 0n, 16384n);
  p.pwrite(dev, Uint8Array.of(0, 0), CFG + BigInt(PCI.COMMAND));
  assert.equal(errOf(() => p.pread(dev, 1, BigInt(IOAT.CBVER))), 'EIO');
  assert.equal(errOf(() => bar.read(IOAT.CBVER, 1)), 'EIO');
  p.pwrite(dev, Uint8Array.of(PCI_COMMAND.MEMORY, 0), CFG + BigInt(PCI.COMMAND));
  assert.equal(bar.read(IOAT.CBVER, 1), 0x33n);
});

test('mmap: only shared; only mmappable BARs; not past the BAR; a partial window at an offset', () => {
  const { p, dev } = bound();
  assert.equal(errOf(() => p.mmap(dev, 0n, 16384n, false)), 'EINVAL');
  assert.equal(errOf(() => p.mmap(dev, CFG, 4096n)), 'EINVAL');
  assert.equal(errOf(() => p.mmap(dev, 2n << 40n, 4096n)), 'EINVAL');
  assert.equal(errOf(() => p.mmap(dev, 0n, 16384n + 4096n)), 'EINVAL');
  assert.equal(errOf(() => p.mmap(dev, 12288n, 8192n)), 'EINVAL');
  const win = p.mmap(dev, 4096n, 4096n);
  assert.deepEqual([win.bar, win.start, win.length], [0, 4096, 4096]);
});

// ---- groups -------------------------------------------------------------------------------

test('group: a second open EBUSY; GET_STATUS argsz < 8 EINVAL; unknown group ioctl ENOTTY', () => {
  const { p } = vfioSetup();
  const g = p.openGroup(3);
  assert.equal(errOf(() => p.openGroup(3)), 'EBUSY');
  assert.equal(errOf(() => structCall(p, g, VFIO_REQ.GROUP_GET_STATUS, vfio_group_status, { argsz: 7 })), 'EINVAL');
  assert.equal(errOf(() => p.ioctl(g, VFIO_REQ.DEVICE_GET_INFO, 0n)), 'ENOTTY');
  assert.equal(errOf(() => p.openGroup(7)), 'ENODEV');
});

test('group SET_CONTAINER: bad fd EBADF; a non-container fd EBADFD; set twice EINVAL; UNSET without EINVAL', () => {
  const { p } = vfioSetup();
  const g = p.openGroup(3);
  assert.equal(errOf(() => p.ioctl(g, VFIO_REQ.GROUP_UNSET_CONTAINER, 0n)), 'EINVAL');
  assert.equal(errOf(() => p.setContainer(g, 999)), 'EBADF');
  assert.equal(errOf(() => p.setContainer(g, p.eventfd().fd)), 'EBADFD');
  assert.equal(errOf(() => p.ioctl(g, VFIO_REQ.GROUP_SET_CONTAINER, 0x10n)), 'EFAULT');
  const c = p.openContainer();
  assert.equal(p.setContainer(g, c), 0);
  assert.equal(errOf(() => p.setContainer(g, c)), 'EINVAL');
  assert.equal(p.ioctl(g, VFIO_REQ.GROUP_UNSET_CONTAINER, 0n), 0);
});

test('GET_DEVICE_FD: no container EINVAL; names matched by BDF prefix with at most one vf_token option', () => {
  const { p } = vfioSetup();
  const g = p.openGroup(3);
  const get = (s: string) => errOf(() => p.getDeviceFd(g, s));
  assert.equal(get('0000:00:03.0'), 'EINVAL', 'no container set');
  p.setContainer(g, p.openContainer());
  assert.equal(get('0000:00:04.0'), 'ENODEV');
  assert.equal(get('0000:00:03.0x'), 'ENODEV', 'non-space after the name: no match');
  assert.equal(get('0000:00:03.0 foo'), 'EINVAL');
  assert.equal(get('0000:00:03.0 vf_token=1234'), 'EINVAL', 'short UUID');
  assert.equal(get('0000:00:03.0 vf_token=zzzzzzzz-5a5f-4f5a-a211-f591514ba1f3'), 'EINVAL', 'bad UUID');
  assert.equal(get('0000:00:03.0 vf_token=bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3'), 'EINVAL', 'a token for a non-PF/VF');
  assert.equal(get('0000:00:03.0   '), 0, 'trailing spaces are fine');
  assert.equal(get('0000:00:03.0'), 0, 'the group path may open a device twice');
  // No NUL within a page: EINVAL; unreadable: EFAULT.
  const long = p.mem.alloc(8192);
  p.mem.write(long, new Uint8Array(8192).fill(0x41));
  assert.equal(errOf(() => p.ioctl(g, VFIO_REQ.GROUP_GET_DEVICE_FD, long)), 'EINVAL');
  assert.equal(errOf(() => p.ioctl(g, VFIO_REQ.GROUP_GET_DEVICE_FD, 0x10n)), 'EFAULT');
});

test('the container: CHECK_EXTENSION answers for type1/type1v2/unmap-all; VFIO_GET_API_VERSION 0; iommufd ioctls work too', () => {
  const { p } = vfioSetup();
  const c = p.openContainer();
  assert.equal(p.ioctl(c, VFIO.GET_API_VERSION, 0n), 0);
  assert.equal(p.ioctl(c, VFIO.CHECK_EXTENSION, 1n), 1);
  assert.equal(p.ioctl(c, VFIO.CHECK_EXTENSION, 9n), 1);
  assert.equal(p.ioctl(c, VFIO.CHECK_EXTENSION, 8n), 0);
  assert.ok(iommufdCall(p, c, 'IOAS_ALLOC', {}).out_ioas_id > 0);
  assert.equal(p.ctxOf(c).accountMode, 1, '/dev/vfio/vfio charges pinned pages to the process');
});

test('MSI-X grows on demand (x86 dynamic MSI-X): a vector past the enabled block can be bound while active', () => {
  const { p } = vfioSetup({
    machine: { iommus: [{ name: 'd', type: 'intel-vtd' }], devices: [{ model: 'ioat', bdf: '0000:00:03.0', options: { msix_vectors: 4 } }] },
  });
  const iommufd = p.openIommu();
  const dev = p.openCdev(0);
  structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 24, iommufd });
  assert.equal(structCall(p, dev, VFIO_REQ.DEVICE_GET_IRQ_INFO, vfio_irq_info, { argsz: 16, index: 2 }).out.count, 4);
  const T = VFIO_IRQ_SET.ACTION_TRIGGER;
  const fdOf = (n: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, n, true);
    return b;
  };
  const set = (v: Record<string, unknown>, tail?: Uint8Array) =>
    errOf(() => structCall(p, dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, { argsz: 20 + (tail?.length ?? 0), ...v }, { tail }));
  const a = p.eventfd();
  const b = p.eventfd();
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, start: 0, count: 1 }, fdOf(a.fd)), 0);
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, start: 3, count: 1 }, fdOf(b.fd)), 0);
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_NONE | T, index: 2, start: 0, count: 4 }), 0);
  assert.deepEqual([a.efd.read(), b.efd.read()], [1n, 1n]);
  assert.equal(set({ flags: VFIO_IRQ_SET.DATA_EVENTFD | T, index: 2, start: 3, count: 2 }, new Uint8Array(8)), 'EINVAL', 'past the table');
});
