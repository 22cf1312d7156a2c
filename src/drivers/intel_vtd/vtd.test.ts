// The VT-d driver alone: register decoding, domain geometry, the second-stage
// table (superpages, permissions, unmap), translate faults, HWPT flag rules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Emulator } from '../../core/emulator.js';
import { isErrno } from '../../uapi/errno.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import { decode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import { IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE } from '../driver.js';
import { SL_PTE } from './pagetable.js';
import { decodeVtdRegs, VTD_SKX_REGS, VtdDriver, VtdPagingDomain, VtdUnit } from './vtd.js';

const errno = (code: string) => (e: unknown) => isErrno(e) && e.code === code;

function setup() {
  const drv = new VtdDriver(new Emulator());
  const unit = new VtdUnit('dmar0');
  const dev = drv.probeDevice(unit, '0000:00:03.0');
  return { drv, unit, dev };
}

test('Skylake-SP CAP/ECAP: 48-bit 4-level, 2M+1G superpages, snoop control, no scalable mode', () => {
  const r = decodeVtdRegs(VTD_SKX_REGS.cap, VTD_SKX_REGS.ecap);
  assert.equal(r.mgaw, 48);
  assert.equal(r.sagaw, 4);
  assert.equal(r.sllps, 3);
  assert.ok(r.snoopControl && r.interruptRemapping && r.coherent);
  assert.ok(!r.scalableMode && !r.nested);
});

test('paging domain: 48-bit aperture, 4K|2M|1G, the MSI window reserved for the device', () => {
  const { drv, dev } = setup();
  const d = drv.domainAllocPaging(dev, 0, null);
  assert.equal(d.apertureStart, 0n);
  assert.equal(d.apertureLast, (1n << 48n) - 1n);
  assert.equal(d.pgsizeBitmap, (1n << 12n) | (1n << 21n) | (1n << 30n));
  assert.ok(d.enforceCacheCoherency);
  assert.deepEqual(dev.reservedRegions(), [[0xfee00000n, 0xfeefffffn]]);
});

test('map picks the largest leaf alignment allows; translate honours R/W; unmap clears', () => {
  const { drv, dev } = setup();
  const d = drv.domainAllocPaging(dev, 0, null) as VtdPagingDomain;
  const twoM = 2 ** 21;
  // 2 MiB-aligned iova and phys: one 2M leaf, then 4K leaves for the tail.
  d.map(0x40000000n, [{ phys: 0x80000000, length: twoM + 8192 }], IOMMU_READ | IOMMU_CACHE);
  assert.equal(d.leaf(0x40000000n)!.size, twoM);
  assert.equal(d.leaf(0x40200000n)!.size, 4096);
  assert.ok(d.leaf(0x40000000n)!.flags & SL_PTE.SNP);
  assert.equal(d.table.countLeaves(), 3);
  const ok = d.translate({ dev, iova: 0x40001234n, length: 8, write: false });
  assert.deepEqual(ok, { phys: 0x80001234 });
  const ro = d.translate({ dev, iova: 0x40001234n, length: 8, write: true });
  assert.ok('fault' in ro && ro.fault.kind === 'permission');
  const miss = d.translate({ dev, iova: 0x50000000n, length: 8, write: false });
  assert.ok('fault' in miss && miss.fault.kind === 'translation');
  const high = d.translate({ dev, iova: 1n << 48n, length: 8, write: false });
  assert.ok('fault' in high && high.fault.kind === 'address-size');
  assert.equal(d.unmap(0x40000000n, BigInt(twoM + 8192)), BigInt(twoM + 8192));
  assert.equal(d.table.countLeaves(), 0);
  assert.equal(d.iovaToPhys(0x40000000n), undefined);
  assert.equal(dev.unit.faults.length, 3);
});

test('map: a 1 GiB-aligned run becomes a 1G leaf; an overlapping map fails and leaves nothing behind', () => {
  const { drv, dev } = setup();
  const d = drv.domainAllocPaging(dev, 0, null) as VtdPagingDomain;
  d.map(1n << 30n, [{ phys: 2 ** 31, length: 2 ** 30 }], IOMMU_READ | IOMMU_WRITE);
  assert.equal(d.leaf((1n << 30n) + 5n)!.size, 2 ** 30);
  assert.throws(() => d.map((1n << 31n) - 4096n, [{ phys: 0x1000, length: 8192 }], IOMMU_READ), errno('EEXIST'));
  assert.equal(d.iovaToPhys((1n << 31n) - 4096n), 2 ** 31 + 2 ** 30 - 4096);
  assert.equal(d.table.countLeaves(), 1);
});

test('HWPT flags: NEST_PARENT and DIRTY_TRACKING are not supported, PASID is; driver data is refused', () => {
  const { drv, dev } = setup();
  assert.throws(() => drv.domainAllocPaging(dev, HWPT_ALLOC.NEST_PARENT, null), errno('EOPNOTSUPP'));
  assert.throws(() => drv.domainAllocPaging(dev, HWPT_ALLOC.DIRTY_TRACKING, null), errno('EOPNOTSUPP'));
  assert.ok(drv.domainAllocPaging(dev, HWPT_ALLOC.PASID, null));
  assert.throws(() => drv.domainAllocPaging(dev, 0, { type: 1, uptr: 0n, len: 0, mem: null as never }), errno('EOPNOTSUPP'));
  assert.equal(drv.capDirtyTracking(), false);
});

test('hw_info: type INTEL_VTD with the unit registers (errata flag always set); other types EOPNOTSUPP', () => {
  const { drv, dev } = setup();
  const info = drv.hwInfo(dev, 0);
  assert.equal(info.type, 1);
  const v = decode(S.iommu_hw_info_vtd, info.data);
  assert.equal(v.flags, 1);
  assert.equal(v.cap_reg, VTD_SKX_REGS.cap);
  assert.equal(v.ecap_reg, VTD_SKX_REGS.ecap);
  assert.throws(() => drv.hwInfo(dev, 2), errno('EOPNOTSUPP'));
});

test('attach: foreign domains are incompatible (EINVAL); a fault-capable domain needs PRI (ENODEV)', () => {
  const { drv, dev } = setup();
  const d = drv.domainAllocPaging(dev, 0, null);
  assert.throws(() => drv.attach(dev, { kind: 'nested' } as never, undefined), errno('EINVAL'));
  d.faultCapable = true;
  assert.throws(() => drv.attach(dev, d, undefined), errno('ENODEV'));
  d.faultCapable = false;
  drv.attach(dev, d, undefined);
  assert.equal(dev.attached, d);
  drv.attach(dev, null, undefined);
  assert.equal(dev.attached, null);
});
