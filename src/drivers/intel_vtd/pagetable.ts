// A VT-d second-stage (second-level) I/O page table: 4 levels of 512 entries,
// 48-bit input addresses, 4 KiB / 2 MiB / 1 GiB leaves. Entries are encoded the
// way the hardware stores them (address | R | W | PS | SNP) so that a dump
// (debugfs domain_translation_struct) shows real-looking PTEs; the tables
// themselves are private to the kernel, so they live in JS arrays with a
// physical address taken from the machine's pfn space.
import { PFNS } from '../../core/physmem.js';
import { PAGE_SIZE } from '../../core/usermem.js';

/** PTE bits (VT-d second-level entries). */
export const SL_PTE = { R: 1, W: 2, PS: 0x80, SNP: 0x800 } as const;

export const LEVEL_SHIFT = [0, 12, 21, 30, 39] as const;
export const SZ_4K = 1 << 12;
export const SZ_2M = 2 ** 21;
export const SZ_1G = 2 ** 30;
const LEVEL_OF_SIZE = new Map<number, number>([[SZ_4K, 1], [SZ_2M, 2], [SZ_1G, 3]]);

class Table {
  readonly e = new Float64Array(512);
  readonly next: (Table | undefined)[] | null;
  readonly phys = PFNS.one() * PAGE_SIZE;
  constructor(readonly level: number) {
    this.next = level > 1 ? new Array<Table | undefined>(512) : null;
  }
}

export interface Leaf {
  /** Physical address of the first byte of the leaf page. */
  readonly addr: number;
  readonly flags: number;
  readonly size: number;
  /** Level of the leaf: 1 = PTE (4 KiB), 2 = PDE (2 MiB), 3 = PDPE (1 GiB). */
  readonly level: number;
}

const idx = (iova: number, level: number): number => Math.floor(iova / 2 ** LEVEL_SHIFT[level]!) % 512;

export class SlPageTable {
  private readonly root = new Table(4);

  /** Allocation hook for intermediate tables (fault injection: iommu_alloc_pages failing). */
  constructor(private readonly allocHook: () => void = () => {}) {}

  /** Install one leaf of `size` at `iova` (both aligned); false if anything is already mapped there. */
  setLeaf(iova: number, size: number, phys: number, flags: number): boolean {
    const level = LEVEL_OF_SIZE.get(size)!;
    let t = this.root;
    for (let l = 4; l > level; l--) {
      const i = idx(iova, l);
      const e = t.e[i]!;
      if (e && e % PAGE_SIZE & SL_PTE.PS) return false;
      let child = t.next![i];
      if (!child) {
        this.allocHook();
        child = new Table(l - 1);
        t.next![i] = child;
        t.e[i] = child.phys + SL_PTE.R + SL_PTE.W;
      }
      t = child;
    }
    const i = idx(iova, level);
    if (t.e[i] || t.next?.[i]) return false;
    t.e[i] = phys + (flags | (level > 1 ? SL_PTE.PS : 0));
    return true;
  }

  /** The leaf holding `iova`, or the level at which the walk found nothing. */
  walk(iova: number): Leaf | { missing: number } {
    let t = this.root;
    for (let l = 4; l >= 1; l--) {
      const i = idx(iova, l);
      const e = t.e[i]!;
      if (!e) return { missing: l };
      const flags = e % PAGE_SIZE;
      if (l === 1 || flags & SL_PTE.PS) {
        const size = 2 ** LEVEL_SHIFT[l]!;
        return { addr: e - flags, flags, size, level: l };
      }
      t = t.next![i]!;
    }
    return { missing: 0 };
  }

  /** The entry values seen by a walk of `iova`, top level first (0 where the walk stopped). */
  entries(iova: number): number[] {
    const out: number[] = [];
    let t: Table | undefined = this.root;
    for (let l = 4; l >= 1; l--) {
      if (!t) {
        out.push(0);
        continue;
      }
      const i = idx(iova, l);
      const e: number = t.e[i]!;
      out.push(e);
      t = e && !(e % PAGE_SIZE & SL_PTE.PS) ? t.next?.[i] : undefined;
    }
    return out;
  }

  /**
   * Clear the leaves covering [iova, iova + length); a leaf only partly inside
   * is cleared whole (the hardware cannot keep half a superpage). Returns the
   * bytes of the leaves cleared. Empty tables are freed.
   */
  clear(iova: number, length: number): number {
    let done = 0;
    let cur = iova;
    const end = iova + length;
    while (cur < end) {
      const r = this.clearOne(this.root, 4, cur);
      if (r.size) {
        done += r.size;
        cur = r.base + r.size;
      } else {
        // Skip the unmapped span at the level where the walk stopped.
        const span = 2 ** LEVEL_SHIFT[r.level]!;
        cur = Math.floor(cur / span) * span + span;
      }
    }
    return done;
  }

  private clearOne(t: Table, level: number, iova: number): { size: number; base: number; level: number } {
    const i = idx(iova, level);
    const e = t.e[i]!;
    if (!e) return { size: 0, base: 0, level };
    const flags = e % PAGE_SIZE;
    if (level === 1 || flags & SL_PTE.PS) {
      t.e[i] = 0;
      const size = 2 ** LEVEL_SHIFT[level]!;
      return { size, base: Math.floor(iova / size) * size, level };
    }
    const child = t.next![i]!;
    const r = this.clearOne(child, level - 1, iova);
    if (r.size && child.e.every((x) => x === 0)) {
      t.e[i] = 0;
      t.next![i] = undefined;
    }
    return r;
  }

  /** Number of present leaves (tests). */
  countLeaves(): number {
    const count = (t: Table): number => {
      let n = 0;
      for (let i = 0; i < 512; i++) {
        const e = t.e[i]!;
        if (!e) continue;
        if (t.level === 1 || e % PAGE_SIZE & SL_PTE.PS) n++;
        else n += count(t.next![i]!);
      }
      return n;
    };
    return count(this.root);
  }
}
