// The kernel's own domains on the emulated SMMU: stage-1 paging domains (the
// default for HWPT_ALLOC / IOAS attach) and stage-2 nest parents, their page
// tables as io-pgtable writes them, the TLB maintenance on unmap, allocation
// flags per kernel, the IOTLB bound, and the trace points.
import { FAIL_NTH_SELFTEST } from '../../core/fault_inject.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { deviceAttach, deviceUnbind } from '../../core/device.js';
import { driverEventText } from '../../core/driver_trace.js';
import type { TraceEvent } from '../../core/trace_bus.js';
import { errOf } from '../mock/test_helpers.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import { SmmuPagingDomain } from './arm_smmu_v3.js';
import { Iotlb } from './iotlb.js';
import { D } from './mem.js';
import { LpaeTable, PROT } from './pgtable.js';
import { EVT_ID, getN, STE, STE_CONFIG } from './regs.js';
import { formatSmmuTrace, onSmmuTrace, SmmuTracer, type SmmuTraceRecord } from './trace.js';
import {
  assertFault, dma, faultOf, GuestRam, hwptPaging, PhysRam, physOf, rig, type Rig,
} from './test_helpers.js';

function withIoas(r: Rig, flags = 0): { ioas: number; hwpt: number; ram: GuestRam } {
  const ioas = r.fd.ioasAlloc();
  const hwpt = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags });
  const ram = new GuestRam(r.fd, ioas, 0x20_0000, 4 << 20);
  return { ioas, hwpt, ram };
}

