// Invalidation scope: a guest that changes its tables or CDs keeps seeing the
// old translation until the command that covers it, and exactly that command
// (VA, range, TTL, ASID, VMID, global entries, CFGI_CD), as on hardware;
// host IOAS changes always flush what the parent's stage 2 fed.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { deviceReplace } from '../../core/device.js';
import { HWPT_ALLOC } from '../../uapi/enums.js';
import { cmd } from './cmdq.js';
import type { LpaeTable } from './pgtable.js';
import { EVT_ID, OP } from './regs.js';
import {
  addDevice, assertFault, attach, dma, GuestRam, guestCd, invalidate, nestedHwpt, nestSetup, physOf, PROT, rig, tlbi,
  VIOMMU_TYPE_ARM_SMMUV3, vste, type Nest, type Rig,
} from './test_helpers.js';
import type { Device } from '../../core/device.js';

const RW = PROT.READ | PROT.WRITE | PROT.CACHE;
const VA = 0x1000_0000;

interface Dev {
  idev: Device;
  devId: number;
  vsid: bigint;
  ram: GuestRam;
  t: LpaeTable;
  cd: number;
  asid: number;
  pages: number[];
  n: Nest;
}

/** Device A (the rig's) and B, each with its own CD/ASID; B on the same vIOMMU or on a second one (own parent, own VMID). */
function two(o: { separate?: boolean; globalA?: boolean } = {}): { r: Rig; a: Dev; b: Dev } {
  const r = rig();
  const n = nestSetup(r);
  const mk = (idev: Device, devId: number, vsid: bigint, nn: Nest, asid: number, global = false): Dev => {
    const ram = nn.ram;
    const t = ram.table(12, 48);
    const pages = [ram.alloc(4096), ram.alloc(4096), ram.alloc(4096), ram.alloc(4096)];
    for (let i = 0; i < 3; i++) t.map(VA + i * 4096, pages[i]!, 4096, RW);
    if (global) {
      // nG = 0 on the first page's leaf.
      const leaf = leafAddr(ram, t, VA);
      ram.write64(leaf, ram.read64(leaf) & ~0x800n);
    }
    const cd = ram.alloc(64);
    ram.writeWords(cd, guestCd(t, asid));
    attach(r, nestedHwpt(r, nn, vste({ ctxPtr: cd }), devId), idev);
    return { idev, devId, vsid, ram, t, cd, asid, pages, n: nn };
  };
  const a = mk(r.idev, r.devId, n.vsid, n, 5, o.globalA);
  const B = addDevice(r, [0x11]);
  let nb: Nest;
  if (o.separate) {
    const ioas = r.fd.ioasAlloc();
    const parent = r.fd.hwptAlloc({ devId: B.devId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
    const ram = new GuestRam(r.fd, ioas, 0x4000_0000, 4 << 20);
    const { viommuId } = r.fd.viommuAlloc({ devId: B.devId, hwptId: parent, type: VIOMMU_TYPE_ARM_SMMUV3 });
    const vdev = r.fd.vdeviceAlloc(viommuId, B.devId, 0x78n);
    nb = { ioas, parent, viommu: viommuId, vdev, ram, vsid: 0x78n };
  } else {
    r.fd.vdeviceAlloc(n.viommu, B.devId, 0x78n);
    nb = n;
  }
  const b = mk(B.idev, B.devId, 0x78n, nb, 6);
  return { r, a, b };
}

function leafAddr(ram: GuestRam, t: LpaeTable, va: number): number {
  let table = t.root;
  for (let l = 0; l < 3; l++) table = Number(ram.read64(table + 8 * (Math.floor(va / 2 ** (39 - 9 * l)) % 512)) & 0xffff_ffff_f000n);
  return table + 8 * (Math.floor(va / 4096) % 512);
}

/** Access page i of device d; returns which of its pages it reached (or -1 for another address). */
function which(r: Rig, d: Dev, i: number): number {
  const pa = physOf(dma(r, BigInt(VA + i * 4096 + 0x10), { idev: d.idev }));
  return d.pages.findIndex((p) => d.ram.pa(p) + 0x10 === pa);
}

/** Remap page i of d to its page 3 in the guest table, without telling the SMMU. */
function remap(d: Dev, i: number): void {
  d.t.unmap(VA + i * 4096, 4096);
  d.t.map(VA + i * 4096, d.pages[3]!, 4096, RW);
}

function warm(r: Rig, ...devs: Dev[]): void {
  for (const d of devs) for (let i = 0; i < 3; i++) assert.equal(which(r, d, i), i);
}

describe('IOTLB invalidation scope', () => {
  test('TLBI_NH_VA: that VA of that ASID only', () => {
    const { r, a, b } = two();
    warm(r, a, b);
    remap(a, 0);
    remap(a, 1);
    remap(b, 0);
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_VA, { asid: a.asid, addr: BigInt(VA) })]);
    assert.deepEqual([which(r, a, 0), which(r, a, 1), which(r, b, 0)], [3, 1, 0]);
  });

  test('range TLBI (TG, NUM, SCALE) covers (NUM+1)<<SCALE pages; a wrong TTL leaves the entry', () => {
    const { r, a } = two();
    warm(r, a);
    for (const i of [0, 1, 2]) remap(a, i);
    // TTL = 2 says "level-2 leaves": the level-3 entries stay.
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_VA, { asid: a.asid, addr: BigInt(VA), tg: 1, num: 2, ttl: 2 })]);
    assert.deepEqual([0, 1, 2].map((i) => which(r, a, i)), [0, 1, 2]);
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_VA, { asid: a.asid, addr: BigInt(VA), tg: 1, num: 1, ttl: 3 })]);
    assert.deepEqual([0, 1, 2].map((i) => which(r, a, i)), [3, 3, 2]);
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_VA, { asid: a.asid, addr: BigInt(VA), tg: 1, num: 0, scale: 2, ttl: 0 })]);
    assert.equal(which(r, a, 2), 3);
  });

  test('TLBI_NH_VAA: every ASID of the VMID at that VA', () => {
    const { r, a, b } = two();
    warm(r, a, b);
    remap(a, 1);
    remap(b, 1);
    remap(b, 2);
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_VAA, { addr: BigInt(VA + 4096) })]);
    assert.deepEqual([which(r, a, 1), which(r, b, 1), which(r, b, 2)], [3, 3, 2]);
  });

  test('TLBI_NH_ASID: every entry of that ASID, nothing of another; TLBI_NH_ALL / NSNH_ALL: the whole VMID', () => {
    const { r, a, b } = two();
    warm(r, a, b);
    for (const i of [0, 1]) {
      remap(a, i);
      remap(b, i);
    }
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_ASID, { asid: a.asid })]);
    assert.deepEqual([which(r, a, 0), which(r, a, 1), which(r, b, 0), which(r, b, 1)], [3, 3, 0, 1]);
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_ALL)]);
    assert.deepEqual([which(r, b, 0), which(r, b, 1)], [3, 3]);
    remap(a, 2);
    invalidate(r, a.n, [cmd.make(OP.TLBI_NSNH_ALL)]);
    assert.equal(which(r, a, 2), 3);
  });

  test('global (nG = 0) entries match every ASID; NH_ASID keeps them, NH_VA of any ASID drops them', () => {
    const { r, a, b } = two({ globalA: true });
    assert.equal(which(r, a, 0), 0);
    // B's own table maps VA elsewhere, but A's global entry matches B's ASID too (architectural).
    const paB = physOf(dma(r, BigInt(VA + 0x10), { idev: b.idev }));
    assert.equal(paB, a.ram.pa(a.pages[0]!) + 0x10);
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_ASID, { asid: a.asid }), tlbi(OP.TLBI_NH_ASID, { asid: b.asid })]);
    assert.equal(physOf(dma(r, BigInt(VA + 0x10), { idev: b.idev })), a.ram.pa(a.pages[0]!) + 0x10, 'global survives NH_ASID');
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_VA, { asid: b.asid, addr: BigInt(VA) })]);
    assert.equal(which(r, b, 0), 0, 'B now walks its own table');
  });

  test("a guest only reaches its own VMID: NSNH_ALL and a forged VMID field leave another vIOMMU's entries", () => {
    const { r, a, b } = two({ separate: true });
    warm(r, a, b);
    const vmidB = r.smmu.hw.iotlb.entries().find((e) => e.asid === b.asid)!.vmid;
    remap(b, 0);
    invalidate(r, a.n, [cmd.make(OP.TLBI_NSNH_ALL), tlbi(OP.TLBI_NH_ALL, { vmid: vmidB }),
      tlbi(OP.TLBI_NH_VA, { vmid: vmidB, asid: b.asid, addr: BigInt(VA) })]);
    assert.equal(which(r, b, 0), 0);
    invalidate(r, b.n, [cmd.make(OP.TLBI_NSNH_ALL)]);
    assert.equal(which(r, b, 0), 3);
  });

  test('host IOAS unmap/remap of guest memory drops the combined entries (S2_IPA + NH_ALL), only for that parent', () => {
    const { r, a, b } = two({ separate: true });
    warm(r, a, b);
    remap(b, 1); // B's guest table changed without a TLBI: must stay stale across A's host change
    // The host moves A's guest page 0 to another user page at the same IPA.
    r.fd.ioasUnmap(a.n.ioas, BigInt(a.ram.base), BigInt(a.ram.size));
    const va2 = r.fd.mem.mmap(a.ram.size, { shared: true });
    r.fd.mem.write(va2, r.fd.mem.read(a.ram.va, a.ram.size));
    r.fd.ioasMap({ ioasId: a.n.ioas, userVa: va2, length: BigInt(a.ram.size), iova: BigInt(a.ram.base) });
    const pa = physOf(dma(r, BigInt(VA + 0x10)));
    const [pg] = r.fd.mem.getPages(va2 + BigInt(a.pages[0]! - a.ram.base), 1, false);
    assert.equal(pa, pg!.pfn * 4096 + 0x10, 'the new backing page, not the stale one');
    assert.equal(which(r, b, 1), 1, "the other parent's entries are untouched");
  });

  test('host unmap of the IPA under a cached translation: the next access faults at stage 2', () => {
    const { r, a } = two();
    warm(r, a);
    r.fd.ioasUnmap(a.n.ioas, BigInt(a.ram.base), BigInt(a.ram.size));
    assertFault(dma(r, BigInt(VA)), EVT_ID.F_TRANSLATION, { stage: 2 });
  });
});

