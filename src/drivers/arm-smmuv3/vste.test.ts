// The vSTE validation matrix of IOMMU_HWPT_ALLOC on an ARM_SMMUV3 vIOMMU
// (spec 04 §2.2), through the raw ioctl entry, and the physical STE the
// kernel composes from a vSTE and the parent (§2.4).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { IO, IOCTL_BY_NAME } from '../../uapi/ioctls.js';
import { isErrno } from '../../uapi/errno.js';
import { encode, decode, structSize } from '../../uapi/layout.js';
import * as S from '../../uapi/structs.js';
import { get, getN, mask, STE, STE_CONFIG } from './regs.js';
import {
  attach, hwptNested, hwptPaging, HWPT_DATA_ARM_SMMUV3, nestedHwpt, nestSetup, rig, vste, vsteBytes, type Rig,
} from './test_helpers.js';
import type { SmmuNestedDomain } from './viommu.js';

/** Raw HWPT_ALLOC: returns errno name or the new id. */
function rawAlloc(r: Rig, ptId: number, o: { flags?: number; dataType?: number; data?: Uint8Array; dataLen?: number; uptr?: bigint }): string | number {
  const mem = r.fd.mem;
  let uptr = o.uptr ?? 0n;
  if (o.data) {
    uptr = mem.alloc(o.data.length + 64);
    mem.write(uptr, o.data);
  }
  const size = structSize(S.iommu_hwpt_alloc);
  const addr = mem.alloc(size);
  mem.write(addr, encode(S.iommu_hwpt_alloc, {
    size, flags: o.flags ?? 0, dev_id: r.devId, pt_id: ptId, data_type: o.dataType ?? HWPT_DATA_ARM_SMMUV3,
    data_len: o.dataLen ?? o.data?.length ?? 0, data_uptr: uptr,
  }));
  try {
    r.fd.ctx.ioctl(IO(IOCTL_BY_NAME.get('HWPT_ALLOC')!.nr), addr, r.fd.caller);
  } catch (e) {
    if (isErrno(e)) return e.code;
    throw e;
  }
  return decode(S.iommu_hwpt_alloc, mem.read(addr, size)).out_hwpt_id;
}

const CTX = 0x4000_0040;
const b = (bit: number): bigint => 1n << BigInt(bit);
const S1 = (vste({ ctxPtr: CTX }))[0];

/** [case, dw0, dw1, errno or 0] */
const MATRIX: [string, bigint, bigint, string | 0][] = [
  ['S1 translate', S1, 0n, 0],
  ['abort (Config 0)', 0x1n, 0n, 0],
  ['bypass (Config 4)', 0x9n, 0n, 0],
  ['V = 0 with junk: zeroed and accepted', 0xffff_0000_0000_fff0n, 0xffff_ffff_ffff_ffffn, 0],
  ['Config 1', 0x3n, 0n, 'EIO'], ['Config 2', 0x5n, 0n, 'EIO'], ['Config 3', 0x7n, 0n, 'EIO'],
  ['Config 6 (S2 only is host-owned)', 0xdn, 0n, 'EIO'], ['Config 7 (nested is host-owned)', 0xfn, 0n, 'EIO'],
  ['S1Fmt 2, S1CDMax 10 (left to the hardware)', S1 | (2n << 4n) | (10n << 59n), 0n, 0],
  ['S1ContextPtr bit 51', S1 | b(51), 0n, 0],
  ['S1ContextPtr bit 52 (outside 51:6)', S1 | b(52), 0n, 'EIO'],
  ['S1ContextPtr bit 55', S1 | b(55), 0n, 'EIO'],
  ['dw0 bit 58', S1 | b(58), 0n, 'EIO'],
  ['S1DSS / S1CIR / S1COR / S1CSH', S1, 0xffn, 0],
  ['S1STALLD', S1, b(27), 0],
  ['EATS 1 (full ATS)', S1, b(28), 0],
  ['EATS 2 (S1CHK)', S1, b(29), 'EIO'],
  ['EATS 3', S1, b(28) | b(29), 'EIO'],
  ['MEV (host-owned)', S1, b(19), 'EIO'],
  ['S2FWB (host-owned)', S1, b(25), 'EIO'],
  ['STRW', S1, b(30), 'EIO'],
  ['SHCFG', S1, b(44), 'EIO'],
  ['dw1 bit 8', S1, b(8), 'EIO'],
  ['bad bits win over a bad Config', 0xfn | b(52), 0n, 'EIO'],
];

