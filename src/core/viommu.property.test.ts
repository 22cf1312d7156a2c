// Property test of the vIOMMU family's object graph (02 §4): random
// interleavings of alloc / destroy / attach / unbind over IOAS, mock devices,
// nest-parent HWPTs, vIOMMUs, vDEVICEs, nested HWPTs, vEVENTQs and HW queues,
// all on the raw ioctl entry, checked after every step against a model of the
// blocking-edge table: each call's errno, the set of live IDs (tombstones and
// the HW queues' internal accesses included) and every object's user count.
// Closing the context must free everything and unpin every page.
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { ObjType } from './object.js';
import { referenceProblems } from './graph.js';
import { isErrno, type ErrnoName } from '../uapi/errno.js';
import { V, type ProfileName } from '../uapi/profiles.js';
import {
  BASE_IOVA, closeCtx, code, destroyTry, hwptAllocTry, hwQueueAllocTry, mapFixed, MOCK, NEST, pins, PS, raw, rawTry,
  replace, S, selftestData, setup, TEST_OP, testCmdTry, vdevAllocTry, veventqAllocTry, viommuAllocTry, type T,
} from './viommu_test_helpers.js';

type Op =
  | { t: 'ioas' }
  | { t: 'dev'; i: number }
  | { t: 'parent'; d: number; i: number }
  | { t: 'viommu'; d: number; p: number }
  | { t: 'vdev'; v: number; d: number; virt: number }
  | { t: 'nested'; v: number; d: number }
  | { t: 'attach'; d: number; k: number; j: number }
  | { t: 'veventq'; v: number }
  | { t: 'closefd'; q: number }
  | { t: 'hwq'; v: number; index: number }
  | { t: 'destroy'; j: number };

const n = fc.nat(15);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.constant({ t: 'ioas' as const }), weight: 2 },
  { arbitrary: n.map((i) => ({ t: 'dev' as const, i })), weight: 3 },
  { arbitrary: fc.tuple(n, n).map(([d, i]) => ({ t: 'parent' as const, d, i })), weight: 2 },
  { arbitrary: fc.tuple(n, n).map(([d, p]) => ({ t: 'viommu' as const, d, p })), weight: 3 },
  { arbitrary: fc.tuple(n, n, fc.nat(3)).map(([v, d, virt]) => ({ t: 'vdev' as const, v, d, virt })), weight: 3 },
  { arbitrary: fc.tuple(n, n).map(([v, d]) => ({ t: 'nested' as const, v, d })), weight: 2 },
  { arbitrary: fc.tuple(n, fc.nat(2), n).map(([d, k, j]) => ({ t: 'attach' as const, d, k, j })), weight: 4 },
  { arbitrary: n.map((v) => ({ t: 'veventq' as const, v })), weight: 2 },
  { arbitrary: n.map((q) => ({ t: 'closefd' as const, q })), weight: 1 },
  { arbitrary: fc.tuple(n, fc.nat(2)).map(([v, index]) => ({ t: 'hwq' as const, v, index })), weight: 2 },
  { arbitrary: fc.nat(63).map((j) => ({ t: 'destroy' as const, j })), weight: 6 },
);

interface MDev { stdev: number; idev: number; att: number }

/** The model: what exists and who holds what (02 §4). */
class Model {
  readonly ioas = new Map<number, { va: bigint }>();
  readonly devs = new Map<number, MDev>(); // by stdev
  readonly auto = new Map<number, { ioas: number }>();
  readonly parent = new Map<number, { ioas: number }>();
  readonly viommu = new Map<number, { parent: number }>();
  readonly vdev = new Map<number, { viommu: number; idev: number; virt: bigint }>();
  readonly nested = new Map<number, { viommu: number }>();
  readonly veventq = new Map<number, { viommu: number; fd: number | null }>();
  readonly hwq = new Map<number, { viommu: number; index: number; access: number }>();
  readonly access = new Set<number>();
  readonly tombs = new Set<number>();
  /** Every ID ever seen, for DESTROY of stale IDs. */
  readonly seen: number[] = [];
  /** User memory mapped into every IOAS ever allocated (for the pin check). */
  readonly vas: bigint[] = [];

