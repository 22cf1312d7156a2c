// The ARM_SMMUV3 vIOMMU through the uAPI: VIOMMU_ALLOC preconditions and
// their check order per kernel, VDEVICE_ALLOC, attach rules, HWPT_INVALIDATE
// (array copy, accepted opcodes, per-opcode checks, rewriting, batching and
// entry_num), vEVENTQ delivery, and what older kernels did differently.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { deviceAttach, deviceReplace } from '../../core/device.js';
import { errOf } from '../mock/test_helpers.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import { decode } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import { cmd } from './cmdq.js';
import { onSmmuTrace, type SmmuTraceRecord } from './trace.js';
import { CMD, EVT_ID, getN, OP } from './regs.js';
import {
  addDevice, attach, cmdBytes, dma, hwptPaging, faultOf, GuestRam, guestCd, invalidate, nestedHwpt, nestSetup, physOf, PROT,
  readEvents, rig, tlbi, VEVENTQ_TYPE_ARM_SMMUV3, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3, vste,
  type Rig,
} from './test_helpers.js';
import type { ProfileName } from '../../uapi/profiles.js';
import type { SmmuPagingDomain } from './arm_smmu_v3.js';

const NEST = HWPT_ALLOC.NEST_PARENT;
const RW = PROT.READ | PROT.WRITE | PROT.CACHE;
const VA = 0x1000_0000;

function viommuErr(r: Rig, hwptId: number, devId = r.devId, type = VIOMMU_TYPE_ARM_SMMUV3): string | 0 {
  return errOf(() => r.fd.viommuAlloc({ devId, hwptId, type }));
}

describe('VIOMMU_ALLOC', () => {
  test('type must be ARM_SMMUV3; the VMID is the parent\'s', () => {
    const r = rig();
    const ioas = r.fd.ioasAlloc();
    const parent = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags: NEST });
    assert.equal(viommuErr(r, parent, r.devId, 0), 'EOPNOTSUPP');
    assert.equal(viommuErr(r, parent, r.devId, 2), 'EOPNOTSUPP');
    assert.equal(viommuErr(r, parent), 0);
  });

  for (const p of ['6.15', 'mainline'] as ProfileName[]) {
    test(`no nesting (MMU-700 r0p0 errata), non-CANWBS without S2FWB: EOPNOTSUPP — before the HWPT lookup on 6.17+ (${p})`, () => {
      const r = rig({ profile: p, smmu: { iidr: { implementer: 0x43b, productId: 0x487, variant: 0, revision: 0 } } });
      const ioas = r.fd.ioasAlloc();
      assert.equal(errOf(() => r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags: NEST })), 'EOPNOTSUPP', 'no nest parent either');
      const plain = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas });
      // A non-nest-parent HWPT: the core's EINVAL comes first on 6.13-6.16, the driver's EOPNOTSUPP on 6.17+.
      assert.equal(viommuErr(r, plain), p === 'mainline' ? 'EOPNOTSUPP' : 'EINVAL');
      assert.equal(viommuErr(r, 9999), p === 'mainline' ? 'EOPNOTSUPP' : 'ENOENT');

      const r2 = rig({ profile: p, canwbs: false });
      const ioas2 = r2.fd.ioasAlloc();
      const parent2 = r2.fd.hwptAlloc({ devId: r2.devId, ptId: ioas2, flags: NEST });
      assert.equal(viommuErr(r2, parent2), 'EOPNOTSUPP');
      const r3 = rig({ profile: p, canwbs: false, smmu: { fwb: true } });
      const ioas3 = r3.fd.ioasAlloc();
      const parent3 = r3.fd.hwptAlloc({ devId: r3.devId, ptId: ioas3, flags: NEST });
      assert.equal(viommuErr(r3, parent3), 0, 'S2FWB makes up for a non-CANWBS device');
    });
  }

  test('a parent on another SMMU instance: EINVAL', () => {
    const r = rig();
    const other = r.drv.addSmmu({ name: 'smmu1' });
    const d1 = addDevice(r, [0x40], other);
    const ioas = r.fd.ioasAlloc();
    const parent1 = r.fd.hwptAlloc({ devId: d1.devId, ptId: ioas, flags: NEST });
    assert.equal(viommuErr(r, parent1), 'EINVAL');
    assert.equal(viommuErr(r, parent1, d1.devId), 0);
  });
});