describe('kernel paging domains', () => {
  test('stage-1 domain: Config 5 STE with the kernel CD (ASID, VMID 0); DMA walks the host tables', () => {
    const r = rig();
    const { hwpt, ram } = withIoas(r);
    deviceAttach(r.idev, undefined, hwpt);
    const d = hwptPaging(r, hwpt).domain as SmmuPagingDomain;
    assert.deepEqual([d.stage, d.asid > 0, d.vmid], [1, true, 0]);
    const ste = r.smmu.hw.readSte(r.master.sid)!;
    assert.equal(getN(ste, STE.CONFIG), STE_CONFIG.S1_TRANS);
    assert.equal(getN(ste, STE.S2VMID), 0);
    assert.equal(physOf(dma(r, 0x20_1238n, { write: true })), ram.pa(0x20_1238));
    assert.equal(d.iovaToPhys(0x20_1238n), ram.pa(0x20_1238));
    assert.equal(d.pgsizeBitmap, (1n << 12n) | (1n << 21n) | (1n << 30n));
    assert.equal(d.apertureLast, (1n << 48n) - 1n);
  });

  test('unmap issues the TLBI for the range: the next access faults (recorded, not forwarded: no vIOMMU)', () => {
    const r = rig();
    const { ioas, hwpt } = withIoas(r);
    deviceAttach(r.idev, undefined, hwpt);
    physOf(dma(r, 0x20_1000n));
    const before = r.smmu.hw.cmdCount.get('TLBI_NH_VA') ?? 0;
    r.fd.ioasUnmap(ioas, 0x20_0000n, 4n << 20n);
    assert.ok((r.smmu.hw.cmdCount.get('TLBI_NH_VA') ?? 0) > before);
    const f = faultOf(dma(r, 0x20_1000n));
    assert.equal(f.detail.id, EVT_ID.F_TRANSLATION);
    assert.equal(f.detail.disposition, 'pinned (host log)');
  });

  test('the software MSI window is reserved in the IOAS', () => {
    const r = rig();
    const ioas = r.fd.ioasAlloc();
    const hwpt = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas });
    deviceAttach(r.idev, undefined, hwpt);
    const va = r.fd.mem.mmap(4096);
    assert.equal(errOf(() => r.fd.ioasMap({ ioasId: ioas, userVa: va, length: 4096n, iova: 0x800_0000n })), 'EINVAL');
  });

  test('nest parent attached directly: stage-2 only STE, the IOVA is the IPA; unmap: S2_IPA + NH_ALL', () => {
    const r = rig();
    const { ioas, hwpt, ram } = withIoas(r, HWPT_ALLOC.NEST_PARENT);
    deviceAttach(r.idev, undefined, hwpt);
    const d = hwptPaging(r, hwpt).domain as SmmuPagingDomain;
    assert.deepEqual([d.stage, d.nestParent, d.vmid > 0], [2, true, true]);
    assert.equal(getN(r.smmu.hw.readSte(r.master.sid)!, STE.CONFIG), STE_CONFIG.S2_TRANS);
    assert.equal(physOf(dma(r, 0x20_3000n)), ram.pa(0x20_3000));
    r.fd.ioasUnmap(ioas, 0x20_0000n, 4n << 20n);
    assert.ok(r.smmu.hw.cmdCount.get('TLBI_S2_IPA')! > 0);
    assert.ok(r.smmu.hw.cmdCount.get('TLBI_NH_ALL')! > 0);
    assertFault(dma(r, 0x20_3000n), EVT_ID.F_TRANSLATION, { stage: 2 });
  });

  test('allocation flags per kernel: DIRTY_TRACKING refused (no HTTU), NEST_PARENT|PASID refused, PASID from 6.15', () => {
    const r = rig();
    const ioas = r.fd.ioasAlloc();
    const a = (flags: number) => errOf(() => r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags }));
    assert.equal(a(HWPT_ALLOC.DIRTY_TRACKING), 'EOPNOTSUPP');
    assert.equal(a(HWPT_ALLOC.NEST_PARENT | HWPT_ALLOC.PASID), 'EOPNOTSUPP');
    assert.equal(a(HWPT_ALLOC.PASID), 0);
    assert.equal(a(HWPT_ALLOC.NEST_PARENT), 0);
    const r13 = rig({ profile: '6.13' });
    const ioas13 = r13.fd.ioasAlloc();
    assert.equal(errOf(() => r13.fd.hwptAlloc({ devId: r13.devId, ptId: ioas13, flags: HWPT_ALLOC.PASID })), 'EOPNOTSUPP');
    const s2only = rig({ smmu: { stage1: false } });
    const d = hwptPaging(s2only, s2only.fd.hwptAlloc({ devId: s2only.devId, ptId: s2only.fd.ioasAlloc() })).domain as SmmuPagingDomain;
    assert.equal(d.stage, 2, 'without stage 1 the default domain is stage 2');
  });

  test('VMIDs and ASIDs are allocated lowest-free and released (with their TLB flush) when the domain goes', () => {
    const r = rig();
    const ioas = r.fd.ioasAlloc();
    const p1 = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
    const p2 = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
    const v = (id: number) => (hwptPaging(r, id).domain as SmmuPagingDomain).vmid;
    assert.deepEqual([v(p1), v(p2)], [1, 2]);
    r.fd.destroy(p1);
    assert.equal(r.smmu.hw.cmdCount.get('TLBI_S12_VMALL'), 1);
    assert.equal(v(r.fd.hwptAlloc({ devId: r.devId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT })), 1);
  });

  test('a failed map (fail_nth at a table allocation) leaves nothing mapped', () => {
    let failed = 0;
    for (let nth = 1; nth < 12; nth++) {
      const r = rig();
      const ioas = r.fd.ioasAlloc();
      const hwpt = r.fd.hwptAlloc({ devId: r.devId, ptId: ioas });
      const va = r.fd.mem.mmap(8 << 20);
      r.emu.faults.settings = { ...FAIL_NTH_SELFTEST, pageMinOrder: 0 }; // single table pages are points too
      r.emu.failNth = nth;
      const e = errOf(() => r.fd.ioasMap({ ioasId: ioas, userVa: va, length: 8n << 20n, iova: 0x4000_0000n }));
      r.emu.failNth = 0;
      const d = hwptPaging(r, hwpt).domain as SmmuPagingDomain;
      if (!e) continue;
      failed++;
      for (let off = 0; off < 8 << 20; off += 4096) assert.equal(d.iovaToPhys(BigInt(0x4000_0000 + off)), undefined, `nth ${nth}`);
    }
    assert.ok(failed > 3, 'failures were injected');
  });
});