  constructor(readonly perDevice: boolean) {}

  see(id: number): void {
    if (!this.seen.includes(id)) this.seen.push(id);
  }

  devByIdev(idev: number): MDev | undefined {
    for (const d of this.devs.values()) if (d.idev === idev) return d;
    return undefined;
  }

  /** Kind and ObjType of a live ID (tombstones excluded). */
  kind(id: number): [string, ObjType] | null {
    if (this.ioas.has(id)) return ['ioas', ObjType.IOAS];
    if (this.devs.has(id)) return ['stdev', ObjType.SELFTEST];
    if (this.devByIdev(id)) return ['idev', ObjType.DEVICE];
    if (this.auto.has(id)) return ['auto', ObjType.HWPT_PAGING];
    if (this.parent.has(id)) return ['parent', ObjType.HWPT_PAGING];
    if (this.viommu.has(id)) return ['viommu', ObjType.VIOMMU];
    if (this.vdev.has(id)) return ['vdev', ObjType.VDEVICE];
    if (this.nested.has(id)) return ['nested', ObjType.HWPT_NESTED];
    if (this.veventq.has(id)) return ['veventq', ObjType.VEVENTQ];
    if (this.hwq.has(id)) return ['hwq', ObjType.HW_QUEUE];
    if (this.access.has(id)) return ['access', ObjType.ACCESS];
    return null;
  }

  ioasOfViommu(v: number): number {
    return this.parent.get(this.viommu.get(v)!.parent)!.ioas;
  }

  /** Long-term references held on `id` by others (users - 1), per the blocking-edge table. */
  holders(id: number): number {
    const k = this.kind(id)![0];
    const count = <V>(m: Map<number, V>, f: (v: V) => boolean) => [...m.values()].filter(f).length;
    const attached = count(this.devs, (d) => d.att === id);
    switch (k) {
      case 'ioas':
        return count(this.auto, (a) => a.ioas === id) + count(this.parent, (p) => p.ioas === id) +
          count(this.hwq, (q) => this.ioasOfViommu(q.viommu) === id);
      case 'auto': case 'nested':
        return attached;
      case 'parent':
        return attached + count(this.viommu, (v) => v.parent === id);
      case 'viommu':
        return count(this.vdev, (x) => x.viommu === id) + count(this.nested, (x) => x.viommu === id) +
          count(this.veventq, (x) => x.viommu === id) + count(this.hwq, (x) => x.viommu === id);
      case 'veventq':
        return this.veventq.get(id)!.fd !== null ? 1 : 0;
      case 'hwq': {
        const q = this.hwq.get(id)!;
        return q.index === 0 && count(this.hwq, (x) => x.viommu === q.viommu && x.index === 1) ? 1 : 0;
      }
      case 'access':
        return 1;
      case 'idev':
        return 1 + (this.devByIdev(id)!.att ? 1 : 0) + (this.perDevice ? count(this.vdev, (x) => x.idev === id) : 0);
      default:
        return 0; // stdev, vdev
    }
  }

  liveIds(): number[] {
    const ids: number[] = [...this.ioas.keys(), ...this.auto.keys(), ...this.parent.keys(), ...this.viommu.keys(),
      ...this.vdev.keys(), ...this.nested.keys(), ...this.veventq.keys(), ...this.hwq.keys(), ...this.access];
    for (const d of this.devs.values()) ids.push(d.stdev, d.idev);
    return ids;
  }

  /** A device leaves its attachment; an auto-domain left without devices goes away. */
  detach(d: MDev): void {
    const old = d.att;
    d.att = 0;
    if (this.auto.has(old) && ![...this.devs.values()].some((x) => x.att === old)) this.auto.delete(old);
  }

