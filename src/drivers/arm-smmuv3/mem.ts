// How the emulated SMMU reads memory: 64-bit descriptors and 64-byte
// structures at physical addresses, through PHYS (core/physmem.ts). The
// driver's own tables (host page tables, CD tables) live in TablePages it
// registers in PHYS; guest tables are in pinned user pages. Descriptor reads
// return their halves in the module-level `D` (no allocation on the walk path).
import { PFNS, PHYS } from '../../core/physmem.js';
import { PAGE_SIZE, type PhysPage } from '../../core/usermem.js';

/** A page owned by the driver (page tables, CD tables), reachable by DMA/walks once registered. */
export class TablePage implements PhysPage {
  readonly compound = false;
  pins = 0;
  readonly bytes = new Uint8Array(PAGE_SIZE);
  constructor(readonly pfn: number) {}
  read(offset: number, length: number): Uint8Array {
    return this.bytes.slice(offset, offset + length);
  }
  write(offset: number, data: Uint8Array): void {
    this.bytes.set(data, offset);
  }
}

/** The last descriptor read: low and high 32-bit halves (unsigned). */
export const D = { lo: 0, hi: 0 };

/** Read the little-endian u64 at physical address `pa` (8-byte aligned) into D; false when no page backs it. */
export function readDesc(pa: number): boolean {
  const pfn = Math.floor(pa / PAGE_SIZE);
  const page = PHYS.page(pfn);
  if (!page) return false;
  const off = pa - pfn * PAGE_SIZE;
  let b: Uint8Array;
  let o: number;
  if (page instanceof TablePage) {
    b = page.bytes;
    o = off;
  } else {
    b = page.read(off, 8);
    o = 0;
  }
  D.lo = (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
  D.hi = (b[o + 4]! | (b[o + 5]! << 8) | (b[o + 6]! << 16) | (b[o + 7]! << 24)) >>> 0;
  return true;
}

/** Read `n` u64 words at `pa`; undefined when any byte has no page. */
export function readWords(pa: number, n: number): bigint[] | undefined {
  const b = PHYS.read(pa, n * 8);
  if (!b) return undefined;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const w: bigint[] = [];
  for (let i = 0; i < n; i++) w.push(dv.getBigUint64(i * 8, true));
  return w;
}

/** Write a u64 given as halves at `pa` (a driver-owned or pinned page); false when unbacked. */
export function writeDesc(pa: number, lo: number, hi: number): boolean {
  const pfn = Math.floor(pa / PAGE_SIZE);
  const page = PHYS.page(pfn);
  if (!page) return false;
  const off = pa - pfn * PAGE_SIZE;
  if (page instanceof TablePage) {
    const b = page.bytes;
    for (let i = 0; i < 4; i++) b[off + i] = (lo >>> (8 * i)) & 0xff;
    for (let i = 0; i < 4; i++) b[off + 4 + i] = (hi >>> (8 * i)) & 0xff;
    return true;
  }
  const b = new Uint8Array(8);
  for (let i = 0; i < 4; i++) b[i] = (lo >>> (8 * i)) & 0xff;
  for (let i = 0; i < 4; i++) b[4 + i] = (hi >>> (8 * i)) & 0xff;
  page.write(off, b);
  return true;
}

/**
 * Driver memory for tables: physically contiguous, naturally aligned runs of
 * TablePages registered in PHYS. Runs of more than one page come from a fresh
 * huge-aligned pfn range.
 */
export class TableAllocator {
  private readonly runs = new Map<number, TablePage[]>();

  /** A zeroed run of at least `bytes` (rounded up to pages), aligned to its size; returns its physical address. */
  alloc(bytes: number): number {
    const n = Math.max(1, Math.ceil(bytes / PAGE_SIZE));
    if (n > 512) throw new Error(`table allocation of ${bytes} bytes is larger than the emulator's 2 MiB runs`);
    const base = n === 1 ? PFNS.one() : PFNS.huge();
    const pages: TablePage[] = [];
    for (let i = 0; i < n; i++) {
      const p = new TablePage(base + i);
      PHYS.add(p);
      pages.push(p);
    }
    this.runs.set(base * PAGE_SIZE, pages);
    return base * PAGE_SIZE;
  }

  free(pa: number): void {
    const pages = this.runs.get(pa);
    if (!pages) throw new Error(`table free of unknown address 0x${pa.toString(16)}`);
    for (const p of pages) PHYS.remove(p);
    this.runs.delete(pa);
  }

  freeAll(): void {
    for (const pa of [...this.runs.keys()]) this.free(pa);
  }

  get liveRuns(): number {
    return this.runs.size;
  }
}