describe('configuration cache', () => {
  test('a rewritten CD is not seen until CFGI_CD (TLBIs alone do not reload it); CFGI_CD_ALL too', () => {
    for (const op of [OP.CFGI_CD, OP.CFGI_CD_ALL]) {
      const { r, a } = two();
      warm(r, a);
      // New CD: another ASID and a table mapping VA to page 3.
      const t2 = a.ram.table(12, 48);
      t2.map(VA, a.pages[3]!, 4096, RW);
      a.ram.writeWords(a.cd, guestCd(t2, 9));
      invalidate(r, a.n, [tlbi(OP.TLBI_NH_ALL)]);
      assert.equal(which(r, a, 0), 0, 'the cached CD still points at the old table');
      invalidate(r, a.n, [cmd.make(op, { SID: Number(a.vsid), CFGI_LEAF: op === OP.CFGI_CD ? 1 : 0 })]);
      assert.equal(which(r, a, 0), 3);
      assertFault(dma(r, BigInt(VA + 4096)), EVT_ID.F_TRANSLATION, { stage: 1 });
    }
  });

  test("CFGI_CD for one device leaves the other's cached CD; an unknown vSID is EIO with entry_num at it", () => {
    const { r, a, b } = two();
    warm(r, a, b);
    const tb = b.ram.table(12, 48);
    tb.map(VA, b.pages[3]!, 4096, RW);
    b.ram.writeWords(b.cd, guestCd(tb, 10));
    invalidate(r, a.n, [cmd.make(OP.CFGI_CD, { SID: Number(a.vsid) }), tlbi(OP.TLBI_NH_ALL)]);
    assert.equal(which(r, b, 0), 0);
    assert.throws(() => invalidate(r, a.n, [cmd.make(OP.CFGI_CD, { SID: Number(b.vsid) }), cmd.make(OP.CFGI_CD, { SID: 0x999 })]),
      (e: { code: string; handled: number }) => e.code === 'EIO' && e.handled === 1);
  });

  test('replacing the nested HWPT installs the new STE at once; TLB entries of a reused ASID stay until a TLBI', () => {
    const { r, a } = two();
    warm(r, a);
    const t2 = a.ram.table(12, 48);
    t2.map(VA, a.pages[3]!, 4096, RW);
    t2.map(VA + 0x10_0000, a.pages[3]!, 4096, RW);
    const cd2 = a.ram.alloc(64);
    a.ram.writeWords(cd2, guestCd(t2, a.asid));
    deviceReplace(a.idev, undefined, nestedHwpt(r, a.n, vste({ ctxPtr: cd2 })));
    assert.equal(which(r, a, 0), 0, 'same VMID and ASID: the old entry still matches');
    assert.equal(physOf(dma(r, BigInt(VA + 0x10_0010))), a.ram.pa(a.pages[3]!) + 0x10, 'misses walk the new CD');
    assertFault(dma(r, BigInt(VA + 4096 * 2 + 0x10_0000)), EVT_ID.F_TRANSLATION, { stage: 1 });
    invalidate(r, a.n, [tlbi(OP.TLBI_NH_ASID, { asid: a.asid })]);
    assert.equal(which(r, a, 0), 3);
  });
});