describe('VDEVICE_ALLOC and attach', () => {
  test('a device with two StreamIDs: EOPNOTSUPP on mainline (vSID maps to one pSID), accepted on 6.17', () => {
    for (const [p, want] of [['mainline', 'EOPNOTSUPP'], ['6.17', 0]] as const) {
      const r = rig({ profile: p });
      const n = nestSetup(r);
      const d = addDevice(r, [0x20, 0x21]);
      assert.equal(errOf(() => r.fd.vdeviceAlloc(n.viommu, d.devId, 0x99n)), want);
      if (want) {
        // Nothing is left behind: the virt_id and the device are free again.
        const ok = addDevice(r, [0x22]);
        assert.equal(errOf(() => r.fd.vdeviceAlloc(n.viommu, ok.devId, 0x99n)), 0);
        assert.equal(d.idev.vdev, null);
      }
    }
  });

  test('a translating vSTE needs the vDEVICE (ENOENT, 6.15+); abort/bypass attach without one; 6.13 needs none', () => {
    for (const p of ['6.15', 'mainline', '6.13'] as ProfileName[]) {
      const r = rig({ profile: p });
      const n = nestSetup(r);
      const d = addDevice(r, [0x30]);
      const s1 = nestedHwpt(r, n, vste({ ctxPtr: 0x4000_0000 }), d.devId);
      assert.equal(errOf(() => deviceAttach(d.idev, undefined, s1)), p === '6.13' ? 0 : 'ENOENT', p);
      if (p === '6.13') continue;
      for (const cfg of [0, 4]) {
        const h = nestedHwpt(r, n, vste({ cfg }), d.devId);
        assert.equal(errOf(() => (d.idev.attachment(0) ? deviceReplace(d.idev, undefined, h) : deviceAttach(d.idev, undefined, h))), 0);
      }
    }
  });

  test('a device of another SMMU cannot use the nested HWPT (EINVAL), nor a paging domain of another SMMU', () => {
    const r = rig();
    const n = nestSetup(r);
    const h = nestedHwpt(r, n, vste({ cfg: 4 }));
    const other = r.drv.addSmmu({ name: 'smmu1' });
    const d1 = addDevice(r, [0x40], other);
    assert.equal(errOf(() => nestedHwpt(r, n, vste({ cfg: 4 }), d1.devId)), 'EINVAL');
    assert.equal(errOf(() => deviceAttach(d1.idev, undefined, h)), 'EINVAL');
    const paging0 = r.fd.hwptAlloc({ devId: r.devId, ptId: n.ioas });
    assert.equal(errOf(() => deviceAttach(d1.idev, undefined, paging0)), 'EINVAL');
  });

  test('cache-coherency enforcement: a non-CANWBS device cannot join a domain that enforces it', () => {
    const r = rig();
    const ioas = r.fd.ioasAlloc();
    const hw = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas });
    const d = addDevice(r, [0x50], r.smmu, false);
    assert.equal(errOf(() => deviceAttach(d.idev, undefined, hw)), 'EINVAL');
    assert.equal(errOf(() => deviceAttach(r.idev, undefined, hw)), 0);
  });
});

/** A nested fixture with one mapped page at VA. */
function fixture(p: ProfileName = 'mainline', smmu = {}) {
  const r = rig({ profile: p, smmu });
  const n = nestSetup(r);
  const t = n.ram.table(12, 48);
  const pages = [n.ram.alloc(4096), n.ram.alloc(4096)];
  t.map(VA, pages[0]!, 4096, RW);
  const cd = n.ram.alloc(64);
  n.ram.writeWords(cd, guestCd(t, 5));
  attach(r, nestedHwpt(r, n, vste({ ctxPtr: cd })));
  return { r, n, t, pages, cd };
}

/** Make the cached translation of VA stale (remapped in the guest table without a TLBI). */
function staleVa(f: ReturnType<typeof fixture>): void {
  assert.equal(physOf(dma(f.r, BigInt(VA))), f.n.ram.pa(f.pages[0]!));
  f.t.unmap(VA, 4096);
  f.t.map(VA, f.pages[1]!, 4096, RW);
}

function isFresh(f: ReturnType<typeof fixture>): boolean {
  return physOf(dma(f.r, BigInt(VA))) === f.n.ram.pa(f.pages[1]!);
}