  /** Expected result of DESTROY(id), applying its effects on success. */
  destroy(id: number): ErrnoName | 0 {
    const k = this.kind(id);
    if (!k) return 'ENOENT';
    const [kind] = k;
    if (kind === 'idev' || kind === 'access') return 'EBUSY';
    if (kind === 'stdev') {
      const d = this.devs.get(id)!;
      this.detach(d);
      this.devs.delete(id);
      for (const [vid, v] of this.vdev) {
        if (v.idev !== d.idev) continue;
        if (this.perDevice) {
          this.vdev.delete(vid);
          this.tombs.add(vid);
        } else {
          v.idev = -1; // 6.13-6.16: the vDEVICE outlives the device (whose IDs may be reused)
        }
      }
      return 0;
    }
    if (this.holders(id) > 0) return 'EBUSY';
    switch (kind) {
      case 'ioas': this.ioas.delete(id); break;
      case 'parent': this.parent.delete(id); break;
      case 'viommu': this.viommu.delete(id); break;
      case 'vdev': this.vdev.delete(id); break;
      case 'nested': this.nested.delete(id); break;
      case 'veventq': this.veventq.delete(id); break;
      case 'hwq': this.access.delete(this.hwq.get(id)!.access); this.hwq.delete(id); break;
      default: throw new Error(`model: destroy of ${kind}`);
    }
    return 0;
  }
}

function pick<K>(m: Map<K, unknown> | K[], i: number): K | undefined {
  const keys = Array.isArray(m) ? m : [...m.keys()];
  return keys.length ? keys[i % keys.length] : undefined;
}

/** Check the emulator's object table against the model. */
function checkGraph(t: T, m: Model, step: string): void {
  const live = m.liveIds();
  const impl = t.ctx.objects.all();
  const implIds = impl.map((o) => o.id).sort((a, b) => a - b);
  const expectIds = [...live, ...m.tombs].sort((a, b) => a - b);
  assert.deepEqual(implIds, expectIds, `${step}: live IDs`);
  for (const id of live) {
    const [kind, type] = m.kind(id)!;
    const obj = t.ctx.objects.get(id, ObjType.ANY);
    assert.equal(obj.type, type, `${step}: type of ${kind} ${id}`);
    assert.equal(obj.users, 1 + m.holders(id), `${step}: users of ${kind} ${id}`);
  }
  for (const id of m.tombs) assert.equal(t.ctx.objects.find(id, ObjType.ANY), undefined, `${step}: tombstone ${id}`);
  assert.deepEqual(referenceProblems(t.ctx), [], `${step}: holder records`);
}

