// Property test: random MAP / UNMAP / COPY / ALLOW_IOVAS / ADD_RESERVED /
// mock-domain attach+detach / access pin+unpin sequences on two IOASes, run through the raw entry
// and checked against a small reference model. Invariants after every step:
// areas never overlap and match the model, every page's pin count equals the
// number of pages objects holding it, and the memlock charge equals the pinned
// pages. After closing the context: no object, no pin, no charge.
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { TEST_OP } from '../uapi/enums.js';
import * as S from '../uapi/structs.js';
import {
  env, errOf, ioasAlloc, mockDomain, PS, raw, rangesBuf, testCmd, U64_MAX, destroy, type Env,
} from './ioas_test_helpers.js';
import { getIoas } from './ioas.js';

const BASE = 1n << 24n; // mock aperture start
const AP_LAST = (1n << 31n) - 1n;
const NPAGES = 48;

interface MArea { iova: bigint; last: bigint; pagesId: number; first: number; lastPage: number }
interface MIoas {
  id: number; areas: MArea[]; reserved: [bigint, bigint][]; allowed: [bigint, bigint][]; domains: number[];
  fd: number; items: MItem[];
}

type Op =
  | { k: 'map'; io: number; page: number; n: number; slot: number | null }
  | { k: 'unmap'; io: number; slot: number; n: number }
  | { k: 'unmapAll'; io: number }
  | { k: 'copy'; src: number; dst: number; slot: number; n: number; dslot: number | null }
  | { k: 'allow'; io: number; ranges: [number, number][] }
  | { k: 'reserve'; io: number; slot: number; n: number }
  | { k: 'attach'; io: number }
  | { k: 'detach'; io: number }
  | { k: 'pin'; io: number; slot: number; n: number }
  | { k: 'unpin'; io: number; nth: number };

const slotIova = (slot: number): bigint => BASE + BigInt(slot) * PS;
const io = fc.integer({ min: 0, max: 1 });
const slot = fc.integer({ min: 0, max: 63 });
const len = fc.integer({ min: 1, max: 8 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ k: fc.constant('map' as const), io, page: fc.integer({ min: 0, max: NPAGES - 8 }), n: len, slot: fc.option(slot, { nil: null }) }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('unmap' as const), io, slot, n: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('unmapAll' as const), io }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('copy' as const), src: io, dst: io, slot, n: len, dslot: fc.option(slot, { nil: null }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('allow' as const), io, ranges: fc.array(fc.tuple(fc.integer({ min: 0, max: 70 }), fc.integer({ min: 1, max: 20 })), { maxLength: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('reserve' as const), io, slot: fc.integer({ min: -2, max: 70 }), n: len }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('attach' as const), io }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('detach' as const), io }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('pin' as const), io, slot, n: len }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('unpin' as const), io, nth: fc.nat(10) }) },
);

/** An ACCESS_PAGES item: its IOVA range and the (pages object, buffer page) pairs it holds. */
interface MItem { id: number; iova: bigint; last: bigint; held: string[] }

const overlaps = (s1: bigint, l1: bigint, s2: bigint, l2: bigint): boolean => s1 <= l2 && s2 <= l1;

class Model {
  readonly ioas: MIoas[];
  nextPagesId = 1;
  constructor(ids: number[]) {
    this.ioas = ids.map((id) => ({ id, areas: [], reserved: [], allowed: [], domains: [], fd: -1, items: [] }));
  }
  reservedOf(m: MIoas): [bigint, bigint][] {
    return m.domains.length ? [...m.reserved, [0n, BASE - 1n], [AP_LAST + 1n, U64_MAX]] : m.reserved;
  }
  /** Expected pin count per buffer page. */
  expectedPins(): number[] {
    const held = new Set<string>();
    for (const m of this.ioas) for (const it of m.items) for (const h of it.held) held.add(h);
    for (const m of this.ioas) {
      if (!m.domains.length) continue;
      for (const a of m.areas) for (let p = a.first; p <= a.lastPage; p++) held.add(`${a.pagesId}:${p}`);
    }
    const pins = new Array(NPAGES).fill(0);
    for (const k of held) pins[Number(k.split(':')[1])]++;
    return pins;
  }
  /** The unmap walk removing `a`: items overlapping it are dropped first (the access's unmap callback). */
  dropItemsOver(m: MIoas, a: MArea): void {
    m.items = m.items.filter((it) => !overlaps(it.iova, it.last, a.iova, a.last));
  }
  insert(m: MIoas, areas: MArea[]): void {
    m.areas.push(...areas);
    m.areas.sort((a, b) => (a.iova < b.iova ? -1 : 1));
  }
}

