// Fault injection through the VFIO paths: failing each allocation/copy point
// in turn (fail-nth), a failed call leaves no trace -- no DEVICE object, no
// open count, no held references, no installed fd -- and the same call then
// succeeds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isErrno } from '../uapi/errno.js';
import { VFIO_IRQ_SET, VFIO_PCI, VFIO_REQ, vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_irq_set } from '../uapi/vfio.js';
import { ObjType } from './object.js';
import { iommufdCall, structCall, vfioSetup, type TestProcess } from './vfio_test_helpers.js';
import type { Emulator } from './emulator.js';

/** Run `call` with the n-th failure point failing, for n = 1.. until it succeeds; `check` after each failure. */
function sweep(emu: Emulator, call: () => void, check: (n: number) => void): number {
  for (let n = 1; n < 200; n++) {
    emu.failNth = n;
    let failed = false;
    try {
      call();
    } catch (e) {
      if (!isErrno(e)) throw e;
      failed = true;
    } finally {
      emu.failNth = 0;
    }
    if (!failed) return n;
    check(n);
  }
  throw new Error('never succeeded');
}

const devObjects = (p: TestProcess, fd: number) =>
  [...Array(64).keys()].filter((id) => p.ctxOf(fd).objects.find(id, ObjType.DEVICE)).length;

test('fail-nth BIND_IOMMUFD: every failure leaves the device unbound and the group usable', () => {
  const { emu, p, m } = vfioSetup();
  const iommufd = p.openIommu();
  const dev = p.openCdev(0);
  const points = sweep(emu, () => {
    structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 24, iommufd });
  }, (n) => {
    const d = m.vfio.devices[0]!;
    assert.equal(d.openCount, 0, `point ${n}`);
    assert.equal(d.idev, null, `point ${n}`);
    assert.equal(devObjects(p, iommufd), 0, `point ${n}`);
    assert.ok(!p.fileOf(dev).accessGranted);
    p.close(p.openGroup(3));
  });
  assert.ok(points > 2, `${points - 1} failure points`);
  assert.equal(devObjects(p, iommufd), 1);
});

test('fail-nth ATTACH_IOMMUFD_PT: a failed attach leaves no HWPT and DMA blocked; the retry attaches', () => {
  const { emu, p, m } = vfioSetup();
  const iommufd = p.openIommu();
  const ioas = iommufdCall(p, iommufd, 'IOAS_ALLOC', {}).out_ioas_id as number;
  const dev = p.openCdev(0);
  structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 24, iommufd });
  sweep(emu, () => {
    structCall(p, dev, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: ioas });
  }, (n) => {
    const d = m.vfio.devices[0]!;
    assert.ok(!d.iommufdAttached, `point ${n}`);
    assert.equal(d.idev!.attachments.size, 0, `point ${n}`);
    for (let id = 1; id < 32; id++) assert.equal(p.ctxOf(iommufd).objects.find(id, ObjType.HWPT_PAGING), undefined);
  });
  assert.ok(m.vfio.devices[0]!.iommufdAttached);
});

test('fail-nth GROUP_GET_DEVICE_FD: no fd, no open count; closing everything still releases the container', () => {
  const { emu, p, m } = vfioSetup();
  const c = p.openContainer();
  const g = p.openGroup(3);
  p.setContainer(g, c);
  const before = p.openFds;
  let fd = -1;
  sweep(emu, () => {
    fd = p.getDeviceFd(g, '0000:00:03.0');
  }, (n) => {
    assert.equal(p.openFds, before, `point ${n}`);
    assert.equal(m.vfio.devices[0]!.openCount, 0, `point ${n}`);
  });
  assert.ok(fd > 0);
  const ctx = p.ctxOf(c);
  p.close(fd);
  p.close(g);
  p.close(c);
  assert.ok(ctx.closed);
});

test('fail-nth SET_IRQS enabling MSI-X: a failure leaves MSI-X disabled and the eventfd unreferenced', () => {
  const { emu, p, m } = vfioSetup();
  const iommufd = p.openIommu();
  const dev = p.openCdev(0);
  structCall(p, dev, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 24, iommufd });
  const e = p.eventfd();
  const fds = new Uint8Array(4);
  new DataView(fds.buffer).setInt32(0, e.fd, true);
  sweep(emu, () => {
    structCall(p, dev, VFIO_REQ.DEVICE_SET_IRQS, vfio_irq_set, {
      argsz: 24, flags: VFIO_IRQ_SET.DATA_EVENTFD | VFIO_IRQ_SET.ACTION_TRIGGER, index: VFIO_PCI.MSIX_IRQ_INDEX, count: 1,
    }, { tail: fds });
  }, (n) => {
    assert.equal(e.efd.refs, 0, `point ${n}`);
    assert.equal(m.vfio.devices[0]!.irqType, VFIO_PCI.NUM_IRQS, `point ${n}`);
  });
  assert.equal(e.efd.refs, 1);
});