describe('io-pgtable encodings', () => {
  const ram = new PhysRam();
  after(() => ram.release());
  test('stage-2 VTCR and concatenation (48-bit 4K: L0, SL0 2; 48-bit 16K: 2 tables at L1; 40-bit 4K: 2 tables at L1)', () => {
    const t4 = new LpaeTable(ram, { stage: 2, g: 12, ias: 48, oas: 48 });
    assert.deepEqual(t4.vtcr, { t0sz: 16, sl0: 2, tg: 0, ps: 5, irgn: 1, orgn: 1, sh: 3 });
    const t16 = new LpaeTable(ram, { stage: 2, g: 14, ias: 48, oas: 48 });
    assert.deepEqual([t16.startLevel, t16.pgdBits, t16.vtcr.sl0], [1, 12, 2]);
    const t40 = new LpaeTable(ram, { stage: 2, g: 12, ias: 40, oas: 40 });
    assert.deepEqual([t40.startLevel, t40.pgdBits, t40.vtcr.sl0, t40.vtcr.ps], [1, 10, 1, 2]);
    const t64 = new LpaeTable(ram, { stage: 2, g: 16, ias: 48, oas: 48 });
    assert.deepEqual([t64.startLevel, t64.pgdBits, t64.vtcr.tg], [1, 6, 1]);
  });

  test('leaf bits from prot: stage 1 (nG, AP, AttrIndx, SH, AF, XN) and stage 2 (S2AP, MemAttr, FWB)', () => {
    const s1 = new LpaeTable(ram, { stage: 1, g: 12, ias: 48, oas: 48 });
    assert.deepEqual(s1.protToPte(PROT.READ | PROT.WRITE | PROT.CACHE), [0x800 | 0x400 | 0x300 | 0x40 | (1 << 2), 0]);
    assert.deepEqual(s1.protToPte(PROT.READ | PROT.PRIV | PROT.NOEXEC), [0x800 | 0x400 | 0x200 | 0x80, 3 << 21]);
    const s2 = new LpaeTable(ram, { stage: 2, g: 12, ias: 48, oas: 48 });
    assert.deepEqual(s2.protToPte(PROT.READ | PROT.WRITE | PROT.CACHE), [0x400 | 0x300 | 0xc0 | (0xf << 2), 0]);
    assert.deepEqual(s2.protToPte(PROT.READ | PROT.MMIO), [0x400 | 0x200 | 0x40 | (0x1 << 2), 0]);
    const fwb = new LpaeTable(ram, { stage: 2, g: 12, ias: 48, oas: 48, s2fwb: true });
    assert.equal((fwb.protToPte(PROT.READ | PROT.CACHE)[0] >> 2) & 0xf, 0x6);
  });

  test('blocks where aligned; a partial unmap splits the block and keeps the rest', () => {
    const t = new LpaeTable(ram, { stage: 1, g: 12, ias: 48, oas: 48 });
    t.mapRange(0x4000_0000, 0x8000_0000, 4 << 20, PROT.READ | PROT.WRITE);
    // Two 2 MiB blocks at level 2.
    const l2 = leafLevelOf(t, 0x4000_0000);
    assert.equal(l2, 2);
    assert.equal(t.unmap(0x4010_0000, 4096), 4096);
    assert.equal(t.iovaToPhys(0x4010_0000), undefined);
    assert.equal(t.iovaToPhys(0x4010_1000), 0x8010_1000);
    assert.equal(t.iovaToPhys(0x4000_0000), 0x8000_0000);
    assert.equal(leafLevelOf(t, 0x4000_0000), 3);
    assert.equal(leafLevelOf(t, 0x4020_0000), 2);
    assert.equal(t.unmap(0x4000_0000, 4 << 20), (4 << 20) - 4096);
  });
});

