// End to end in process: what QEMU's arm-smmuv3,accel=on path does, on the
// ioat-x2-smmu machine, through the VFIO cdev and the iommufd uAPI only --
// GET_HW_INFO, a nest parent, VIOMMU_ALLOC, VDEVICE_ALLOC, a vEVENTQ, nested
// HWPTs from vSTEs, attach -- and then the IOAT engine's DMA (descriptor
// fetches and copies) walking the guest's stage-1 tables (written by the test
// into its own memory, mapped through the IOAS as guest RAM) through stage 2:
// a copy that hits, a copy that faults into the vEVENTQ with the vSID (and
// halts the channel with the error its registers report), a write that only
// succeeds after the right TLBI, and a stage-2 fault that stays host-side.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CHANCMD, CHANCTRL, CHANERR, CHANSTS, IOAT, ioatDescriptor } from '../../devices/ioat.js';
import { PCI, PCI_COMMAND } from '../../devices/pci/pci_regs.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import { VFIO_PCI, VFIO_REQ, vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfioRegionOffset } from '../../uapi/vfio.js';
import { decode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import { iommufdCall, structCall, vfioSetup, type TestProcess } from '../../core/vfio_test_helpers.js';
import type { BarMapping } from '../../core/vfio_device.js';
import { TracePrinter } from '../../server/trace.js';
import type { SmmuMaster } from './arm_smmu_v3.js';
import { decodeEvent, type DecodedEvent } from './event.js';
import { PROT } from './pgtable.js';
import { HW_INFO_TYPE_ARM_SMMUV3, HWPT_DATA_ARM_SMMUV3, VEVENTQ_TYPE_ARM_SMMUV3, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3 } from './profile.js';
import { bytesFromWords, EVT_ID, IDR0, reg, wordsFromBytes } from './regs.js';
import { cmd, GuestRam, guestCd, OP, tlbi, vste } from './test_helpers.js';

const CH = IOAT.CHANNEL;
const RAM_IPA = 0x4000_0000;
const RAM_SIZE = 4 << 20;
/** Guest virtual addresses the engine is programmed with (stage-1 input). */
const VA = { desc: 0x1000_0000n, src: 0x2000_0000n, dst: 0x3000_0000n, ro: 0x5000_0000n, unmapped: 0x6000_0000n, noIpa: 0x7000_0000n };
const ASID = 5;
const RW = PROT.READ | PROT.WRITE | PROT.CACHE;

/** The IOAT's register interface as a small driver would drive it (start a one-descriptor copy; status; reset). */
class Engine {
  readonly bar: BarMapping;
  constructor(readonly p: TestProcess, readonly dev: number, readonly descVa: bigint, readonly descIova: bigint) {
    this.bar = p.mmap(dev, vfioRegionOffset(0), 16384n);
    const cfg = vfioRegionOffset(VFIO_PCI.CONFIG_REGION_INDEX) + BigInt(PCI.COMMAND);
    p.pwrite(dev, Uint8Array.of(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER, 0), cfg);
    this.reset();
  }
  get status(): number {
    return Number(this.bar.read(CH + IOAT.CHANSTS, 8) & CHANSTS.STATUS_MASK);
  }
  get chanerr(): number {
    return Number(this.bar.read(CH + IOAT.CHANERR, 4));
  }
  /** The config-space mirror of CHANERR. */
  get chanerrInt(): number {
    const b = this.p.pread(this.dev, 4, vfioRegionOffset(VFIO_PCI.CONFIG_REGION_INDEX) + BigInt(IOAT.PCI_CHANERR_INT));
    return new DataView(b.buffer, b.byteOffset).getUint32(0, true);
  }
  reset(): void {
    this.bar.write(CH + IOAT.CHANERR, 4, BigInt(this.chanerr));
    this.bar.write(CH + IOAT.CHANCMD, 1, BigInt(CHANCMD.RESET));
  }
  /** One copy descriptor at descVa, doorbell; returns the channel status (the engine runs inside the doorbell). */
  copy(src: bigint, dst: bigint, size: number): number {
    this.p.mem.write(this.descVa, ioatDescriptor({ size, src, dst, next: this.descIova }));
    this.bar.write(CH + IOAT.CHAINADDR, 8, this.descIova);
    this.bar.write(CH + IOAT.CHANCTRL, 2, BigInt(CHANCTRL.ANY_ERR_ABORT_EN));
    this.bar.write(CH + IOAT.DMACOUNT, 2, 1n);
    return this.status;
  }
}

interface Dev {
  fd: number;
  devid: number;
  vsid: bigint;
  master: SmmuMaster;
}

/** The accel=on sequence for both devices of the ioat-x2-smmu machine, one vIOMMU. */
function accelSetup() {
  const { emu, m, p } = vfioSetup({ machine: 'ioat-x2-smmu' });
  const iommufd = p.openIommu();
  const devs: Dev[] = [0, 1].map((i) => {
    const fd = p.openCdev(i);
    const devid = structCall(p, fd, VFIO_REQ.DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, { argsz: 24, iommufd }).out.out_devid as number;
    return { fd, devid, vsid: BigInt(0x42 + i), master: m.devices[i]!.iommuDev as SmmuMaster };
  });
  const d0 = devs[0]!;
  // GET_HW_INFO: the SMMU's registers (QEMU checks S1P/S2P, granules, OAS against its vSMMU).
  const info = p.mem.alloc(40);
  const hw = iommufdCall(p, iommufd, 'GET_HW_INFO', { dev_id: d0.devid, data_len: 40, data_uptr: info });
  assert.equal(hw.out_data_type, HW_INFO_TYPE_ARM_SMMUV3);
  const regs = decode(S.iommu_hw_info_arm_smmuv3, p.mem.read(info, 40));
  assert.deepEqual(regs.idr, [...d0.master.smmu.cfg.idr]);
  assert.equal(reg(regs.idr[0], IDR0.S1P) && reg(regs.idr[0], IDR0.S2P), 1);
  // The nest parent over an IOAS holding guest RAM at its IPAs.
  const ioas = iommufdCall(p, iommufd, 'IOAS_ALLOC', {}).out_ioas_id as number;
  const parent = iommufdCall(p, iommufd, 'HWPT_ALLOC', { dev_id: d0.devid, pt_id: ioas, flags: HWPT_ALLOC.NEST_PARENT }).out_hwpt_id as number;
  const ram = new GuestRam({
    mem: p.mem,
    ioasMap: (a) => iommufdCall(p, iommufd, 'IOAS_MAP', { flags: (a.flags ?? 6) | 1, ioas_id: a.ioasId, user_va: a.userVa, length: a.length, iova: a.iova }).iova,
  }, ioas, RAM_IPA, RAM_SIZE);
  const viommu = iommufdCall(p, iommufd, 'VIOMMU_ALLOC', { dev_id: d0.devid, hwpt_id: parent, type: VIOMMU_TYPE_ARM_SMMUV3 }).out_viommu_id as number;
  for (const d of devs) iommufdCall(p, iommufd, 'VDEVICE_ALLOC', { viommu_id: viommu, dev_id: d.devid, virt_id: d.vsid });
  const q = iommufdCall(p, iommufd, 'VEVENTQ_ALLOC', { viommu_id: viommu, type: VEVENTQ_TYPE_ARM_SMMUV3, veventq_depth: 64 });

  // The guest's stage 1: one 4K, 48-bit table for both devices, ASID 5, written into guest RAM.
  const s1 = ram.table(12, 48);
  const page = (va: bigint, prot = RW): number => {
    const ipa = ram.alloc(4096);
    s1.map(Number(va), ipa, 4096, prot);
    return ipa;
  };
  const ipa = { desc: page(VA.desc), src: page(VA.src), dst: page(VA.dst), ro: page(VA.ro, PROT.READ | PROT.CACHE) };
  // A VA whose IPA has no stage-2 mapping (beyond guest RAM).
  s1.map(Number(VA.noIpa), RAM_IPA + RAM_SIZE + 0x10_0000, 4096, RW);
  const cdIpa = ram.alloc(64);
  ram.writeWords(cdIpa, guestCd(s1, ASID));
  const steData = p.mem.alloc(16);
  p.mem.write(steData, bytesFromWords(vste({ ctxPtr: cdIpa })));
  for (const d of devs) {
    const nested = iommufdCall(p, iommufd, 'HWPT_ALLOC', {
      dev_id: d.devid, pt_id: viommu, data_type: HWPT_DATA_ARM_SMMUV3, data_len: 16, data_uptr: steData,
    }).out_hwpt_id as number;
    const att = structCall(p, d.fd, VFIO_REQ.DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: nested });
    assert.equal(att.out.pt_id, nested);
  }
  const vaOf = (ipaAddr: number): bigint => ram.va + BigInt(ipaAddr - RAM_IPA);
  const engines = devs.map((d) => new Engine(p, d.fd, vaOf(ipa.desc), VA.desc));
  return { emu, p, iommufd, devs, viommu, veventqFd: q.out_veventq_fd as number, ram, s1, ipa, vaOf, engines };
}

type Setup = ReturnType<typeof accelSetup>;

function readEvents(s: Setup): DecodedEvent[] {
  const b = s.p.pread(s.veventqFd, 4096, 0n);
  const out: DecodedEvent[] = [];
  for (let off = 0; off < b.length; off += 40) {
    assert.equal(new DataView(b.buffer, b.byteOffset + off).getUint32(0, true), 0, 'no lost-events marker');
    out.push(decodeEvent(wordsFromBytes(b.subarray(off + 8, off + 40))));
  }
  return out;
}

function invalidate(s: Setup, cmds: readonly (readonly bigint[])[]): number {
  const arr = s.p.mem.alloc(16 * cmds.length);
  cmds.forEach((c, i) => s.p.mem.write(arr + BigInt(16 * i), bytesFromWords(c)));
  return iommufdCall(s.p, s.iommufd, 'HWPT_INVALIDATE', {
    hwpt_id: s.viommu, data_uptr: arr, data_type: VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, entry_len: 16, entry_num: cmds.length,
  }).entry_num as number;
}

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