function run(t: T, m: Model, op: Op, hwQueues: boolean): void {
  const step = JSON.stringify(op);
  const devs = [...m.devs.values()];
  const dev = (i: number) => devs.length ? devs[i % devs.length] : undefined;
  const expectErr = (got: ErrnoName | 0, want: ErrnoName | 0) => assert.equal(got, want, step);
  switch (op.t) {
    case 'ioas': {
      const id = raw(t, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id;
      const va = mapFixed(t, id, BASE_IOVA, 2 * Number(PS));
      m.ioas.set(id, { va });
      m.vas.push(va);
      m.see(id);
      break;
    }
    case 'dev': {
      const ioas = pick(m.ioas, op.i);
      if (ioas === undefined) return;
      const r = testCmdTry(t, TEST_OP.MOCK_DOMAIN, ioas);
      expectErr(r.err ? r.err.code : 0, 0);
      const { out_stdev_id: stdev, out_idev_id: idev, out_hwpt_id: hwpt } = r.u;
      m.devs.set(stdev, { stdev, idev, att: hwpt });
      if (!m.auto.has(hwpt)) m.auto.set(hwpt, { ioas });
      [stdev, idev, hwpt].forEach((x: number) => m.see(x));
      break;
    }
    case 'parent': {
      const d = dev(op.d);
      const ioas = pick(m.ioas, op.i);
      if (!d || ioas === undefined) return;
      const r = hwptAllocTry(t, { devId: d.idev, ptId: ioas, flags: NEST });
      expectErr(code(r), 0);
      m.parent.set(r.out.out_hwpt_id, { ioas });
      m.see(r.out.out_hwpt_id);
      break;
    }
    case 'viommu': {
      const d = dev(op.d);
      const p = pick(m.parent, op.p);
      if (!d || p === undefined) return;
      const r = viommuAllocTry(t, { devId: d.idev, hwptId: p });
      expectErr(code(r), 0);
      m.viommu.set(r.out.out_viommu_id, { parent: p });
      m.see(r.out.out_viommu_id);
      break;
    }
    case 'vdev': {
      const d = dev(op.d);
      const v = pick(m.viommu, op.v);
      if (!d || v === undefined) return;
      const virt = BigInt(op.virt);
      const vdevs = [...m.vdev.values()];
      const want = (m.perDevice && vdevs.some((x) => x.idev === d.idev)) || vdevs.some((x) => x.viommu === v && x.virt === virt)
        ? 'EEXIST' : 0;
      const r = vdevAllocTry(t, v, d.idev, virt);
      expectErr(code(r), want);
      if (!want) {
        m.vdev.set(r.out.out_vdevice_id, { viommu: v, idev: d.idev, virt });
        m.see(r.out.out_vdevice_id);
      }
      break;
    }
    case 'nested': {
      const d = dev(op.d);
      const v = pick(m.viommu, op.v);
      if (!d || v === undefined) return;
      const r = hwptAllocTry(t, { devId: d.idev, ptId: v, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t) });
      expectErr(code(r), 0);
      m.nested.set(r.out.out_hwpt_id, { viommu: v });
      m.see(r.out.out_hwpt_id);
      break;
    }
    case 'attach': {
      const d = dev(op.d);
      if (!d) return;
      const target = pick([m.ioas, m.nested, m.parent][op.k]!, op.j);
      if (target === undefined) return;
      let want: ErrnoName | 0 = 0;
      // Replacing with the HWPT already attached is a no-op that never reaches the driver.
      if (op.k === 1 && target !== d.att) {
        const v = m.nested.get(target)!.viommu;
        if (![...m.vdev.values()].some((x) => x.viommu === v && x.idev === d.idev)) want = 'ENOENT';
      }
      const r = testCmdTry(t, TEST_OP.MOCK_DOMAIN_REPLACE, d.stdev, { pt_id: target });
      expectErr(r.err ? r.err.code : 0, want);
      if (want) break;
      const pt: number = r.u.pt_id;
      if (pt === d.att) break;
      m.detach(d);
      d.att = pt;
      if (op.k === 0 && !m.auto.has(pt)) m.auto.set(pt, { ioas: target });
      m.see(pt);
      break;
    }
    case 'veventq': {
      const v = pick(m.viommu, op.v);
      if (v === undefined) return;
      const want = [...m.veventq.values()].some((q) => q.viommu === v) ? 'EEXIST' : 0;
      const r = veventqAllocTry(t, v);
      expectErr(code(r), want);
      if (!want) {
        m.veventq.set(r.out.out_veventq_id, { viommu: v, fd: r.out.out_veventq_fd });
        m.see(r.out.out_veventq_id);
      }
      break;
    }
    case 'closefd': {
      const id = pick(m.veventq, op.q);
      if (id === undefined) return;
      const q = m.veventq.get(id)!;
      if (q.fd === null) return;
      t.caller.fds.close(q.fd);
      q.fd = null;
      break;
    }
    case 'hwq': {
      const v = pick(m.viommu, op.v);
      if (v === undefined || !hwQueues) return;
      const mine = [...m.hwq.values()].filter((q) => q.viommu === v);
      const want: ErrnoName | 0 = op.index >= 2 ? 'EINVAL' : mine.some((q) => q.index === op.index) ? 'EEXIST'
        : op.index === 1 && !mine.some((q) => q.index === 0) ? 'EIO' : 0;
      const iova = op.index === 1 ? BASE_IOVA + PS / 2n : BASE_IOVA;
      const r = hwQueueAllocTry(t, v, { index: op.index, iova, length: op.index === 1 ? PS / 2n : PS });
      expectErr(code(r), want);
      if (want) break;
      const qid = r.out.out_hw_queue_id;
      const known = new Set([...m.liveIds(), ...m.tombs, qid]);
      const fresh = t.ctx.objects.all().filter((o) => !known.has(o.id));
      assert.equal(fresh.length, 1, `${step}: one internal access`);
      assert.equal(fresh[0]!.type, ObjType.ACCESS);
      m.hwq.set(qid, { viommu: v, index: op.index, access: fresh[0]!.id });
      m.access.add(fresh[0]!.id);
      m.see(qid);
      m.see(fresh[0]!.id);
      break;
    }
    case 'destroy': {
      const pool = [...m.seen, 0, 999];
      const id = pool[op.j % pool.length]!;
      const want = m.destroy(id);
      expectErr(destroyTry(t, id), want);
      break;
    }
  }
  checkGraph(t, m, step);
}