function leafLevelOf(t: LpaeTable, va: number): number {
  let table = t.root;
  for (let l = t.startLevel; l <= 3; l++) {
    const shift = 12 + 9 * (3 - l);
    t.mem.read(table + 8 * (Math.floor(va / 2 ** shift) % 512));
    if ((D.lo & 3) === 3 && l < 3) {
      table = (D.hi & 0xffff) * 2 ** 32 + ((D.lo & ~0xfff) >>> 0);
      continue;
    }
    return l;
  }
  return -1;
}

describe('IOTLB', () => {
  test('bounded LRU: the least recently used entry goes; a hit refreshes', () => {
    const tlb = new Iotlb(3, new SmmuTracer('t', null));
    const ins = (va: number) => tlb.insert({ vmid: 1, asid: 2, va, sizeLog2: 12, pa: va, ipa: va, s1perm: 63, s2perm: 63, level: 3, g: 12, s2level: 0, s2g: 0, s2dev: false });
    ins(0x1000);
    ins(0x2000);
    ins(0x3000);
    assert.ok(tlb.lookup(1, 2, 0x1000, [12]));
    ins(0x4000);
    assert.equal(tlb.size, 3);
    assert.equal(tlb.lookup(1, 2, 0x2000, [12]), undefined, 'LRU evicted');
    assert.ok(tlb.lookup(1, 2, 0x1000, [12]));
    assert.ok(tlb.lookup(1, 2, 0x1fff, [12, 21]));
    assert.equal(tlb.lookup(1, 3, 0x1000, [12]), undefined, 'other ASID');
    assert.equal(tlb.lookup(2, 2, 0x1000, [12]), undefined, 'other VMID');
  });

  test('an SMMU with a tiny IOTLB still translates correctly (eviction refetches)', () => {
    const r = rig({ smmu: { iotlbEntries: 2 } });
    const { hwpt, ram } = withIoas(r);
    deviceAttach(r.idev, undefined, hwpt);
    for (let i = 0; i < 20; i++) assert.equal(physOf(dma(r, BigInt(0x20_0000 + i * 4096))), ram.pa(0x20_0000 + i * 4096));
    assert.equal(r.smmu.hw.iotlb.size, 2);
  });
});

