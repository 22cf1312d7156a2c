// Table-driven walks: every granule and level count, page and block leaves,
// stage 1 alone, stage 2 alone (with concatenated start tables), and nested
// (stage-1 tables read through stage 2), programmed directly into the SMMU;
// then the same stage-1 cases through the uAPI (guest tables in user memory
// mapped through an IOAS, stage 2 = the nest parent the driver builds).
// Descriptors are laid out with the spec's level arithmetic (specMap), not
// with the driver's table writer.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { onSmmuTrace, type SmmuTraceRecord } from './trace.js';
import { build, STE, STE_CONFIG } from './regs.js';
import {
  attach, cdWords, dma, IpaView, nestedHwpt, nestSetup, PhysRam, physOf, programSte, rig, s2SteWords, S1_LEAF, S2_LEAF,
  SPEC_SHIFT, specMap, specStartLevel, startTableBytes, TG0_ENC, vste, type Rig,
} from './test_helpers.js';

/** Stage-1 cases: granule, input bits, expected start level, leaf level. */
const S1_CASES: { g: number; n: number; start: number; leaf: number }[] = [];
for (const [g, ns] of [[12, [48, 39, 30, 25]], [14, [48, 47, 36, 25]], [16, [48, 42, 29, 25]]] as const) {
  for (const n of ns) {
    const start = specStartLevel(g, n);
    const leaves = (g === 12 ? [1, 2, 3] : [2, 3]).filter((l) => l >= start);
    for (const leaf of leaves) S1_CASES.push({ g, n, start, leaf });
  }
}

function traceCount(r: Rig, fn: () => void): SmmuTraceRecord[] {
  const recs: SmmuTraceRecord[] = [];
  const off = onSmmuTrace(r.emu.bus, (x) => recs.push(x));
  try {
    fn();
  } finally {
    off();
  }
  return recs;
}