function property(profile: ProfileName): fc.IPropertyWithHooks<[Op[], boolean]> {
  const perDevice = profile === '6.17' || profile === 'mainline';
  return fc.property(fc.array(opArb, { minLength: 5, maxLength: 80, size: 'max' }), fc.boolean(), (ops, closeFdsFirst) => {
    const t = setup(profile);
    const m = new Model(perDevice);
    // Start from a usable graph so most steps do something.
    for (const op of [{ t: 'ioas' }, { t: 'dev', i: 0 }, { t: 'parent', d: 0, i: 0 }, { t: 'viommu', d: 0, p: 0 },
      { t: 'vdev', v: 0, d: 0, virt: 0 }, { t: 'nested', v: 0, d: 0 }] as Op[]) {
      run(t, m, op, perDevice);
    }
    for (const op of ops) run(t, m, op, perDevice);
    // Close: open vEVENTQ fds keep the context alive until they are closed.
    const fds = [...m.veventq.values()].map((q) => q.fd).filter((fd): fd is number => fd !== null);
    if (closeFdsFirst) for (const fd of fds) t.caller.fds.close(fd);
    closeCtx(t);
    if (!closeFdsFirst) {
      assert.equal(t.ctx.closed, fds.length === 0);
      for (const fd of fds) t.caller.fds.close(fd);
    }
    assert.equal(t.ctx.closed, true);
    assert.equal(t.ctx.objects.size, 0);
    for (const va of m.vas) assert.deepEqual(pins(t, va, 2n * PS), [0, 0]);
    // The selftest's own view of the pins agrees (MD_CHECK_REFS on a fresh context of the same emulator).
    const probe = { ...t, ctx: t.emu.open(t.mem) };
    for (const va of m.vas) {
      assert.equal(code({ err: testCmdTry(probe, TEST_OP.MD_CHECK_REFS, 0, { length: 2n * PS, uptr: va, refs: 0 }).err }), 0);
    }
  });
}

for (const p of ['6.15', '6.17', 'mainline'] as ProfileName[]) {
  test(`object graph follows the blocking-edge table under random interleavings (${p})`, () => {
    fc.assert(property(p), { numRuns: p === 'mainline' ? 200 : 100 });
  });
}

test('the model itself: a hand-written sequence with every kind of holder (mainline)', () => {
  const t = setup('mainline');
  const m = new Model(true);
  const ops: Op[] = [
    { t: 'ioas' }, { t: 'dev', i: 0 }, { t: 'parent', d: 0, i: 0 }, { t: 'viommu', d: 0, p: 0 },
    { t: 'vdev', v: 0, d: 0, virt: 1 }, { t: 'nested', v: 0, d: 0 }, { t: 'attach', d: 0, k: 1, j: 0 },
    { t: 'veventq', v: 0 }, { t: 'hwq', v: 0, index: 0 }, { t: 'hwq', v: 0, index: 1 },
  ];
  for (const op of ops) run(t, m, op, true);
  // Every destroy of a held object is EBUSY; stale and unknown IDs are ENOENT.
  for (let j = 0; j < m.seen.length + 2; j++) run(t, m, { t: 'destroy', j }, true);
  assert.ok(m.hwq.size === 1, 'queue 1 went, queue 0 stayed (queue 1 came later in the pass)');
  void rawTry; void replace;
  closeCtx(t);
  assert.equal(t.ctx.closed, false); // the vEVENTQ fd
  for (const q of m.veventq.values()) if (q.fd !== null) t.caller.fds.close(q.fd);
  assert.equal(t.ctx.objects.size, 0);
});

// ---- the vEVENTQ queue discipline (02 §8.3, §8.4) against a model ------------------------------------