describe('vSTE validation (HWPT_ALLOC on the vIOMMU)', () => {
  for (const [name, d0, d1, want] of MATRIX) {
    test(`${name} -> ${want || 'accepted'}`, () => {
      const r = rig();
      const n = nestSetup(r);
      const got = rawAlloc(r, n.viommu, { data: vsteBytes([d0, d1]) });
      if (want) assert.equal(got, want);
      else assert.equal(typeof got, 'number', `got ${got}`);
    });
  }

  test('V = 0 leaves an all-zero vSTE; EATS is stripped and only enables ATS for Config 5', () => {
    const r = rig();
    const n = nestSetup(r);
    const z = hwptNested(r, nestedHwpt(r, n, [0xffff_0000_0000_fff0n, 0x30n])).domain as SmmuNestedDomain;
    assert.deepEqual(z.ste, [0n, 0n]);
    const e = hwptNested(r, nestedHwpt(r, n, [S1, b(28) | 0x2n])).domain as SmmuNestedDomain;
    assert.deepEqual([e.ste[1], e.enableAts], [0x2n, true]);
    const byp = hwptNested(r, nestedHwpt(r, n, [0x9n, b(28)])).domain as SmmuNestedDomain;
    assert.equal(byp.enableAts, false);
  });

  test('copy rules: data_len 16 only (8 and 24 EINVAL), wrong data_type EINVAL, bad pointer EFAULT, flags', () => {
    const r = rig();
    const n = nestSetup(r);
    const d = vsteBytes([S1, 0n]);
    assert.equal(rawAlloc(r, n.viommu, { data: d, dataLen: 8 }), 'EINVAL');
    assert.equal(rawAlloc(r, n.viommu, { data: new Uint8Array(24), dataLen: 24 }), 'EINVAL');
    assert.equal(rawAlloc(r, n.viommu, { data: d, dataType: 1 }), 'EINVAL');
    assert.equal(rawAlloc(r, n.viommu, { dataLen: 16, uptr: 0x10n }), 'EFAULT');
    assert.equal(rawAlloc(r, n.viommu, { data: d, flags: 8 }), 'EOPNOTSUPP', 'ALLOC_PASID: the driver takes no flags');
    assert.equal(rawAlloc(r, n.viommu, { data: d, flags: 1 }), 'EOPNOTSUPP', 'NEST_PARENT is not a nested flag');
    assert.equal(rawAlloc(r, n.viommu, { dataType: 0, dataLen: 0 }), 'EOPNOTSUPP', 'a nested HWPT needs data');
    assert.equal(typeof rawAlloc(r, n.viommu, { data: d, flags: 4, dataLen: 16 }), 'string', 'FAULT_ID_VALID needs a FAULT');
    // No nested allocation straight on the parent: only through the vIOMMU.
    assert.equal(rawAlloc(r, n.parent, { data: d }), 'EOPNOTSUPP');
  });
});

describe('the physical STE', () => {
  test('S1 vSTE: Config 7, guest S1 fields, MEV, the parent S2 (VMID, VTCR, S2PTW, S2R, S2TTB)', () => {
    const r = rig();
    const n = nestSetup(r);
    const v = vste({ ctxPtr: CTX, dw1: { S1DSS: 0, S1CIR: 1, S1COR: 2, S1CSH: 3, S1STALLD: 1 } });
    attach(r, nestedHwpt(r, n, v));
    const ste = r.smmu.hw.readSte(r.master.sid)!;
    const parent = hwptPaging(r, n.parent).domain as unknown as { vmid: number; table: { root: number } };
    assert.equal(getN(ste, STE.CONFIG), STE_CONFIG.NESTED);
    assert.equal(ste[0]! & ~mask(STE.CONFIG), v[0] & ~mask(STE.CONFIG));
    assert.equal(ste[1]! & 0xffn, v[1] & 0xffn);
    assert.equal(get(ste, STE.S1STALLD), 1n);
    assert.equal(get(ste, STE.MEV), 1n);
    assert.equal(getN(ste, STE.S2VMID), parent.vmid);
    assert.deepEqual([getN(ste, STE.S2T0SZ), getN(ste, STE.S2SL0), getN(ste, STE.S2TG), getN(ste, STE.S2PS)], [16, 2, 0, 5]);
    assert.deepEqual([get(ste, STE.S2AA64), get(ste, STE.S2PTW), get(ste, STE.S2R)], [1n, 1n, 1n]);
    assert.equal(Number(ste[3]), parent.table.root);
    assert.equal(r.smmu.hw.readSte(r.master.sid)!.length, 8);
  });

  test('bypass vSTE: the parent S2 STE (Config 6); abort and V = 0: the abort STE', () => {
    const r = rig();
    const n = nestSetup(r);
    attach(r, nestedHwpt(r, n, vste({ cfg: STE_CONFIG.BYPASS })));
    assert.equal(getN(r.smmu.hw.readSte(r.master.sid)!, STE.CONFIG), STE_CONFIG.S2_TRANS);
    for (const s of [vste({ cfg: STE_CONFIG.ABORT }), [0n, 0n]]) {
      const r2 = rig();
      const n2 = nestSetup(r2);
      attach(r2, nestedHwpt(r2, n2, s));
      assert.deepEqual(r2.smmu.hw.readSte(r2.master.sid), [1n, 0n, 0n, 0n, 0n, 0n, 0n, 0n]);
    }
  });
});
