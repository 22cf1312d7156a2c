// Every fault class with the record it must produce (spec 04 §4, §5.3,
// §5.7): configuration errors (C_BAD_STE / C_BAD_CD / C_BAD_SUBSTREAMID /
// F_STREAM_DISABLED / C_BAD_STREAMID), stage-1 and stage-2 translation,
// address-size, access-flag and permission faults, walk and CD-fetch aborts,
// what is recorded (CD.R, STE.S2R) and what the host forwards to the vEVENTQ
// (stage-1 faults and C_BAD_*, with the vSID) or keeps (stage 2).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { deviceReplace } from '../../core/device.js';
import { decodeEvent } from './event.js';
import { bytesFromWords, build, EVT_CLASS, EVT_ID, STE, STE_CONFIG, wordsFromBytes } from './regs.js';
import type { SmmuOptions } from './config.js';
import {
  assertFault, attach, cdWords, dma, faultOf, GuestRam, guestCd, nestedHwpt, nestSetup, PhysRam, physOf, programSte,
  PROT, readEvents, rig, S2_LEAF, s2SteWords, specMap, startTableBytes, VEVENTQ_TYPE_ARM_SMMUV3, vste,
  type Rig,
} from './test_helpers.js';
import type { Nest } from './test_helpers.js';
import type { LpaeTable } from './pgtable.js';

const VA = 0x1000_0000;
const RW = PROT.READ | PROT.WRITE | PROT.CACHE;

interface Fx {
  r: Rig;
  n: Nest;
  s1: LpaeTable;
  data: number;
  cd: number;
  q: { veventqId: number; veventqFd: number };
}

function nested(o: { smmu?: SmmuOptions; cd?: Record<string, bigint | number | boolean>; prot?: number; vste?: Parameters<typeof vste>[0] } = {}): Fx {
  const r = rig({ smmu: o.smmu });
  const n = nestSetup(r);
  const s1 = n.ram.table(12, 48);
  const data = n.ram.alloc(4096);
  s1.map(VA, data, 4096, o.prot ?? RW);
  const cd = n.ram.alloc(64);
  n.ram.writeWords(cd, guestCd(s1, 5, o.cd));
  attach(r, nestedHwpt(r, n, vste({ ctxPtr: cd, ...o.vste })));
  const q = r.fd.veventqAlloc(n.viommu, VEVENTQ_TYPE_ARM_SMMUV3, 64);
  return { r, n, s1, data, cd, q };
}

/** The one record the vEVENTQ holds, checked to be the hardware record with the vSID in place of the pSID. */
function forwardedOne(x: Fx, hwRecord: Uint8Array) {
  const evs = readEvents(x.r, x.q.veventqFd);
  assert.equal(evs.length, 1, 'one record forwarded');
  const w = wordsFromBytes(hwRecord);
  const v = wordsFromBytes(evs[0]!.raw);
  assert.equal(v[0]! >> 32n, x.n.vsid, 'StreamID replaced by the vSID');
  assert.equal(v[0]! & 0xffffffffn, w[0]! & 0xffffffffn);
  assert.deepEqual(v.slice(1), w.slice(1), 'the rest of the record passes through');
  return evs[0]!.evt!;
}

function noneForwarded(x: Fx): void {
  assert.deepEqual(readEvents(x.r, x.q.veventqFd), []);
}

