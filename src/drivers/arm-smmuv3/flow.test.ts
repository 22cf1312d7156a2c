// The accel=on flow in process: GET_HW_INFO, nest parent, VIOMMU_ALLOC,
// VDEVICE_ALLOC, nested HWPT from a vSTE, attach, DMA walking guest stage 1
// through stage 2, a fault into the vEVENTQ with the vSID, a stale
// translation that only goes after the right TLBI.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { decode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import { EVT_ID, OP } from './regs.js';
import {
  attach, dma, faultOf, guestCd, invalidate, nestedHwpt, nestSetup, physOf, PROT, readEvents, rig, tlbi,
  VEVENTQ_TYPE_ARM_SMMUV3, vste,
} from './test_helpers.js';

describe('SMMUv3 nested flow', () => {
  test('GET_HW_INFO returns the IDR/IIDR/AIDR of the config', () => {
    const r = rig({ smmu: { iidr: { implementer: 0x123, productId: 0x45 } } });
    const info = r.fd.getHwInfo(r.devId, { dataLen: 40 });
    assert.equal(info.dataType, 2);
    assert.equal(info.dataLen, 40);
    const hw = decode(S.iommu_hw_info_arm_smmuv3, info.data);
    assert.deepEqual(hw.idr, [...r.smmu.cfg.idr]);
    assert.equal(hw.iidr, r.smmu.cfg.iidr);
    assert.equal(hw.aidr, 0x01);
    assert.equal(hw.flags, 0);
  });

  test('DMA walks the guest stage 1 through stage 2; faults reach the vEVENTQ with the vSID; TLBI makes a remap visible', () => {
    const r = rig();
    const n = nestSetup(r);
    const ram = n.ram;
    const s1 = ram.table(12, 48);
    const buf1 = ram.alloc(4096);
    const buf2 = ram.alloc(4096);
    s1.map(0x1000_0000, buf1, 4096, PROT.READ | PROT.WRITE | PROT.CACHE);
    const cdIpa = ram.alloc(64);
    ram.writeWords(cdIpa, guestCd(s1, 5));
    const hwpt = nestedHwpt(r, n, vste({ ctxPtr: cdIpa }));
    attach(r, hwpt);
    const q = r.fd.veventqAlloc(n.viommu, VEVENTQ_TYPE_ARM_SMMUV3, 16);

    // 1. A DMA that hits.
    assert.equal(physOf(dma(r, 0x1000_0010n)), ram.pa(buf1) + 0x10);
    // 2. A DMA that faults (unmapped IOVA): F_TRANSLATION into the vEVENTQ with the vSID.
    const f = faultOf(dma(r, 0x2000_0000n, { write: true }));
    assert.equal(f.kind, 'translation');
    assert.equal(f.detail.disposition, 'forwarded');
    const evs = readEvents(r, q.veventqFd);
    assert.equal(evs.length, 1);
    assert.equal(evs[0]!.evt!.id, EVT_ID.F_TRANSLATION);
    assert.equal(evs[0]!.evt!.sid, Number(n.vsid));
    assert.equal(evs[0]!.evt!.inputAddr, 0x2000_0000n);
    assert.equal(evs[0]!.evt!.read, false);
    assert.equal(f.event!.sid, r.master.sid, 'the hardware record carries the physical StreamID');
    // 3. Remap the page in the guest table: stale until the TLBI for that VA and ASID.
    s1.unmap(0x1000_0000, 4096);
    s1.map(0x1000_0000, buf2, 4096, PROT.READ | PROT.WRITE | PROT.CACHE);
    assert.equal(physOf(dma(r, 0x1000_0010n)), ram.pa(buf1) + 0x10, 'stale until invalidated');
    invalidate(r, n, [tlbi(OP.TLBI_NH_VA, { asid: 6, addr: 0x1000_0000n })]);
    assert.equal(physOf(dma(r, 0x1000_0010n)), ram.pa(buf1) + 0x10, 'another ASID does not touch it');
    assert.equal(invalidate(r, n, [tlbi(OP.TLBI_NH_VA, { asid: 5, addr: 0x1000_0000n })]), 1);
    assert.equal(physOf(dma(r, 0x1000_0010n)), ram.pa(buf2) + 0x10);
  });
});