function rawInvalidate(r: Rig, viommu: number, o: { entryLen: number; entries: Uint8Array; num: number; type?: number; uptr?: bigint }) {
  const uptr = o.uptr ?? r.fd.mem.alloc(Math.max(o.entries.length, 8));
  if (o.uptr === undefined) r.fd.mem.write(uptr, o.entries);
  const c = { hwpt_id: viommu, data_uptr: uptr, data_type: o.type ?? VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, entry_len: o.entryLen, entry_num: o.num };
  const full = { size: 32, __reserved: 0, ...c };
  let err: string | 0 = 0;
  try {
    r.fd.ctx.call('HWPT_INVALIDATE', full, r.fd.caller);
  } catch (e) {
    err = (e as { code: string }).code;
  }
  return { err, entryNum: full.entry_num };
}

describe('HWPT_INVALIDATE on the vIOMMU', () => {
  const nh = cmdBytes(tlbi(OP.TLBI_NH_ASID, { asid: 5 }));

  test('an empty array is EINVAL (the kernel copy helper refuses it); wrong data_type EINVAL', () => {
    const { r, n } = fixture();
    assert.deepEqual(rawInvalidate(r, n.viommu, { entryLen: 16, entries: new Uint8Array(), num: 0 }), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(rawInvalidate(r, n.viommu, { entryLen: 16, entries: nh, num: 1, type: 0 }), { err: 'EINVAL', entryNum: 0 });
    assert.deepEqual(rawInvalidate(r, n.viommu, { entryLen: 16, entries: new Uint8Array(), num: 1, uptr: 0x10n }), { err: 'EFAULT', entryNum: 0 });
  });

  test('entry_len: shorter entries are zero-extended, longer ones need a zero tail (E2BIG before anything runs)', () => {
    const f = fixture();
    staleVa(f);
    const long = new Uint8Array(48);
    long.set(nh);
    long.set(nh, 24);
    long[20] = 1;
    assert.deepEqual(rawInvalidate(f.r, f.n.viommu, { entryLen: 24, entries: long, num: 2 }), { err: 'E2BIG', entryNum: 0 });
    assert.equal(isFresh(f), false);
    long[20] = 0;
    assert.deepEqual(rawInvalidate(f.r, f.n.viommu, { entryLen: 24, entries: long, num: 2 }), { err: 0, entryNum: 2 });
    assert.equal(isFresh(f), true);
    const f2 = fixture();
    staleVa(f2);
    // 8-byte entries: dword 1 reads as zero. NSNH_ALL needs nothing else.
    assert.deepEqual(rawInvalidate(f2.r, f2.n.viommu, { entryLen: 8, entries: cmdBytes(cmd.make(OP.TLBI_NSNH_ALL)).subarray(0, 8), num: 1 }), { err: 0, entryNum: 1 });
    assert.equal(isFresh(f2), true);
  });

  test('host-only and unknown opcodes are EIO, on every kernel', () => {
    for (const p of ['6.13', 'mainline'] as ProfileName[]) {
      const { r, n } = fixture(p);
      for (const op of [OP.CFGI_STE, OP.CFGI_ALL, OP.TLBI_S12_VMALL, OP.TLBI_S2_IPA, OP.CMD_SYNC, OP.PREFETCH_CONFIG,
        OP.TLBI_EL2_ALL, OP.PRI_RESP, OP.RESUME, 0x7f]) {
        assert.throws(() => invalidate(r, n, [cmd.make(op)]), (e: { code: string; handled: number }) => e.code === 'EIO' && e.handled === 0, `${p} op 0x${op.toString(16)}`);
      }
    }
  });

  test('entry_num = index of the rejected entry; the converted part of its batch never ran (kernel quirk)', () => {
    const f = fixture();
    staleVa(f);
    assert.throws(() => invalidate(f.r, f.n, [tlbi(OP.TLBI_NH_ASID, { asid: 5 }), tlbi(OP.TLBI_NH_ALL), cmd.make(OP.CFGI_STE)]),
      (e: { code: string; handled: number }) => e.code === 'EIO' && e.handled === 2);
    assert.equal(isFresh(f), false, 'entries 0 and 1 were converted but not issued');
    // With 63 good entries first, the first batch is issued before entry 63 fails.
    const f2 = fixture();
    staleVa(f2);
    const cmds = [tlbi(OP.TLBI_NH_ASID, { asid: 5 }), ...Array.from({ length: 62 }, () => tlbi(OP.TLBI_NH_VA, { asid: 1, addr: 0x1000n })),
      cmd.make(OP.CFGI_STE)];
    assert.throws(() => invalidate(f2.r, f2.n, cmds), (e: { handled: number }) => e.handled === 63);
    assert.equal(isFresh(f2), true);
    assert.equal(f2.r.smmu.hw.cmdCount.get('TLBI_NH_VA'), 62);
  });

  test('mainline checks each opcode\'s fields (EIO); 6.13-6.17 pass them to the hardware, which skips the illegal one', () => {
    // [command, does the hardware raise CERROR_ILL for it when an older kernel passes it on]
    const bad: [bigint[], boolean][] = [
      [(() => { const c = tlbi(OP.TLBI_NH_VA, { asid: 5, addr: BigInt(VA) }); c[0] = c[0]! | (1n << 10n); return c; })(), true], // SSec
      [(() => { const c = tlbi(OP.TLBI_NH_ASID, { asid: 5 }); c[1] = 1n; return c; })(), true], // dword 1 is RES0
      [tlbi(OP.TLBI_NH_VA, { asid: 5, addr: BigInt(VA), num: 1 }), true], // NUM with TG = 0
      [tlbi(OP.TLBI_NH_VA, { asid: 5, addr: BigInt(VA), tg: 1 }), true], // TG without NUM/SCALE/TTL
      [tlbi(OP.TLBI_NH_VA, { asid: 5, addr: BigInt(VA), tg: 2, ttl: 1, num: 1 }), true], // TTL 1 with 16K needs DS
      [cmd.make(OP.CFGI_CD, { SID: 0x77, SSID: 1 }), false], // SSID without substreams: ignored by the hardware
      [cmd.make(OP.ATC_INV, { SID: 0x77 }), true], // no ATS
    ];
    for (const [c, ill] of bad) {
      const m = fixture('mainline');
      assert.throws(() => invalidate(m.r, m.n, [c]), (e: { code: string }) => e.code === 'EIO', `mainline ${c}`);
      const old = fixture('6.15');
      const before = old.r.smmu.hw.cerrorIll.length;
      assert.equal(invalidate(old.r, old.n, [c]), 1, `6.15 accepts ${c}`);
      assert.equal(old.r.smmu.hw.cerrorIll.length, before + (ill ? 1 : 0), `CERROR_ILL for ${c}`);
    }
    // Legal on mainline: range TLBIs with RIL, ATC_INV with ATS.
    const ok = fixture('mainline', { ats: true });
    assert.equal(invalidate(ok.r, ok.n, [tlbi(OP.TLBI_NH_VA, { asid: 5, addr: BigInt(VA), tg: 1, num: 3, ttl: 3 }),
      cmd.make(OP.ATC_INV, { SID: 0x77, ATC_SIZE: 52 })]), 2);
    const noRil = fixture('mainline', { ril: false });
    assert.throws(() => invalidate(noRil.r, noRil.n, [tlbi(OP.TLBI_NH_VA, { asid: 5, addr: BigInt(VA), tg: 1, num: 3 })]),
      (e: { code: string }) => e.code === 'EIO');
    const asid8 = fixture('mainline', { asid16: false });
    assert.throws(() => invalidate(asid8.r, asid8.n, [tlbi(OP.TLBI_NH_ASID, { asid: 0x105 })]), (e: { code: string }) => e.code === 'EIO');
  });

  test('rewriting: the vIOMMU VMID replaces the guest\'s, the vSID becomes the pSID, NSNH_ALL becomes NH_ALL', () => {
    const f = fixture('mainline', { ats: true });
    const seen: SmmuTraceRecord[] = [];
    const off = onSmmuTrace(f.r.emu.bus, (x) => { if (x.point === 'cmd' && 'guest' in x) seen.push(x); });
    try {
      invalidate(f.r, f.n, [cmd.make(OP.TLBI_NSNH_ALL), tlbi(OP.TLBI_NH_ASID, { asid: 5, vmid: 0x1234 }),
        cmd.make(OP.CFGI_CD_ALL, { SID: 0x77 }), cmd.make(OP.ATC_INV, { SID: 0x77 })]);
    } finally {
      off();
    }
    const vmid = (hwptPaging(f.r, f.n.parent).domain as SmmuPagingDomain).vmid;
    const host = seen.map((x) => x.host as bigint[]);
    assert.equal(getN(host[0]!, CMD.OP), OP.TLBI_NH_ALL);
    assert.equal(host[0]![1], 0n);
    assert.equal(getN(host[1]!, CMD.VMID), getN(host[0]!, CMD.VMID));
    assert.notEqual(getN(host[1]!, CMD.VMID), 0x1234);
    assert.equal(getN(host[0]!, CMD.VMID), vmid);
    assert.equal(getN(host[2]!, CMD.SID), f.r.master.sid);
    assert.equal(getN(host[3]!, CMD.SID), f.r.master.sid);
  });

  test('HWPT_INVALIDATE on the nested HWPT itself: EOPNOTSUPP', () => {
    const r = rig();
    const n = nestSetup(r);
    const h = nestedHwpt(r, n, vste({ cfg: 4 }));
    assert.equal(errOf(() => r.fd.hwptInvalidate(h, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 16, [cmdBytes(cmd.make(OP.TLBI_NSNH_ALL))])), 'EOPNOTSUPP');
  });
});

describe('vEVENTQ', () => {
  test('no vEVENTQ: the event is logged on the host; overflow: the LOST marker', () => {
    const f = fixture();
    const t = faultOf(dma(f.r, 0x2000_0000n));
    assert.equal(t.detail.disposition, 'logged (vEVENTQ: EOPNOTSUPP)');
    const q = f.r.fd.veventqAlloc(f.n.viommu, VEVENTQ_TYPE_ARM_SMMUV3, 2);
    for (let i = 0; i < 3; i++) dma(f.r, BigInt(0x2000_0000 + i * 4096));
    const evs = readEvents(f.r, q.veventqFd);
    assert.deepEqual(evs.map((e) => [e.flags, e.seq]), [[0, 0], [0, 1], [1, 2]]);
    assert.deepEqual(evs.slice(0, 2).map((e) => e.evt!.inputAddr), [0x2000_0000n, 0x2000_1000n]);
  });

  test('the vSID captured at attach stays after the vDEVICE goes (kernel behaviour)', () => {
    const f = fixture();
    const q = f.r.fd.veventqAlloc(f.n.viommu, VEVENTQ_TYPE_ARM_SMMUV3, 8);
    f.r.fd.destroy(f.n.vdev);
    dma(f.r, 0x2000_0000n);
    assert.equal(readEvents(f.r, q.veventqFd)[0]!.evt!.sid, 0x77);
  });

  test('a virt_id of 2^32 or more is accepted (kernel); commands never reach it (32-bit SID field), events carry its low 32 bits', () => {
    const r = rig();
    const n = nestSetup(r, { vsid: (1n << 32n) | 0x77n });
    const t = n.ram.table(12, 48);
    const cd = n.ram.alloc(64);
    n.ram.writeWords(cd, guestCd(t, 5));
    attach(r, nestedHwpt(r, n, vste({ ctxPtr: cd })));
    assert.throws(() => invalidate(r, n, [cmd.make(OP.CFGI_CD_ALL, { SID: 0x77 })]),
      (e: { code: string; handled: number }) => e.code === 'EIO' && e.handled === 0);
    const q = r.fd.veventqAlloc(n.viommu, VEVENTQ_TYPE_ARM_SMMUV3, 8);
    dma(r, 0x2000_0000n);
    assert.equal(readEvents(r, q.veventqFd)[0]!.evt!.sid, 0x77);
  });

  test('6.13: no forwarding at all (no vmaster), the record stays on the host', () => {
    const f = fixture('6.13');
    const t = faultOf(dma(f.r, 0x2000_0000n));
    assert.equal(t.detail.id, EVT_ID.F_TRANSLATION);
    assert.equal(t.detail.disposition, 'pinned (host log)');
  });
});

describe('older kernels', () => {
  test('6.12: no hw_info (type NONE, no data), no nest parent, no vIOMMU; stage-1 paging domains translate', () => {
    const r = rig({ profile: '6.12' });
    const info = r.fd.getHwInfo(r.devId, { dataLen: 40 });
    assert.deepEqual([info.dataType, info.dataLen], [0, 0]);
    const ioas = r.fd.ioasAlloc();
    assert.equal(errOf(() => r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags: NEST })), 'EOPNOTSUPP');
    const ram = new GuestRam(r.fd, ioas, 0x10_0000, 1 << 20);
    const hw = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas });
    deviceAttach(r.idev, undefined, hw);
    assert.equal(physOf(dma(r, 0x10_2345n)), ram.pa(0x10_2345));
  });

  test('GET_HW_INFO flags: the repeat-TLBI/CFGI erratum only where the ABI has the flag', () => {
    for (const [p, want] of [['mainline', 1], ['6.17', 0]] as const) {
      const r = rig({ profile: p, smmu: { erratumRepeatTlbiCfgi: true } });
      const info = r.fd.getHwInfo(r.devId, { dataLen: 40 });
      assert.equal(decode(S.iommu_hw_info_arm_smmuv3, info.data).flags, want);
    }
  });
});