describe('stage-1 faults (forwarded with the vSID)', () => {
  test('F_TRANSLATION: invalid leaf, invalid table entry; record has InputAddr, RnW, PnU, InD, S2 = 0', () => {
    const x = nested();
    const f = faultOf(dma(x.r, BigInt(VA + 0x2000), { write: true, priv: true, instr: false }));
    assert.equal(f.detail.id, EVT_ID.F_TRANSLATION);
    assert.equal(f.stage, 1);
    assert.equal(f.detail.level, 3);
    const e = forwardedOne(x, f.detail.event!);
    assert.deepEqual([e.inputAddr, e.read, e.priv, e.instr, e.s2], [BigInt(VA + 0x2000), false, true, false, false]);
    const f0 = faultOf(dma(x.r, 0x7f00_0000_0000n));
    assert.equal(f0.detail.level, 0, 'nothing below level 0 there');
    assert.equal(forwardedOne(x, f0.detail.event!).read, true);
  });

  test('F_TRANSLATION: address outside both TTB regions, and the disabled TTB1 region (EPD1)', () => {
    const x = nested();
    assertFault(dma(x.r, 1n << 48n), EVT_ID.F_TRANSLATION, { stage: 1 });
    const e = assertFault(dma(x.r, 0xffff_ffff_ffff_f000n), EVT_ID.F_TRANSLATION, { stage: 1 });
    assert.equal(e.inputAddr, 0xffff_ffff_ffff_f000n);
    assert.equal(readEvents(x.r, x.q.veventqFd).length, 2);
  });

  test('TTB1 region: top-byte-ignore and a walk through TTB1', () => {
    const r = rig();
    const n = nestSetup(r);
    const t0 = n.ram.table(12, 48);
    const t1 = n.ram.table(12, 48);
    const d = n.ram.alloc(4096);
    t1.map(0xffff_8000_0000_0000 % 2 ** 48 + 0x3000, d, 4096, RW);
    const cd = n.ram.alloc(64);
    const w = guestCd(t0, 5, { EPD1: 0, T1SZ: 16, TG1: 2, TBI1: 1 });
    w[2] = BigInt(t1.root);
    n.ram.writeWords(cd, w);
    attach(r, nestedHwpt(r, n, vste({ ctxPtr: cd })));
    assert.equal(physOf(dma(r, 0xffff_8000_0000_3008n)), n.ram.pa(d) + 8);
    assert.equal(physOf(dma(r, 0x12ff_8000_0000_3010n)), n.ram.pa(d) + 0x10, 'TBI1: the top byte is ignored');
    assertFault(dma(r, 0x0000_8000_0000_3010n), EVT_ID.F_TRANSLATION, { stage: 1 });
  });

  test('F_ADDR_SIZE: output above CD.IPS', () => {
    const x = nested({ cd: { IPS: 0 } }); // 32-bit IPA
    x.s1.map(0x2000_0000, 2 ** 33, 4096, RW);
    const f = faultOf(dma(x.r, 0x2000_0010n));
    assert.equal(f.detail.id, EVT_ID.F_ADDR_SIZE);
    assert.equal(forwardedOne(x, f.detail.event!).id, EVT_ID.F_ADDR_SIZE);
  });

  test('F_ACCESS: AF = 0 faults unless CD.AFFD = 1', () => {
    for (const affd of [0, 1]) {
      const x = nested({ cd: { AFFD: affd } });
      // Clear AF in the leaf of VA.
      const leaf = leafAddr(x);
      x.n.ram.write64(leaf, x.n.ram.read64(leaf) & ~0x400n);
      const t = dma(x.r, BigInt(VA));
      if (affd) assert.equal(physOf(t), x.n.ram.pa(x.data));
      else assert.equal(forwardedOne(x, faultOf(t).detail.event!).id, EVT_ID.F_ACCESS);
    }
  });

  test('F_PERMISSION: write to read-only, unprivileged to privileged-only, APTable, HAD, UXN', () => {
    const ro = nested({ prot: PROT.READ | PROT.CACHE });
    assert.equal(physOf(dma(ro.r, BigInt(VA))), ro.n.ram.pa(ro.data));
    const f = faultOf(dma(ro.r, BigInt(VA), { write: true }));
    assert.equal(f.kind, 'permission');
    assert.equal(forwardedOne(ro, f.detail.event!).read, false);

    const priv = nested({ prot: RW | PROT.PRIV });
    assertFault(dma(priv.r, BigInt(VA)), EVT_ID.F_PERMISSION, { stage: 1 });
    assert.equal(physOf(dma(priv.r, BigInt(VA), { priv: true, write: true })), priv.n.ram.pa(priv.data));

    for (const had of [0, 1]) {
      const x = nested({ cd: { HAD0: had } });
      // APTable[1] (no writes below) on the level-2 table entry.
      const l2 = tableEntryAddr(x, 2);
      x.n.ram.write64(l2, x.n.ram.read64(l2) | (1n << 62n));
      const t = dma(x.r, BigInt(VA), { write: true });
      if (had) assert.equal(physOf(t), x.n.ram.pa(x.data), 'HAD0 ignores APTable');
      else assertFault(t, EVT_ID.F_PERMISSION, { stage: 1 });
    }

    const nx = nested({ prot: RW | PROT.NOEXEC });
    assert.equal(physOf(dma(nx.r, BigInt(VA))), nx.n.ram.pa(nx.data));
    const e = assertFault(dma(nx.r, BigInt(VA), { instr: true }), EVT_ID.F_PERMISSION, { stage: 1 });
    assert.equal(e.instr, true);
  });

  test('CD.R = 0: the fault terminates the access but no record is written', () => {
    const x = nested({ cd: { R: 0 } });
    const before = x.r.smmu.hw.hostEvents.length;
    const f = faultOf(dma(x.r, BigInt(VA + 0x5000)));
    assert.equal(f.detail.recorded, false);
    assert.equal(f.kind, 'translation');
    assert.equal(x.r.smmu.hw.hostEvents.length, before);
    noneForwarded(x);
  });
});

