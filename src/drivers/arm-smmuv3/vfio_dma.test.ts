// End to end in process: what QEMU's arm-smmuv3,accel=on path does, on the
// ioat-x2-smmu machine, through the VFIO cdev and the iommufd uAPI only --
// GET_HW_INFO, a nest parent, VIOMMU_ALLOC, VDEVICE_ALLOC, a vEVENTQ, nested
// HWPTs from vSTEs, attach (accel_helpers.ts) -- and then the IOAT engine's
// DMA (descriptor fetches and copies) walking the guest's stage-1 tables
// (written by the test into its own memory, mapped through the IOAS as guest
// RAM) through stage 2: a copy that hits, a copy that faults into the vEVENTQ
// with the vSID (and halts the channel with the error its registers report),
// a write that only succeeds after the right TLBI, and a stage-2 fault that
// stays host-side.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CHANERR, CHANSTS } from '../../devices/ioat.js';
import { TracePrinter } from '../../server/trace.js';
import { accelSetup, ASID, invalidate, RAM_IPA, RAM_SIZE, readEvents, RW, VA } from './accel_helpers.js';
import { EVT_ID } from './regs.js';
import { cmd, OP, tlbi } from './test_helpers.js';

const pattern = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

describe('SMMUv3 accel=on end to end: the IOAT through VFIO, DMA walking guest stage 1 through stage 2', () => {
  test('a copy that hits: the descriptor fetch and both data pages go S1 then S2; the bytes land in guest RAM', () => {
    const s = accelSetup();
    const data = pattern(4096, 7);
    s.p.mem.write(s.vaOf(s.ipa.src), data);
    assert.equal(s.engines[0]!.copy(VA.src, VA.dst, 4096), CHANSTS.DONE);
    assert.deepEqual(s.p.mem.read(s.vaOf(s.ipa.dst), 4096), data);
    assert.deepEqual(readEvents(s), [], 'no event');
    // The second engine, behind the same vIOMMU, copies through the same guest tables.
    assert.equal(s.engines[1]!.copy(VA.dst, VA.src + 0x800n, 0x800), CHANSTS.DONE);
    assert.deepEqual(s.p.mem.read(s.vaOf(s.ipa.src) + 0x800n, 0x800), data.subarray(0, 0x800));
  });

  test('a copy from an unmapped VA: READ_DATA_ERR, channel HALTED, F_TRANSLATION in the vEVENTQ with the vSID', () => {
    const s = accelSetup();
    const e = s.engines[0]!;
    assert.equal(e.copy(VA.unmapped + 0x40n, VA.dst, 64), CHANSTS.HALTED);
    assert.equal(e.chanerr, CHANERR.READ_DATA_ERR);
    assert.equal(e.chanerrInt, CHANERR.READ_DATA_ERR, 'config-space mirror');
    const [ev, ...rest] = readEvents(s);
    assert.deepEqual(rest, []);
    assert.equal(ev!.id, EVT_ID.F_TRANSLATION);
    assert.equal(ev!.sid, 0x42, 'the vSID, not the pSID 0x18');
    assert.equal(ev!.inputAddr, VA.unmapped + 0x40n);
    assert.equal(ev!.read, true);
    assert.equal(ev!.s2, false);
    // The host's record carries the physical StreamID.
    const host = s.devs[0]!.master.smmu.hw.hostEvents.at(-1)!;
    assert.deepEqual([host.decoded.sid, host.disposition], [0x18, 'forwarded']);
    // The second device's fault arrives with its own vSID; a faulting write says so.
    s.engines[1]!.copy(VA.src, VA.unmapped, 8);
    assert.equal(s.engines[1]!.chanerr, CHANERR.WRITE_DATA_ERR);
    const [ev2] = readEvents(s);
    assert.deepEqual([ev2!.id, ev2!.sid, ev2!.read, ev2!.inputAddr], [EVT_ID.F_TRANSLATION, 0x43, false, VA.unmapped]);
    // After the driver's reset the channel copies again.
    e.reset();
    assert.equal(e.copy(VA.src, VA.dst, 64), CHANSTS.DONE);
  });

  test('a write that only succeeds after the right TLBI: read-only page cached, upgraded in the guest table, stale until TLBI_NH_VA', () => {
    const s = accelSetup();
    const e = s.engines[0]!;
    s.p.mem.write(s.vaOf(s.ipa.src), pattern(256, 3));
    // Reading the read-only page caches its stage-1 entry (read-only) in the IOTLB.
    assert.equal(e.copy(VA.ro, VA.dst, 64), CHANSTS.DONE);
    const tryWrite = (): number => {
      const st = e.copy(VA.src, VA.ro, 256);
      if (st === CHANSTS.HALTED) {
        assert.equal(e.chanerr, CHANERR.WRITE_DATA_ERR);
        e.reset();
      }
      return st;
    };
    assert.equal(tryWrite(), CHANSTS.HALTED, 'a write to a read-only page faults');
    const [perm] = readEvents(s);
    assert.deepEqual([perm!.id, perm!.sid, perm!.read, perm!.inputAddr], [EVT_ID.F_PERMISSION, 0x42, false, VA.ro]);
    // The guest makes the page writable in its table (no invalidation yet): the IOTLB still says read-only.
    s.s1.unmap(Number(VA.ro), 4096);
    s.s1.map(Number(VA.ro), s.ipa.ro, 4096, RW);
    assert.equal(tryWrite(), CHANSTS.HALTED, 'stale entry: still read-only');
    assert.equal(readEvents(s)[0]!.id, EVT_ID.F_PERMISSION);
    // The wrong invalidations leave it: another ASID, another address, a CD re-read.
    assert.equal(invalidate(s, [tlbi(OP.TLBI_NH_VA, { asid: ASID + 1, addr: VA.ro, leaf: true }),
      tlbi(OP.TLBI_NH_VA, { asid: ASID, addr: VA.ro + 0x1000n, leaf: true }), cmd.make(OP.CFGI_CD, { SID: 0x42, CFGI_LEAF: 1 })]), 3);
    assert.equal(tryWrite(), CHANSTS.HALTED, 'still stale after unrelated invalidations');
    readEvents(s);
    // The right one: TLBI_NH_VA for this ASID and page. Now the write goes through.
    assert.equal(invalidate(s, [tlbi(OP.TLBI_NH_VA, { asid: ASID, addr: VA.ro, leaf: true })]), 1);
    assert.equal(tryWrite(), CHANSTS.DONE);
    assert.deepEqual(s.p.mem.read(s.vaOf(s.ipa.ro), 256), pattern(256, 3));
    assert.deepEqual(readEvents(s), []);
  });

  test('a stage-2 fault (IPA outside guest RAM) stays host-side: no vEVENT, the host record has S2 and the IPA; the engine halts', () => {
    const s = accelSetup();
    const e = s.engines[0]!;
    assert.equal(e.copy(VA.noIpa, VA.dst, 64), CHANSTS.HALTED);
    assert.equal(e.chanerr, CHANERR.READ_DATA_ERR);
    assert.deepEqual(readEvents(s), [], 'stage-2 faults are not the guest\'s');
    const host = s.devs[0]!.master.smmu.hw.hostEvents.at(-1)!;
    assert.equal(host.decoded.id, EVT_ID.F_TRANSLATION);
    assert.equal(host.decoded.s2, true);
    assert.equal(host.decoded.ipa, BigInt(RAM_IPA + RAM_SIZE + 0x10_0000));
    assert.equal(host.decoded.sid, 0x18);
    assert.match(host.disposition, /host/);
  });

  test('--trace=smmu: the printer shows the DMA\'s STE/CD decode and both stages\' walk levels; without the category, none', () => {
    const s = accelSetup();
    const lines: string[] = [];
    const off = new TracePrinter((l) => lines.push(l), true, ['smmu']).attach(s.emu);
    s.engines[0]!.copy(VA.src, VA.dst, 64);
    off();
    assert.ok(lines.some((l) => /^ {4}arm-smmu-v3 ste smmu=smmu0 sid=0x18 kind=nested/.test(l)), lines.slice(0, 5).join('\n'));
    assert.ok(lines.some((l) => /^ {4}arm-smmu-v3 walk smmu=smmu0 stage=1 level=0 /.test(l)));
    assert.ok(lines.some((l) => /^ {4}arm-smmu-v3 walk smmu=smmu0 stage=2 /.test(l)));
    assert.ok(lines.some((l) => /^ {4}arm-smmu-v3 iotlb smmu=smmu0 op=insert /.test(l)));
    const plain: string[] = [];
    const off2 = new TracePrinter((l) => plain.push(l)).attach(s.emu);
    assert.equal(s.devs[0]!.master.smmu.hw.t.on, false, 'an ioctl-only printer leaves the SMMU untraced');
    s.engines[0]!.copy(VA.src, VA.dst, 64);
    off2();
    assert.deepEqual(plain, []);
  });
});