describe('trace points', () => {
  test('a first access traces the STE and CD decode, each walk level, the IOTLB miss and insert; formatting is one line', () => {
    const r = rig();
    const { hwpt } = withIoas(r);
    deviceAttach(r.idev, undefined, hwpt);
    const recs: SmmuTraceRecord[] = [];
    const off = onSmmuTrace(r.emu.bus, (x) => recs.push(x));
    try {
      physOf(dma(r, 0x20_0000n));
    } finally {
      off();
    }
    const points = recs.map((x) => `${x.point}${'op' in x ? `:${x.op}` : ''}`);
    for (const p of ['cfgcache:miss', 'ste', 'cd', 'iotlb:miss', 'walk', 'iotlb:insert', 'translate']) assert.ok(points.includes(p), p);
    assert.equal(recs.filter((x) => x.point === 'walk').length, 4);
    assert.match(formatSmmuTrace(recs.find((x) => x.point === 'walk')!), /^smmu0 walk stage=1 level=0 va=0x200000 descAddr=0x[0-9a-f]+ desc=0x[0-9a-f]+$/);
    // Nobody listening: nothing is built or delivered.
    let n = 0;
    const off2 = onSmmuTrace(r.emu.bus, () => n++);
    off2();
    physOf(dma(r, 0x20_1000n));
    assert.equal(n, 0);
  });

  test('per emulator: records reach only the bus of the emulator the SMMU is in; a listener without driver events turns them off', () => {
    const a = rig();
    const b = rig();
    deviceAttach(a.idev, undefined, withIoas(a).hwpt);
    deviceAttach(b.idev, undefined, withIoas(b).hwpt);
    const seenA: SmmuTraceRecord[] = [];
    const seenB: SmmuTraceRecord[] = [];
    const offA = onSmmuTrace(a.emu.bus, (x) => seenA.push(x));
    const offB = onSmmuTrace(b.emu.bus, (x) => seenB.push(x));
    try {
      physOf(dma(a, 0x20_0000n));
    } finally {
      offA();
      offB();
    }
    assert.ok(seenA.some((x) => x.point === 'walk'), 'the DMA of emulator A traced on A');
    assert.deepEqual(seenB, [], 'nothing of A on B');
    // The ioctl printer's kind of listener (drivers: false): the bus is on, the SMMU's trace points are not.
    const events: string[] = [];
    const off = a.emu.bus.subscribe((e) => events.push(e.t), { drivers: false });
    try {
      assert.equal(a.emu.bus.on, true);
      assert.equal(a.smmu.hw.t.on, false);
      physOf(dma(a, 0x20_3000n));
      a.fd.ioasAlloc();
    } finally {
      off();
    }
    assert.ok(events.includes('ioctl') || events.includes('obj'), 'core events still delivered');
    assert.ok(!events.includes('driver'), events.join(','));
    // A listener naming other drivers only (a device model): still untraced; naming this one: traced.
    const got: string[] = [];
    const offDev = a.emu.bus.subscribe((e) => { if (e.t === 'driver') got.push(e.driver); }, { drivers: ['ioat'] });
    assert.equal(a.smmu.hw.t.on, false);
    physOf(dma(a, 0x20_4000n));
    const offSmmu = a.emu.bus.subscribe(() => {}, { drivers: ['arm-smmu-v3'] });
    assert.equal(a.smmu.hw.t.on, true, 'the cached answer follows the bus generation');
    physOf(dma(a, 0x20_5000n));
    offSmmu();
    assert.equal(a.smmu.hw.t.on, false);
    offDev();
    assert.deepEqual(got, [], 'SMMU records are not delivered to a listener of other drivers');
  });

  test('a bus record is a driver event: driver arm-smmu-v3, the point, the instance in data', () => {
    const r = rig({ smmu: { name: 'smmuX' } });
    deviceAttach(r.idev, undefined, withIoas(r).hwpt);
    const evs: TraceEvent[] = [];
    const off = r.emu.bus.subscribe((e) => evs.push(e));
    try {
      physOf(dma(r, 0x20_0000n));
    } finally {
      off();
    }
    const walk = evs.find((e) => e.t === 'driver' && e.point === 'walk');
    assert.ok(walk && walk.t === 'driver');
    assert.equal(walk.driver, 'arm-smmu-v3');
    assert.equal(walk.data.smmu, 'smmuX');
    assert.equal(walk.data.stage, 1);
    assert.match(driverEventText(walk), /^arm-smmu-v3 walk smmu=smmuX stage=1 level=0 va=0x200000 descAddr=0x[0-9a-f]+ desc=0x[0-9a-f]+$/);
  });
});

describe('teardown', () => {
  test('unbind, then closing the context: STE back to abort, every driver table page leaves physical memory, VMIDs/ASIDs freed', async () => {
    const { nestSetup, nestedHwpt, attach, vste, guestCd } = await import('./test_helpers.js');
    const r = rig();
    const n = nestSetup(r);
    const t = n.ram.table(12, 48);
    t.map(0x1000, n.ram.alloc(4096), 4096, PROT.READ | PROT.CACHE);
    const cd = n.ram.alloc(64);
    n.ram.writeWords(cd, guestCd(t, 1));
    attach(r, nestedHwpt(r, n, vste({ ctxPtr: cd })));
    physOf(dma(r, 0x1000n));
    const s1 = r.fd.hwptAlloc({ devId: r.devId, ptId: n.ioas });
    assert.ok(s1 > 0);
    assert.ok(r.smmu.tables.liveRuns > 0);
    deviceUnbind(r.idev); // a bound device keeps the context alive (the VFIO device fd holds it)
    assert.deepEqual(r.smmu.hw.readSte(r.master.sid), [1n, 0n, 0n, 0n, 0n, 0n, 0n, 0n]);
    r.fd.close();
    assert.deepEqual(r.smmu.hw.readSte(r.master.sid), [1n, 0n, 0n, 0n, 0n, 0n, 0n, 0n]);
    assert.equal(r.smmu.tables.liveRuns, 0);
    assert.equal(r.smmu.vmids.size, 0);
    assert.equal(r.drv.asids.size, 0);
  });
});