describe('walk tables', () => {
  const rams: PhysRam[] = [];
  after(() => rams.forEach((r) => r.release()));

  test('spec start levels (§5.5 examples)', () => {
    assert.equal(specStartLevel(12, 48), 0);
    assert.equal(specStartLevel(12, 39), 1);
    assert.equal(specStartLevel(16, 48), 1);
    assert.equal(specStartLevel(14, 48), 0);
  });

  for (const c of S1_CASES) {
    test(`stage 1 only: ${2 ** (c.g - 10)}K granule, ${c.n}-bit input (start L${c.start}, ${4 - c.start} levels), leaf at L${c.leaf}`, () => {
      const r = rig();
      const ram = new PhysRam();
      rams.push(ram);
      const root = ram.alloc(Math.max(startTableBytes(c.g, c.n, c.start), 64));
      const leafShift = SPEC_SHIFT[c.g]![c.leaf]!;
      // A VA with bits set at every level, below 2^n; an OA aligned to the leaf.
      const va = Math.floor((2 ** c.n - 1) * 0.6180339) - (Math.floor((2 ** c.n - 1) * 0.6180339) % 8);
      const oa = 2 ** 40 + 7 * 2 ** leafShift;
      specMap(ram, root, c.g, c.n, c.start, va, oa, c.leaf, S1_LEAF);
      const cd = ram.alloc(64);
      ram.writeWords(cd, cdWords({ g: c.g, n: c.n, ttb: root, asid: 3 }));
      const ste = build(STE, 8, { V: 1, CONFIG: STE_CONFIG.S1_TRANS });
      ste[0] = ste[0]! | BigInt(cd);
      programSte(r.smmu, 0x99, ste);
      const recs = traceCount(r, () => {
        const t = r.smmu.hw.translate(0x99, BigInt(va), undefined, false, false, false);
        assert.equal(physOf(t), oa + (va % 2 ** leafShift));
      });
      const walks = recs.filter((x) => x.point === 'walk' && x.stage === 1);
      assert.deepEqual(walks.map((x) => x.level), Array.from({ length: c.leaf - c.start + 1 }, (_, i) => c.start + i));
      // The IOTLB holds it now: a second access walks nothing.
      const again = traceCount(r, () => physOf(r.smmu.hw.translate(0x99, BigInt(va), undefined, false, false, false)));
      assert.equal(again.filter((x) => x.point === 'walk').length, 0);
      assert.equal(again.filter((x) => x.point === 'iotlb' && x.op === 'hit').length, 1);
    });
  }

  /** Stage-2 cases: granule, input bits, start level (below the natural one = concatenated start tables). */
  const S2_CASES: { g: number; n: number; start: number; leaf: number }[] = [
    { g: 12, n: 48, start: 0, leaf: 3 }, { g: 12, n: 48, start: 0, leaf: 2 }, { g: 12, n: 40, start: 1, leaf: 3 },
    { g: 12, n: 42, start: 1, leaf: 1 }, { g: 12, n: 34, start: 2, leaf: 3 }, { g: 12, n: 30, start: 2, leaf: 2 },
    { g: 14, n: 48, start: 1, leaf: 3 }, { g: 14, n: 47, start: 1, leaf: 2 }, { g: 14, n: 40, start: 2, leaf: 3 },
    { g: 14, n: 36, start: 2, leaf: 3 }, { g: 14, n: 28, start: 3, leaf: 3 },
    { g: 16, n: 48, start: 1, leaf: 3 }, { g: 16, n: 44, start: 2, leaf: 3 }, { g: 16, n: 42, start: 2, leaf: 2 },
    { g: 16, n: 33, start: 3, leaf: 3 },
  ];
  for (const c of S2_CASES) {
    const concat = c.n - SPEC_SHIFT[c.g]![c.start]! - (c.g - 3);
    test(`stage 2 only: ${2 ** (c.g - 10)}K granule, ${c.n}-bit IPA, start L${c.start}${concat > 0 ? ` (${2 ** concat} concatenated tables)` : ''}, leaf at L${c.leaf}`, () => {
      const r = rig();
      const ram = new PhysRam();
      rams.push(ram);
      const startBytes = startTableBytes(c.g, c.n, c.start);
      const root = ram.alloc(Math.max(startBytes, 64));
      const leafShift = SPEC_SHIFT[c.g]![c.leaf]!;
      const ipa = 2 ** c.n - 3 * 2 ** (c.g) + 0x128; // near the top: the last concatenated table
      const oa = 2 ** 41 + 5 * 2 ** leafShift;
      specMap(ram, root, c.g, c.n, c.start, ipa, oa, c.leaf, S2_LEAF);
      programSte(r.smmu, 0x98, s2SteWords({ g: c.g, inBits: c.n, start: c.start, ttb: root }));
      const recs = traceCount(r, () => {
        assert.equal(physOf(r.smmu.hw.translate(0x98, BigInt(ipa), undefined, true, false, false)), oa + (ipa % 2 ** leafShift));
      });
      assert.deepEqual(recs.filter((x) => x.point === 'walk').map((x) => x.level),
        Array.from({ length: c.leaf - c.start + 1 }, (_, i) => c.start + i));
    });
  }

  /** Nested: every stage-1 granule over every stage-2 granule; stage-1 tables live at IPAs. */
  for (const g1 of [12, 14, 16]) {
    for (const g2 of [12, 14, 16]) {
      test(`nested: ${2 ** (g1 - 10)}K stage 1 (48-bit) through ${2 ** (g2 - 10)}K stage 2 (40-bit IPA)`, () => {
        const r = rig();
        const ram = new PhysRam();
        rams.push(ram);
        // Stage 2: IPA window [1 GiB, 1 GiB + 1 MiB) -> the second MiB of the run, page by page.
        const n2 = 40;
        const s2start = g2 === 12 ? 1 : g2 === 14 ? 2 : 2;
        const s2root = ram.alloc(Math.max(startTableBytes(g2, n2, s2start), 64));
        const ipaBase = 2 ** 30;
        const winBytes = 1 << 20;
        for (let off = 0; off < winBytes; off += 2 ** g2) {
          specMap(ram, s2root, g2, n2, s2start, ipaBase + off, ram.base + winBytes + off, 3, S2_LEAF);
        }
        const ipaMem = new IpaView(ram, ipaBase, winBytes, winBytes);
        const n1 = 48;
        const s1start = specStartLevel(g1, n1);
        const s1root = ipaMem.alloc(Math.max(startTableBytes(g1, n1, s1start), 64));
        const data = ipaMem.alloc(2 ** g1);
        const va = 0x7f12_3456_7000 + 0x358;
        specMap(ipaMem, s1root, g1, n1, s1start, va, data, 3, S1_LEAF);
        const cd = ipaMem.alloc(64);
        ipaMem.writeWords(cd, cdWords({ g: g1, n: n1, ttb: s1root, asid: 9, ips: 2 }));
        const ste = s2SteWords({ g: g2, inBits: n2, start: s2start, ttb: s2root, vmid: 4 });
        ste[0] = build(STE, 1, { V: 1, CONFIG: STE_CONFIG.NESTED })[0]! | BigInt(cd);
        programSte(r.smmu, 0x97, ste);
        const recs = traceCount(r, () => {
          const pa = physOf(r.smmu.hw.translate(0x97, BigInt(va), undefined, false, false, false));
          assert.equal(pa, ipaMem.pa(data) + (va % 2 ** g1));
        });
        const s1 = recs.filter((x) => x.point === 'walk' && x.stage === 1);
        assert.equal(s1.length, 4 - s1start, 'one stage-1 descriptor per level');
        assert.ok(recs.some((x) => x.point === 'walk' && x.stage === 2), 'table addresses went through stage 2');
      });
    }
  }
});

describe('walks through the uAPI: guest tables in user memory, stage 2 = the nest parent', () => {
  for (const c of S1_CASES) {
    test(`${2 ** (c.g - 10)}K guest stage 1, ${c.n}-bit, start L${c.start}, leaf L${c.leaf}`, () => {
      const r = rig();
      // Guest RAM at IPA 1 GiB (aligned for every block size used), 8 MiB.
      const n = nestSetup(r, { ramBase: 0x4000_0000, ramSize: 8 << 20 });
      const ram = n.ram;
      const root = ram.alloc(Math.max(startTableBytes(c.g, c.n, c.start), 64));
      const leafShift = SPEC_SHIFT[c.g]![c.leaf]!;
      const data = ram.alloc(2 ** c.g);
      // A block's output is its aligned base; the access lands on the data page inside it.
      const blockBase = Math.floor(data / 2 ** leafShift) * 2 ** leafShift;
      const inLeaf = data - blockBase + 0x40;
      const vaBase = Math.floor((2 ** c.n) / 2 ** leafShift / 3) * 2 ** leafShift;
      const va = vaBase + inLeaf;
      specMap(ram, root, c.g, c.n, c.start, va, blockBase, c.leaf, S1_LEAF);
      const cd = ram.alloc(64);
      ram.writeWords(cd, cdWords({ g: c.g, n: c.n, ttb: root, asid: 12 }));
      attach(r, nestedHwpt(r, n, vste({ ctxPtr: cd })));
      assert.equal(physOf(dma(r, BigInt(va))), ram.pa(data) + 0x40);
      assert.equal(TG0_ENC[c.g] !== undefined, true);
    });
  }
});