type QOp = { t: 'trigger' } | { t: 'nomem' } | { t: 'read'; count: number };
const qOpArb: fc.Arbitrary<QOp> = fc.oneof(
  { arbitrary: fc.constant({ t: 'trigger' as const }), weight: 5 },
  { arbitrary: fc.constant({ t: 'nomem' as const }), weight: 1 },
  { arbitrary: fc.nat(48).map((count) => ({ t: 'read' as const, count })), weight: 3 },
);

test('vEVENTQ: sequence numbers, the lost-events marker and whole-record reads follow the model', () => {
  fc.assert(fc.property(fc.integer({ min: 1, max: 4 }), fc.array(qOpArb, { maxLength: 60 }), (depth, ops) => {
    const t = setup('mainline');
    const ioas = raw(t, 'IOAS_ALLOC', S.iommu_ioas_alloc, {}).out_ioas_id;
    const md = testCmdTry(t, TEST_OP.MOCK_DOMAIN, ioas).u;
    const parent = hwptAllocTry(t, { devId: md.out_idev_id, ptId: ioas, flags: NEST }).out.out_hwpt_id;
    const v = viommuAllocTry(t, { devId: md.out_idev_id, hwptId: parent }).out.out_viommu_id;
    assert.equal(code(vdevAllocTry(t, v, md.out_idev_id, 0x5en)), 0);
    const nested = hwptAllocTry(t, { devId: md.out_idev_id, ptId: v, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t) });
    assert.equal(replace(t, md.out_stdev_id, nested.out.out_hwpt_id), 0);
    const q = veventqAllocTry(t, v, { depth }).out;
    const file = t.caller.fds.lookup(q.out_veventq_fd)!;
    // Model.
    const LOST = { lost: true, seq: 0 };
    const list: { lost: boolean; seq: number }[] = [];
    let seq = 0;
    let num = 0;
    const enqueue = (r: { lost: boolean; seq: number }) => {
      if (list[list.length - 1] === LOST) list.pop();
      list.push(r);
      r.seq = seq;
      seq = (seq + 1) & 0x7fffffff;
    };
    const buf = t.mem.alloc(64);
    for (const op of ops) {
      if (op.t === 'trigger' || op.t === 'nomem') {
        let want: string | 0 = 0;
        // 7.3 allocates the record before it checks the depth: a full queue fails the allocation too.
        const allocFirst = t.emu.profile.version >= V.V7_3;
        if (op.t === 'nomem' && (allocFirst || num < depth)) { enqueue(LOST); want = 'ENOMEM'; }
        else if (num >= depth) enqueue(LOST);
        else { num++; enqueue({ lost: false, seq: 0 }); }
        if (op.t === 'nomem') t.emu.failNth = 3; // the command's copy-in, the device lookup, the record
        const r = testCmdTry(t, TEST_OP.TRIGGER_VEVENT, 0, { dev_id: md.out_idev_id });
        t.emu.failNth = 0;
        assert.equal(r.err ? r.err.code : 0, want); // before 7.3 a full queue never allocates, so never fails
      } else {
        const expect: number[] = [];
        let used = 0;
        while (list.length) {
          const r = list[0]!;
          const len = r.lost ? 8 : 12;
          if (used + len > op.count) break;
          list.shift();
          if (!r.lost) num--;
          used += len;
          const b = new Uint8Array(len);
          const dv = new DataView(b.buffer);
          dv.setUint32(0, r.lost ? 1 : 0, true);
          dv.setUint32(4, r.seq, true);
          if (!r.lost) dv.setUint32(8, 0x5e, true);
          expect.push(...b);
        }
        // 7.3: below one header, or the first normal event not fitting, is EINVAL.
        const einval = op.count < 8 || (expect.length === 0 && list.length > 0 && !list[0]!.lost);
        if (einval) {
          assert.throws(() => file.read(t.mem, buf, op.count, 0n), (e: unknown) => isErrno(e, 'EINVAL'));
        } else {
          const n = file.read(t.mem, buf, op.count, 0n);
          assert.deepEqual([...t.mem.read(buf, n)], expect);
        }
      }
      assert.equal(file.poll() !== 0, list.length > 0);
    }
    t.caller.fds.close(q.out_veventq_fd);
    closeCtx(t);
    assert.equal(t.ctx.objects.size, 0);
  }), { numRuns: 300 });
});