/** Address of the level-3 descriptor for VA in the fixture's table. */
function leafAddr(x: Fx): number {
  return tableEntryAddr(x, 3);
}

function tableEntryAddr(x: Fx, level: number): number {
  let table = x.s1.root;
  for (let l = 0; l <= level; l++) {
    const shift = 12 + 9 * (3 - l);
    const a = table + 8 * (Math.floor(VA / 2 ** shift) % 512);
    if (l === level) return a;
    table = Number(x.n.ram.read64(a) & 0xffff_ffff_f000n);
  }
  throw new Error('unreachable');
}

describe('stage-2 faults (host side only)', () => {
  test('final IPA not in the IOAS: F_TRANSLATION, S2 = 1, CLASS = IN, IPA; kept on the host', () => {
    const x = nested();
    x.s1.map(VA + 0x4000, 0x9000_0000, 4096, RW);
    const f = faultOf(dma(x.r, BigInt(VA + 0x4010)));
    assert.equal(f.detail.id, EVT_ID.F_TRANSLATION);
    assert.equal(f.stage, 2);
    assert.equal(f.detail.disposition, 'pinned (host log)');
    assert.equal(f.event!.cls, EVT_CLASS.IN);
    assert.equal(f.event!.ipa, 0x9000_0000n);
    assert.equal(f.event!.inputAddr, BigInt(VA + 0x4010));
    assert.equal(x.r.smmu.hw.hostEvents.at(-1)!.decoded.s2, true);
    noneForwarded(x);
  });

  test('stage-1 table at an unmapped IPA: CLASS = TT, TTRnW; CD at an unmapped IPA: CLASS = CD', () => {
    const x = nested();
    const l2 = tableEntryAddr(x, 2);
    x.n.ram.write64(l2, 0xa000_0000n | 3n);
    const e = assertFault(dma(x.r, BigInt(VA)), EVT_ID.F_TRANSLATION, { stage: 2, cls: EVT_CLASS.TT, ipa: 0xa000_0000n });
    assert.equal(e.ttRead, true);
    noneForwarded(x);

    const r = rig();
    const n = nestSetup(r);
    attach(r, nestedHwpt(r, n, vste({ ctxPtr: 0xb000_0040 })));
    const e2 = assertFault(dma(r, 0x1000n), EVT_ID.F_TRANSLATION, { stage: 2, cls: EVT_CLASS.CD, ipa: 0xb000_0000n });
    assert.equal(e2.ttRead, true);
  });

  test('write to memory the IOAS maps read-only: F_PERMISSION at stage 2 (reads pass)', () => {
    const x = nested();
    const roRam = new GuestRam(x.r.fd, x.n.ioas, 0x5000_0000, 1 << 20, { readOnly: true });
    x.s1.map(VA + 0x8000, 0x5000_0000, 4096, RW);
    assert.equal(physOf(dma(x.r, BigInt(VA + 0x8000))), roRam.pa(0x5000_0000));
    const e = assertFault(dma(x.r, BigInt(VA + 0x8000), { write: true }), EVT_ID.F_PERMISSION,
      { stage: 2, cls: EVT_CLASS.IN, ipa: 0x5000_0000n });
    assert.equal(e.read, false);
    // The cached combined entry attributes a later write denial to stage 2 as well.
    assertFault(dma(x.r, BigInt(VA + 0x8008), { write: true }), EVT_ID.F_PERMISSION, { stage: 2 });
    noneForwarded(x);
  });
});

