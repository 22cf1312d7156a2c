// Property test: random sequences of device/HWPT operations through the raw
// entry keep the object graph consistent (no orphan auto-domains, reference
// counts match attachments, IOVA ranges match the domains present) and a
// context close always leaves nothing behind.
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import type { Device } from '../../core/device.js';
import { HwptPaging } from '../../core/hwpt.js';
import { ObjType } from '../../core/object.js';
import { referenceProblems } from '../../core/graph.js';
import { isErrno } from '../../uapi/errno.js';
import { HWPT_ALLOC, MOCK, TEST_OP } from '../../uapi/enums.js';
import * as S from '../../uapi/structs.js';
import {
  destroy, hwptAlloc, ioasAlloc, iovaRanges, mapFixed, mockDomain, selftestData, setup, testCmd, type T,
} from './test_helpers.js';

type Op =
  | { k: 'mock'; target: number; flags: number }
  | { k: 'destroy'; pick: number }
  | { k: 'replace'; dev: number; target: number }
  | { k: 'alloc'; dev: number; ioas: number; flags: number }
  | { k: 'nested'; dev: number; parent: number }
  | { k: 'pasid'; dev: number; pasid: number; target: number; detach: boolean };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ k: fc.constant('mock' as const), target: fc.nat(12), flags: fc.constantFrom(0, 1, 4) }),
  fc.record({ k: fc.constant('destroy' as const), pick: fc.nat(20) }),
  fc.record({ k: fc.constant('replace' as const), dev: fc.nat(6), target: fc.nat(12) }),
  fc.record({ k: fc.constant('alloc' as const), dev: fc.nat(6), ioas: fc.nat(1),
    flags: fc.constantFrom(0, HWPT_ALLOC.DIRTY_TRACKING, HWPT_ALLOC.NEST_PARENT, HWPT_ALLOC.PASID) }),
  fc.record({ k: fc.constant('nested' as const), dev: fc.nat(6), parent: fc.nat(12) }),
  fc.record({ k: fc.constant('pasid' as const), dev: fc.nat(6), pasid: fc.constantFrom(5, 1024), target: fc.nat(12),
    detach: fc.boolean() }),
);

function objsOf(t: T, type: ObjType) {
  return t.ctx.objects.all().filter((o) => o.type === type && t.ctx.objects.find(o.id, ObjType.ANY) === o);
}

function pick<X>(xs: X[], i: number): X | undefined {
  return xs.length ? xs[i % xs.length] : undefined;
}

function checkInvariants(t: T, ioases: number[]): void {
  const devices = objsOf(t, ObjType.DEVICE) as Device[];
  for (const d of devices) assert.equal(d.users, 2 + d.attachments.size, `device ${d.id} users`);
  assert.deepEqual(referenceProblems(t.ctx), [], 'holder records');
  const hwpts = objsOf(t, ObjType.HWPT_PAGING) as HwptPaging[];
  for (const h of hwpts) if (h.autoDomain) assert.ok(h.users >= 2, `orphan auto-domain ${h.id}`);
  for (const id of ioases) {
    const onIt = hwpts.filter((h) => h.ioas.id === id);
    const r = iovaRanges(t, id);
    if (onIt.length === 0) assert.deepEqual(r.ranges, [[0n, (1n << 64n) - 1n]]);
    else assert.deepEqual(r.ranges, [[MOCK.APERTURE_START, MOCK.APERTURE_LAST]]);
  }
}

test('random attach/replace/alloc/destroy sequences keep the object graph consistent', () => {
  fc.assert(fc.property(fc.constantFrom('6.12' as const, 'mainline' as const), fc.array(opArb, { maxLength: 40 }), (profile, ops) => {
    const t = setup(profile);
    const ioases = [ioasAlloc(t), ioasAlloc(t)];
    mapFixed(t, ioases[0]!, MOCK.APERTURE_START, 8192);
    for (const op of ops) {
      const stdevs = objsOf(t, ObjType.SELFTEST).map((o) => o.id);
      const devs = objsOf(t, ObjType.DEVICE).map((o) => o.id);
      const all = t.ctx.objects.all().map((o) => o.id);
      try {
        switch (op.k) {
          case 'mock':
            mockDomain(t, pick(all, op.target) ?? 99, op.flags);
            break;
          case 'destroy': {
            const id = pick(all, op.pick);
            if (id !== undefined && !ioases.includes(id)) destroy(t, id);
            break;
          }
          case 'replace': {
            const s = pick(stdevs, op.dev);
            if (s) testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, s, { pt_id: pick(all, op.target) ?? 99 });
            break;
          }
          case 'alloc': {
            const d = pick(devs, op.dev);
            if (d) hwptAlloc(t, { devId: d, ptId: ioases[op.ioas]!, flags: op.flags });
            break;
          }
          case 'nested': {
            const d = pick(devs, op.dev);
            if (d) hwptAlloc(t, { devId: d, ptId: pick(all, op.parent) ?? 99, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t) });
            break;
          }
          case 'pasid': {
            const s = pick(stdevs, op.dev);
            if (s && profile === 'mainline') {
              if (op.detach) testCmd(t, TEST_OP.PASID_DETACH, s, { pasid: op.pasid });
              else testCmd(t, TEST_OP.PASID_ATTACH, s, { pasid: op.pasid, pt_id: pick(all, op.target) ?? 99 });
            }
            break;
          }
        }
      } catch (e) {
        if (!isErrno(e)) throw e;
      }
      checkInvariants(t, ioases);
    }
    t.ctx.put();
    assert.equal(t.ctx.objects.empty, true);
  }), { numRuns: 150 });
  void S;
});
