// The accel=on sequence on the ioat-x2-smmu machine, in process, through the
// VFIO cdev and the iommufd uAPI only (what QEMU's arm-smmuv3,accel=on does
// for passed-through devices), and the IOAT driven through its BAR as a small
// driver would: used by vfio_dma.test.ts and the DMA benchmark.
import assert from 'node:assert/strict';
import { CHANCMD, CHANCTRL, CHANSTS, IOAT, ioatDescriptor } from '../../devices/ioat.js';
import { PCI, PCI_COMMAND } from '../../devices/pci/pci_regs.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import { VFIO_PCI, VFIO_REQ, vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfioRegionOffset } from '../../uapi/vfio.js';
import { decode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import { iommufdCall, structCall, vfioSetup, type TestProcess } from '../../core/vfio_test_helpers.js';
import type { BarMapping } from '../../core/vfio_device.js';
import type { SmmuMaster } from './arm_smmu_v3.js';
import { decodeEvent, type DecodedEvent } from './event.js';
import { PROT } from './pgtable.js';
import { HW_INFO_TYPE_ARM_SMMUV3, HWPT_DATA_ARM_SMMUV3, VEVENTQ_TYPE_ARM_SMMUV3, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3 } from './profile.js';
import { bytesFromWords, IDR0, reg, wordsFromBytes } from './regs.js';
import { GuestRam, guestCd, vste } from './test_helpers.js';

const CH = IOAT.CHANNEL;
export const RAM_IPA = 0x4000_0000;
export const RAM_SIZE = 8 << 20;
/** Guest virtual addresses the engine is programmed with (stage-1 input). */
export const VA = {
  desc: 0x1000_0000n, src: 0x2000_0000n, dst: 0x3000_0000n, ro: 0x5000_0000n, unmapped: 0x6000_0000n, noIpa: 0x7000_0000n,
  bigSrc: 0x1_0000_0000n, bigDst: 0x2_0000_0000n,
};
export const ASID = 5;
export const RW = PROT.READ | PROT.WRITE | PROT.CACHE;

/** The IOAT's register interface as a small driver would drive it (start a one-descriptor copy; status; reset). */
export class Engine {
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
  /**
   * A copy of `size` bytes: descriptors of at most `maxCopy` bytes chained at
   * descVa, one doorbell; returns the channel status (the engine runs inside the doorbell).
   */
  copy(src: bigint, dst: bigint, size: number, maxCopy = 16384): number {
    let n = 0;
    for (let off = 0; off < size; off += maxCopy, n++) {
      const next = this.descIova + BigInt(64 * (n + 1));
      this.p.mem.write(this.descVa + BigInt(64 * n), ioatDescriptor({
        size: Math.min(maxCopy, size - off), src: src + BigInt(off), dst: dst + BigInt(off), next,
      }));
    }
    this.bar.write(CH + IOAT.CHAINADDR, 8, this.descIova);
    this.bar.write(CH + IOAT.CHANCTRL, 2, BigInt(CHANCTRL.ANY_ERR_ABORT_EN));
    this.bar.write(CH + IOAT.DMACOUNT, 2, BigInt(n));
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
export function accelSetup(o: { bigCopies?: boolean } = {}) {
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
  const ipa = { desc: page(VA.desc), src: page(VA.src), dst: page(VA.dst), ro: page(VA.ro, PROT.READ | PROT.CACHE), big: 0 };
  if (o.bigCopies) {
    // 1 MiB at VA.bigSrc and VA.bigDst (64 descriptors of 16 KiB: the descriptor page holds them).
    ipa.big = ram.alloc(2 << 20);
    s1.mapRange(Number(VA.bigSrc), ipa.big, 1 << 20, RW, 1n << 12n);
    s1.mapRange(Number(VA.bigDst), ipa.big + (1 << 20), 1 << 20, RW, 1n << 12n);
  }
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

export type Setup = ReturnType<typeof accelSetup>;

export function readEvents(s: Setup): DecodedEvent[] {
  const b = s.p.pread(s.veventqFd, 4096, 0n);
  const out: DecodedEvent[] = [];
  for (let off = 0; off < b.length; off += 40) {
    assert.equal(new DataView(b.buffer, b.byteOffset + off).getUint32(0, true), 0, 'no lost-events marker');
    out.push(decodeEvent(wordsFromBytes(b.subarray(off + 8, off + 40))));
  }
  return out;
}

export function invalidate(s: Setup, cmds: readonly (readonly bigint[])[]): number {
  const arr = s.p.mem.alloc(16 * cmds.length);
  cmds.forEach((c, i) => s.p.mem.write(arr + BigInt(16 * i), bytesFromWords(c)));
  return iommufdCall(s.p, s.iommufd, 'HWPT_INVALIDATE', {
    hwpt_id: s.viommu, data_uptr: arr, data_type: VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, entry_len: 16, entry_num: cmds.length,
  }).entry_num as number;
}