describe('configuration errors', () => {
  const CD_CASES: [string, Record<string, number>][] = [
    ['V = 0', { V: 0 }], ['AA64 = 0', { AA64: 0 }], ['A = 0', { A: 0 }], ['S = 1', { S: 1 }], ['HA = 1', { HA: 1 }],
    ['HD = 1', { HD: 1 }], ['ENDI = 1', { ENDI: 1 }], ['T0SZ = 15', { T0SZ: 15 }], ['T0SZ = 40', { T0SZ: 40 }],
    ['TG0 = 3', { TG0: 3 }], ['TTB1 enabled with TG1 = 0', { EPD1: 0, TG1: 0, T1SZ: 16 }],
  ];
  for (const [name, over] of CD_CASES) {
    test(`C_BAD_CD: ${name} (forwarded, dword 0 only)`, () => {
      const x = nested({ cd: over });
      const f = faultOf(dma(x.r, BigInt(VA)));
      assert.equal(f.detail.id, EVT_ID.C_BAD_CD, f.detail.reason);
      const w = wordsFromBytes(f.detail.event!);
      assert.deepEqual(w.slice(1), [0n, 0n, 0n]);
      assert.equal(forwardedOne(x, f.detail.event!).id, EVT_ID.C_BAD_CD);
    });
  }

  test('a CD with EPD1 = 1 is valid whatever TG1/T1SZ hold; TTB0 beyond the IPS is C_BAD_CD', () => {
    const ok = nested({ cd: { EPD1: 1, TG1: 0, T1SZ: 0 } });
    assert.equal(physOf(dma(ok.r, BigInt(VA))), ok.n.ram.pa(ok.data));
    const x = nested({ cd: { IPS: 0 } });
    const w = guestCd(x.s1, 5, { IPS: 0 });
    w[1] = 1n << 33n;
    x.n.ram.writeWords(x.cd, w);
    x.r.smmu.hw.cfgCache.invAll();
    assertFault(dma(x.r, BigInt(VA)), EVT_ID.C_BAD_CD);
  });

  test('C_BAD_STE: S1CDMax beyond SSIDSIZE, S1ContextPtr beyond the OAS (the kernel accepts both)', () => {
    const a = nested({ vste: { cdmax: 1 } });
    const f = faultOf(dma(a.r, BigInt(VA)));
    assert.equal(f.detail.id, EVT_ID.C_BAD_STE);
    assert.equal(forwardedOne(a, f.detail.event!).id, EVT_ID.C_BAD_STE);
    const r = rig();
    const n = nestSetup(r);
    attach(r, nestedHwpt(r, n, vste({ ctxPtr: 2 ** 49 })));
    assertFault(dma(r, 0n), EVT_ID.C_BAD_STE);
  });

  test('C_BAD_SUBSTREAMID: a SubstreamID with S1CDMax = 0 (the SubstreamID in the record, SSV bit RES0)', () => {
    const x = nested();
    const f = faultOf(dma(x.r, BigInt(VA), { pasid: 3 }));
    assert.equal(f.detail.id, EVT_ID.C_BAD_SUBSTREAMID);
    const e = forwardedOne(x, f.detail.event!);
    assert.equal(e.ssid, 3);
    const w0 = wordsFromBytes(f.detail.event!)[0]!;
    assert.equal((w0 >> 12n) & 0xfffffn, 3n);
    assert.equal((w0 >> 11n) & 1n, 0n, 'this record has no SSV qualifier');
  });

  test('C_BAD_STE: S1STALLD = 1 is ILLEGAL on an SMMU without a configurable stall model (the kernel accepts the vSTE)', () => {
    const x = nested({ vste: { dw1: { S1STALLD: 1 } } });
    const f = faultOf(dma(x.r, BigInt(VA)));
    assert.equal(f.detail.id, EVT_ID.C_BAD_STE, f.detail.reason);
    assert.equal(forwardedOne(x, f.detail.event!).id, EVT_ID.C_BAD_STE);
    // A bypass vSTE ignores every S1 field, S1STALLD included.
    const r = rig();
    const n = nestSetup(r);
    attach(r, nestedHwpt(r, n, vste({ cfg: STE_CONFIG.BYPASS, dw1: { S1STALLD: 1 } })));
    assert.equal(physOf(dma(r, 0x4000_1234n)), n.ram.pa(0x4000_1234));
  });

  test('reserved encodings behave as the architecture says: Config 0b001-0b011 as abort (no event), S1Fmt 0b11 as linear, S1DSS 0b11 as terminate', () => {
    const r = rig({ smmu: { ssidBits: 4 } });
    for (const cfg of [1, 2, 3]) {
      programSte(r.smmu, 0x300, build(STE, 8, { V: 1, CONFIG: cfg }));
      const f = faultOf(r.smmu.hw.translate(0x300, 0x1000n, undefined, false, false, false));
      assert.equal(f.kind, 'blocked', `Config ${cfg}`);
      assert.equal(f.detail.event, null);
    }
    const n = nestSetup(r);
    const t = n.ram.table(12, 48);
    const page = n.ram.alloc(4096);
    t.map(VA, page, 4096, RW);
    const linear = n.ram.alloc(64 * 2);
    n.ram.writeWords(linear + 64, guestCd(t, 9));
    attach(r, nestedHwpt(r, n, vste({ ctxPtr: linear, cdmax: 1, s1fmt: 3, dw1: { S1DSS: 3 } })));
    assert.equal(physOf(dma(r, BigInt(VA), { pasid: 1 })), n.ram.pa(page), 'S1Fmt 0b11: CD 1 read from the linear table');
    assertFault(dma(r, BigInt(VA)), EVT_ID.F_STREAM_DISABLED);
  });

  test('substreams: S1DSS terminate/bypass/SSID0, linear and 2-level CD tables, SSID range', () => {
    const smmu = { ssidBits: 8 };
    const r = rig({ smmu });
    const n = nestSetup(r);
    const pages = [n.ram.alloc(4096), n.ram.alloc(4096), n.ram.alloc(4096)];
    // CD k maps VA to page k (one ASID each).
    const tables = pages.map((p) => {
      const t = n.ram.table(12, 48);
      t.map(VA, p, 4096, RW);
      return t;
    });
    const linear = n.ram.alloc(64 * 4);
    tables.forEach((t, k) => n.ram.writeWords(linear + 64 * k, guestCd(t, 20 + k)));
    const q = r.fd.veventqAlloc(n.viommu, VEVENTQ_TYPE_ARM_SMMUV3, 64);
    const run = (dss: number, fmt = 0, ptr = linear): void => {
      replaceOrAttach(r, nestedHwpt(r, n, vste({ ctxPtr: ptr, cdmax: 2, s1fmt: fmt, dw1: { S1DSS: dss } })));
    };
    run(0);
    assertFault(dma(r, BigInt(VA)), EVT_ID.F_STREAM_DISABLED);
    assert.equal(physOf(dma(r, BigInt(VA), { pasid: 1 })), n.ram.pa(pages[1]!));
    assert.equal(physOf(dma(r, BigInt(VA), { pasid: 0 })), n.ram.pa(pages[0]!));
    assertFault(dma(r, BigInt(VA), { pasid: 4 }), EVT_ID.C_BAD_SUBSTREAMID);
    run(1);
    // Stage 1 bypassed: the IOVA is the IPA.
    assert.equal(physOf(dma(r, BigInt(pages[2]! + 8))), n.ram.pa(pages[2]!) + 8);
    run(2);
    assert.equal(physOf(dma(r, BigInt(VA))), n.ram.pa(pages[0]!));
    // CD 0 is reserved for traffic without a SubstreamID: SubstreamID 0 is F_STREAM_DISABLED.
    const sd = faultOf(dma(r, BigInt(VA), { pasid: 0 }));
    assert.equal(sd.detail.id, EVT_ID.F_STREAM_DISABLED);
    assert.equal(wordsFromBytes(sd.detail.event!)[0]! & 0xffffffffn, BigInt(EVT_ID.F_STREAM_DISABLED), 'StreamID only');
    // 2-level table with 4 KiB (64-CD) leaves: L1 entry 0 valid, SSID 2 through it.
    const l1 = n.ram.alloc(64);
    n.ram.write64(l1, BigInt(linear) | 1n);
    run(0, 1, l1);
    assert.equal(physOf(dma(r, BigInt(VA), { pasid: 2 })), n.ram.pa(pages[2]!));
    n.ram.write64(l1, 0n);
    run(2, 1, l1);
    assertFault(dma(r, BigInt(VA), { pasid: 1 }), EVT_ID.C_BAD_SUBSTREAMID);
    const ids = readEvents(r, q.veventqFd).map((e) => e.evt!.id);
    assert.deepEqual(ids, [EVT_ID.F_STREAM_DISABLED, EVT_ID.C_BAD_SUBSTREAMID, EVT_ID.F_STREAM_DISABLED, EVT_ID.C_BAD_SUBSTREAMID]);
  });

  test('abort and invalid vSTEs terminate without any record; a bypass vSTE uses the IOVA as IPA', () => {
    for (const s of [vste({ cfg: STE_CONFIG.ABORT }), vste({ v: false, cfg: STE_CONFIG.S1_TRANS })]) {
      const r = rig();
      const n = nestSetup(r);
      attach(r, nestedHwpt(r, n, s));
      const f = faultOf(dma(r, 0x4000_0000n));
      assert.equal(f.kind, 'blocked');
      assert.equal(f.detail.event, null);
      assert.equal(r.smmu.hw.hostEvents.length, 0);
    }
    const r = rig();
    const n = nestSetup(r);
    attach(r, nestedHwpt(r, n, vste({ cfg: STE_CONFIG.BYPASS })));
    assert.equal(physOf(dma(r, 0x4000_1234n)), n.ram.pa(0x4000_1234));
  });
});