/** Sorted ranges with touching or overlapping neighbours merged. */
function mergeAdjacent(ranges: [bigint, bigint][]): [bigint, bigint][] {
  const out: [bigint, bigint][] = [];
  for (const [s, l] of [...ranges].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    const top = out[out.length - 1];
    if (top && s <= top[1] + 1n) top[1] = l > top[1] ? l : top[1];
    else out.push([s, l]);
  }
  return out;
}

function run(ops: Op[], profile: 'mainline' | '6.12'): void {
  const e: Env = env(profile, { capIpcLock: false, memlockLimit: Infinity, uid: 4242 });
  const buf = e.mem.mmap(NPAGES * 4096, { shared: true });
  const model = new Model([ioasAlloc(e), ioasAlloc(e)]);
  // Each IOAS has a pinning selftest access (forces PAGE_SIZE alignment; maps here are page sized).
  for (const m of model.ioas) m.fd = testCmd(e, TEST_OP.CREATE_ACCESS, m.id, { flags: 1 }).out_access_fd;
  const charged = (): number => e.emu.userAccounting.get(4242);

  for (const op of ops) {
    switch (op.k) {
      case 'map': {
        const m = model.ioas[op.io]!;
        const length = BigInt(op.n) * PS;
        const fixed = op.slot !== null;
        const iova = fixed ? slotIova(op.slot!) : 0n;
        const err = errOf(() => raw(e, 'IOAS_MAP', S.iommu_ioas_map, {
          flags: 6 | (fixed ? 1 : 0), ioas_id: m.id, user_va: buf + BigInt(op.page) * PS, length, iova,
        }));
        let got = iova;
        if (fixed) {
          const last = iova + length - 1n;
          const want = model.reservedOf(m).some(([s, l]) => overlaps(s, l, iova, last)) ? 'EINVAL'
            : m.areas.some((a) => overlaps(a.iova, a.last, iova, last)) ? 'EEXIST' : 0;
          assert.equal(err, want, `map fixed ${JSON.stringify(op)}`);
        } else {
          assert.ok(err === 0 || err === 'ENOSPC', `auto map gave ${err}`);
          if (err === 0) got = getIoas(e.ctx, m.id).iopt.areasIn(0n, U64_MAX).find((a) => !m.areas.some((b) => b.iova === a.iova))!.iova;
        }
        if (err === 0) {
          const last = got + length - 1n;
          assert.ok(!m.areas.some((a) => overlaps(a.iova, a.last, got, last)), 'auto IOVA overlaps an area');
          assert.ok(!model.reservedOf(m).some(([s, l]) => overlaps(s, l, got, last)), 'IOVA in a reserved range');
          // Adjacent allowed ranges form one span for the allocator (the kernel walks spans, not nodes).
          if (!fixed && m.allowed.length) assert.ok(mergeAdjacent(m.allowed).some(([s, l]) => got >= s && last <= l), 'auto IOVA outside allowed');
          if (!fixed) assert.ok(got >= PS && last <= U64_MAX - PS);
          model.insert(m, [{ iova: got, last, pagesId: model.nextPagesId++, first: op.page, lastPage: op.page + op.n - 1 }]);
        }
        break;
      }
      case 'unmap': {
        const m = model.ioas[op.io]!;
        const start = slotIova(op.slot);
        const last = start + BigInt(op.n) * PS - 1n;
        let unmapped = 0n;
        let want: string | 0 = 0;
        for (const a of [...m.areas]) {
          if (!overlaps(a.iova, a.last, start, last)) continue;
          if (a.iova < start || a.last > last) {
            want = 'ENOENT';
            break;
          }
          model.dropItemsOver(m, a);
          m.areas.splice(m.areas.indexOf(a), 1);
          unmapped += a.last - a.iova + 1n;
        }
        if (!want && unmapped === 0n) want = 'ENOENT';
        let out = -1n;
        const err = errOf(() => {
          out = raw(e, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: m.id, iova: start, length: last - start + 1n }).out.length;
        });
        assert.equal(err, want, `unmap ${JSON.stringify(op)}`);
        if (!err) assert.equal(out, unmapped);
        break;
      }
      case 'unmapAll': {
        const m = model.ioas[op.io]!;
        const total = m.areas.reduce((n, a) => n + a.last - a.iova + 1n, 0n);
        m.areas = [];
        m.items = [];
        assert.equal(raw(e, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: m.id, iova: 0n, length: U64_MAX }).out.length, total);
        break;
      }
      case 'copy': {
        const src = model.ioas[op.src]!;
        const dst = model.ioas[op.dst]!;
        const sIova = slotIova(op.slot);
        const length = BigInt(op.n) * PS;
        const sLast = sIova + length - 1n;
        // Source segments: back-to-back areas covering the range.
        const segs: MArea[] = [];
        let cur = sIova;
        for (;;) {
          const a = src.areas.find((x) => x.iova <= cur && x.last >= cur);
          if (!a) break;
          const to = a.last < sLast ? a.last : sLast;
          const off = Number((cur - a.iova) / PS);
          segs.push({ iova: 0n, last: to - cur, pagesId: a.pagesId, first: a.first + off, lastPage: a.first + off + Number((to - cur) / PS) });
          if (to === sLast) {
            cur = sLast + 1n;
            break;
          }
          cur = to + 1n;
        }
        const covered = cur > sLast;
        const fixed = op.dslot !== null;
        const dIova = fixed ? slotIova(op.dslot!) : 0n;
        const err = errOf(() => raw(e, 'IOAS_COPY', S.iommu_ioas_copy, {
          flags: 6 | (fixed ? 1 : 0), dst_ioas_id: dst.id, src_ioas_id: src.id, length, dst_iova: dIova, src_iova: sIova,
        }));
        if (!covered) {
          assert.equal(err, 'ENOENT');
          break;
        }
        let got = dIova;
        if (fixed) {
          const last = dIova + length - 1n;
          const want = model.reservedOf(dst).some(([s, l]) => overlaps(s, l, dIova, last)) ? 'EINVAL'
            : dst.areas.some((a) => overlaps(a.iova, a.last, dIova, last)) ? 'EEXIST' : 0;
          assert.equal(err, want, `copy fixed ${JSON.stringify(op)}`);
        } else {
          assert.ok(err === 0 || err === 'ENOSPC');
          if (err === 0) got = getIoas(e.ctx, dst.id).iopt.areasIn(0n, U64_MAX).find((a) => !dst.areas.some((b) => b.iova === a.iova))!.iova;
        }
        if (err === 0) {
          const add: MArea[] = [];
          let at = got;
          for (const s of segs) {
            add.push({ iova: at, last: at + s.last, pagesId: s.pagesId, first: s.first, lastPage: s.lastPage });
            at += s.last + 1n;
          }
          model.insert(dst, add);
        }
        break;
      }
      case 'allow': {
        const m = model.ioas[op.io]!;
        const ranges: [bigint, bigint][] = [];
        for (const [s, n] of op.ranges) {
          const r: [bigint, bigint] = [slotIova(s), slotIova(s + n) - 1n];
          if (ranges.some(([a, b]) => overlaps(a, b, r[0], r[1]))) continue;
          ranges.push(r);
        }
        const err = errOf(() => raw(e, 'IOAS_ALLOW_IOVAS', S.iommu_ioas_allow_iovas, {
          ioas_id: m.id, num_iovas: ranges.length, allowed_iovas: rangesBuf(e, ranges),
        }));
        const want = ranges.some(([s, l]) => model.reservedOf(m).some(([a, b]) => overlaps(a, b, s, l))) ? 'EADDRINUSE' : 0;
        assert.equal(err, want);
        if (!err) m.allowed = ranges.sort((a, b) => (a[0] < b[0] ? -1 : 1));
        break;
      }
      case 'reserve': {
        const m = model.ioas[op.io]!;
        const start = slotIova(op.slot);
        const last = start + BigInt(op.n) * PS - 1n;
        const err = errOf(() => testCmd(e, TEST_OP.ADD_RESERVED, m.id, { start, length: last - start + 1n }));
        const want = m.areas.some((a) => overlaps(a.iova, a.last, start, last)) || m.allowed.some(([s, l]) => overlaps(s, l, start, last))
          ? 'EADDRINUSE' : 0;
        assert.equal(err, want);
        if (!err) m.reserved.push([start, last]);
        break;
      }
      case 'attach': {
        const m = model.ioas[op.io]!;
        const outside = (s: bigint, l: bigint): boolean => s < BASE || l > AP_LAST;
        const want = m.domains.length === 0 && (m.areas.some((a) => outside(a.iova, a.last)) || m.allowed.some(([s, l]) => outside(s, l)))
          ? 'EADDRINUSE' : 0;
        let stdev = 0;
        const err = errOf(() => { stdev = mockDomain(e, m.id).stdev; });
        assert.equal(err, want);
        if (!err) m.domains.push(stdev);
        break;
      }
      case 'pin': {
        const m = model.ioas[op.io]!;
        const start = slotIova(op.slot);
        const last = start + BigInt(op.n) * PS - 1n;
        const held: string[] = [];
        let cur = start;
        while (cur <= last) {
          const a = m.areas.find((x) => x.iova <= cur && x.last >= cur);
          if (!a) break;
          const to = a.last < last ? a.last : last;
          for (let p = a.first + Number((cur - a.iova) / PS); p <= a.first + Number((to - a.iova) / PS); p++) held.push(`${a.pagesId}:${p}`);
          cur = to + 1n;
        }
        let id = -1;
        const err = errOf(() => {
          id = testCmd(e, TEST_OP.ACCESS_PAGES, m.fd, { iova: start, length: last - start + 1n, uptr: 0n }).out_access_pages_id;
        });
        assert.equal(err, cur > last ? 0 : 'ENOENT', `pin ${JSON.stringify(op)}`);
        if (!err) m.items.push({ id, iova: start, last, held });
        break;
      }
      case 'unpin': {
        const m = model.ioas[op.io]!;
        const it = m.items[op.nth % Math.max(1, m.items.length)];
        if (!it) break;
        testCmd(e, TEST_OP.DESTROY_ACCESS_PAGES, m.fd, { access_pages_id: it.id });
        m.items.splice(m.items.indexOf(it), 1);
        break;
      }
      case 'detach': {
        const m = model.ioas[op.io]!;
        const stdev = m.domains.pop();
        if (stdev !== undefined) destroy(e, stdev);
        break;
      }
    }
    // Invariants.
    for (const m of model.ioas) {
      const iopt = getIoas(e.ctx, m.id).iopt;
      iopt.checkInvariants();
      assert.deepEqual(iopt.areasIn(0n, U64_MAX).map((a) => [a.iova, a.last]), m.areas.map((a) => [a.iova, a.last]));
    }
    const pins = e.mem.getPages(buf, NPAGES, false).map((p) => p.pins);
    assert.deepEqual(pins, model.expectedPins(), `pins after ${JSON.stringify(op)}`);
    assert.equal(charged(), pins.reduce((a, b) => a + b, 0));
  }
  for (const m of model.ioas) e.fds.close(m.fd);
  e.ctx.put();
  assert.equal(e.ctx.objects.size, 0);
  assert.ok(e.mem.getPages(buf, NPAGES, false).every((p) => p.pins === 0));
  assert.equal(charged(), 0);
}

for (const profile of ['mainline', '6.12'] as const) {
  test(`Random IOAS operation sequences agree with the reference model (${profile})`, { timeout: 120_000 }, () => {
    fc.assert(fc.property(fc.array(opArb, { maxLength: 60, size: 'max' }), (ops) => run(ops, profile)), { numRuns: 300 });
  });
}
