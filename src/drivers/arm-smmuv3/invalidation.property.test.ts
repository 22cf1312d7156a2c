// Property: against a reference model of a TLB that caches exactly what was
// accessed and forgets exactly what a command covers, random sequences of
// guest table edits, guest TLBIs (VA, range, VAA, ASID, ALL, NSNH_ALL) and DMA
// accesses give the same results on the emulated SMMU — stale translations
// appear exactly when a real IOTLB may hold them and never after the command
// that covers them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { cmd } from './cmdq.js';
import { OP } from './regs.js';
import { attach, dma, guestCd, invalidate, nestedHwpt, nestSetup, PROT, rig, tlbi, vste } from './test_helpers.js';

const PAGES = 5;
const TARGETS = 3;
const VA = 0x1000_0000;
const ASID = 5;
const RW = PROT.READ | PROT.WRITE | PROT.CACHE;

type Op =
  | { k: 'access'; i: number }
  | { k: 'remap'; i: number; p: number }
  | { k: 'unmap'; i: number }
  | { k: 'va'; i: number; asid: number }
  | { k: 'range'; i: number; n: number }
  | { k: 'vaa'; i: number }
  | { k: 'asid'; asid: number }
  | { k: 'all' }
  | { k: 'nsnh' };

const page = fc.integer({ min: 0, max: PAGES - 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: page.map((i) => ({ k: 'access' as const, i })) },
  { weight: 3, arbitrary: fc.record({ i: page, p: fc.integer({ min: 0, max: TARGETS - 1 }) }).map((x) => ({ k: 'remap' as const, ...x })) },
  { weight: 1, arbitrary: page.map((i) => ({ k: 'unmap' as const, i })) },
  { weight: 2, arbitrary: fc.record({ i: page, asid: fc.constantFrom(ASID, ASID + 1) }).map((x) => ({ k: 'va' as const, ...x })) },
  { weight: 1, arbitrary: fc.record({ i: page, n: fc.integer({ min: 1, max: 4 }) }).map((x) => ({ k: 'range' as const, ...x })) },
  { weight: 1, arbitrary: page.map((i) => ({ k: 'vaa' as const, i })) },
  { weight: 1, arbitrary: fc.constantFrom(ASID, ASID + 1).map((asid) => ({ k: 'asid' as const, asid })) },
  { weight: 1, arbitrary: fc.constant({ k: 'all' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'nsnh' as const }) },
);

test('IOTLB staleness matches a reference model under random edits, TLBIs and accesses', () => {
  fc.assert(fc.property(fc.array(opArb, { minLength: 40, maxLength: 80 }), (ops) => {
    const r = rig();
    const n = nestSetup(r);
    const t = n.ram.table(12, 48);
    const targets = Array.from({ length: TARGETS }, () => n.ram.alloc(4096));
    const table: (number | undefined)[] = Array.from({ length: PAGES }, (_, i) => i % TARGETS);
    table.forEach((p, i) => t.map(VA + i * 4096, targets[p!]!, 4096, RW));
    const cd = n.ram.alloc(64);
    n.ram.writeWords(cd, guestCd(t, ASID));
    attach(r, nestedHwpt(r, n, vste({ ctxPtr: cd })));
    const cached: (number | undefined)[] = new Array(PAGES).fill(undefined);
    const forget = (i: number) => { cached[i] = undefined; };
    for (const op of ops) {
      switch (op.k) {
        case 'access': {
          const res = dma(r, BigInt(VA + op.i * 4096 + 8));
          const want = cached[op.i] ?? table[op.i];
          if (want === undefined) {
            assert.ok('fault' in res, `page ${op.i} should fault`);
          } else {
            assert.ok(!('fault' in res), `page ${op.i} should translate`);
            assert.equal(res.phys, n.ram.pa(targets[want]!) + 8, `page ${op.i}`);
            cached[op.i] = want;
          }
          break;
        }
        case 'remap':
          if (table[op.i] !== undefined) t.unmap(VA + op.i * 4096, 4096);
          t.map(VA + op.i * 4096, targets[op.p]!, 4096, RW);
          table[op.i] = op.p;
          break;
        case 'unmap':
          if (table[op.i] !== undefined) t.unmap(VA + op.i * 4096, 4096);
          table[op.i] = undefined;
          break;
        case 'va':
          invalidate(r, n, [tlbi(OP.TLBI_NH_VA, { asid: op.asid, addr: BigInt(VA + op.i * 4096) })]);
          if (op.asid === ASID) forget(op.i);
          break;
        case 'range':
          invalidate(r, n, [tlbi(OP.TLBI_NH_VA, { asid: ASID, addr: BigInt(VA + op.i * 4096), tg: 1, num: op.n - 1, ttl: 3 })]);
          for (let j = op.i; j < Math.min(PAGES, op.i + op.n); j++) forget(j);
          break;
        case 'vaa':
          invalidate(r, n, [tlbi(OP.TLBI_NH_VAA, { addr: BigInt(VA + op.i * 4096) })]);
          forget(op.i);
          break;
        case 'asid':
          invalidate(r, n, [tlbi(OP.TLBI_NH_ASID, { asid: op.asid })]);
          if (op.asid === ASID) cached.fill(undefined);
          break;
        case 'all':
          invalidate(r, n, [tlbi(OP.TLBI_NH_ALL)]);
          cached.fill(undefined);
          break;
        case 'nsnh':
          invalidate(r, n, [cmd.make(OP.TLBI_NSNH_ALL)]);
          cached.fill(undefined);
          break;
      }
    }
  }), { numRuns: 200 });
});