/** Attach, or replace the attachment (a new STE, installed with CFGI_STE). */
function replaceOrAttach(r: Rig, hwpt: number): void {
  if (r.idev.attachment(0)) deviceReplace(r.idev, undefined, hwpt);
  else attach(r, hwpt);
}

describe('faults the uAPI cannot reach (programmed into the SMMU directly)', () => {
  test('F_WALK_EABT (always recorded, FetchAddr), F_CD_FETCH, C_BAD_STREAMID: logged, not forwardable', () => {
    const r = rig();
    const ram = new PhysRam();
    try {
      const cd = ram.alloc(64);
      ram.writeWords(cd, cdWords({ g: 12, n: 48, ttb: 0x3000, over: { R: 0 } }));
      const ste = build(STE, 8, { V: 1, CONFIG: STE_CONFIG.S1_TRANS });
      ste[0] = ste[0]! | BigInt(cd);
      programSte(r.smmu, 0x90, ste);
      const t = r.smmu.hw.translate(0x90, 0x8000_0000_0000n - 0x1000n, undefined, false, false, false);
      const e = assertFault(t, EVT_ID.F_WALK_EABT, { recorded: true });
      assert.equal(e.fetchAddr, BigInt(0x3000 + 8 * 255));
      assert.equal(faultOf(t).detail.disposition, 'logged (not forwardable)');

      const ste2 = build(STE, 8, { V: 1, CONFIG: STE_CONFIG.S1_TRANS });
      ste2[0] = ste2[0]! | 0x2000n;
      programSte(r.smmu, 0x91, ste2);
      const e2 = assertFault(r.smmu.hw.translate(0x91, 0n, undefined, false, false, false), EVT_ID.F_CD_FETCH);
      assert.equal(e2.fetchAddr, 0x2000n);

      assertFault(r.smmu.hw.translate(0x4242, 0n, undefined, false, false, false), EVT_ID.C_BAD_STREAMID);
    } finally {
      ram.release();
    }
  });

  test('stage 2: access flag (S2AFFD), address size (S2PS), S2PTW on a Device page, S2R = 0 not recorded', () => {
    const r = rig();
    const ram = new PhysRam();
    try {
      const root = ram.alloc(startTableBytes(12, 40, 1));
      const leafNoAf = S2_LEAF & ~0x400;
      specMap(ram, root, 12, 40, 1, 0x1000, ram.base + 0x10_0000, 3, leafNoAf);
      specMap(ram, root, 12, 40, 1, 0x2000, 2 ** 41, 3, S2_LEAF);
      for (const affd of [false, true]) {
        programSte(r.smmu, 0x92, s2SteWords({ g: 12, inBits: 40, start: 1, ttb: root, affd, ps: 5 }));
        const t = r.smmu.hw.translate(0x92, 0x1008n, undefined, false, false, false);
        if (affd) assert.equal(physOf(t), ram.base + 0x10_0008);
        else assertFault(t, EVT_ID.F_ACCESS, { stage: 2, cls: EVT_CLASS.IN, ipa: 0x1000n });
      }
      programSte(r.smmu, 0x93, s2SteWords({ g: 12, inBits: 40, start: 1, ttb: root, ps: 2 })); // 40-bit PA
      assertFault(r.smmu.hw.translate(0x93, 0x2000n, undefined, false, false, false), EVT_ID.F_ADDR_SIZE, { stage: 2 });

      // Nested: the stage-1 root table sits on a stage-2 page mapped as Device memory.
      const s2root = ram.alloc(startTableBytes(12, 40, 1));
      const devLeaf = (S2_LEAF & ~(0xf << 2)) | (0x1 << 2);
      specMap(ram, s2root, 12, 40, 1, 0x4000_0000, ram.base + 0x18_0000, 3, devLeaf);
      specMap(ram, s2root, 12, 40, 1, 0x4000_1000, ram.base + 0x18_1000, 3, S2_LEAF);
      const cdPa = ram.base + 0x18_1000;
      ram.writeWords(cdPa, cdWords({ g: 12, n: 48, ttb: 0x4000_0000 }));
      for (const [sid, ptw, s2r] of [[0x94, true, true], [0x95, true, false]] as const) {
        const ste = s2SteWords({ g: 12, inBits: 40, start: 1, ttb: s2root, ptw, record: s2r });
        ste[0] = build(STE, 1, { V: 1, CONFIG: STE_CONFIG.NESTED })[0]! | 0x4000_1000n;
        programSte(r.smmu, sid, ste);
        const t = r.smmu.hw.translate(sid, 0x1234n, undefined, false, false, false);
        assertFault(t, EVT_ID.F_PERMISSION, { stage: 2, cls: EVT_CLASS.TT, recorded: s2r });
      }
    } finally {
      ram.release();
    }
  });

  test('records decode back to what was built (the encoder round-trips)', () => {
    const w = wordsFromBytes(bytesFromWords([0x1234_5678_0000_0a10n, 0x0000_0389_0000_0000n, 0xdeadn, 0x7_0000n]));
    const e = decodeEvent(w);
    assert.equal(e.sid, 0x12345678);
    assert.equal(e.id, 0x10);
    assert.equal(e.ssid, 0);
  });
});

