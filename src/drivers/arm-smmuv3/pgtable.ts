// VMSAv8-64 (LPAE) page tables as the kernel's io-pgtable-arm writes them:
// stage-1 and stage-2 formats, 4K/16K/64K granules, start level from the
// input size, stage-2 concatenation where io-pgtable makes it mandatory, leaf
// attributes from IOMMU_* prot bits, block splitting on partial unmap. The
// driver uses it for its own domains (tables in driver memory); tests use it
// to lay guest tables into user memory through a TableMemory of their own.
import { fail } from '../../uapi/errno.js';
import { D } from './mem.js';

/** IOMMU_* prot bits (include/linux/iommu.h). */
export const PROT = { READ: 1, WRITE: 2, CACHE: 4, NOEXEC: 8, MMIO: 16, PRIV: 32 } as const;

/** Where a table lives: addresses are whatever the walker will use (PA, or IPA for guest tables). */
export interface TableMemory {
  /** A zeroed table of `bytes`, aligned to max(bytes, 4 KiB); returns its address. Throws an errno on failure. */
  alloc(bytes: number): number;
  free(addr: number): void;
  /** Read the u64 at `addr` into mem.D. */
  read(addr: number): void;
  write(addr: number, lo: number, hi: number): void;
}

const P2 = Array.from({ length: 64 }, (_, i) => 2 ** i);
const LO_MASK = (shift: number): number => (shift >= 32 ? 0 : (~(P2[shift]! - 1)) >>> 0);

/** Descriptor bits, low word. */
export const PTE = {
  VALID: 1, TABLE: 3, BLOCK: 1, PAGE: 3,
  AP_UNPRIV: 1 << 6, AP_RDONLY: 1 << 7, HAP_READ: 1 << 6, HAP_WRITE: 1 << 7,
  SH_OS: 2 << 8, SH_IS: 3 << 8, AF: 1 << 10, NG: 1 << 11,
  ATTRIDX_SHIFT: 2, MEMATTR_SHIFT: 2,
  /** High word (bit - 32). */
  HI_DBM: 1 << 19, HI_XN: 3 << 21, HI_PXN: 1 << 21, HI_UXN: 1 << 22,
  HI_PXNTABLE: 1 << 27, HI_XNTABLE: 1 << 28, HI_APTABLE_NOEL0: 1 << 29, HI_APTABLE_RO: 1 << 30,
} as const;

export const MEMATTR = { DEV: 0x1, NC: 0x5, FWB_WB: 0x6, OIWB: 0xf } as const;
export const MAIR_IDX = { NC: 0, CACHE: 1, DEV: 2, INC_OCACHE: 3 } as const;

/** TCR/VTCR TG encodings (TG0 / S2TG). */
export const TG_ENC: Readonly<Record<number, number>> = { 12: 0, 16: 1, 14: 2 };
/** Output/intermediate sizes -> IPS/PS encodings. */
export const PS_ENC: Readonly<Record<number, number>> = { 32: 0, 36: 1, 40: 2, 42: 3, 44: 4, 48: 5, 52: 6 };

/** Shift of the region one entry at `level` maps, for granule shift g. */
export function levelShift(g: number, level: number): number {
  return g + (3 - level) * (g - 3);
}

/** Levels whose leaf entries are legal for a granule (OA <= 48 bits). */
export function leafLevels(g: number): readonly number[] {
  return g === 12 ? [1, 2, 3] : [2, 3];
}

export interface LpaeOptions {
  stage: 1 | 2;
  /** Granule shift: 12, 14 or 16. */
  g: number;
  /** Input address bits. */
  ias: number;
  /** Output address bits (for PS/IPS). */
  oas: number;
  /** io-pgtable's S2FWB quirk (stage-2 MemAttr encoding). */
  s2fwb?: boolean;
  /** Stage 2: concatenate start tables where io-pgtable does (default true). */
  concat?: boolean;
  /** Force a start level (tests of level counts); default from ias. */
  startLevel?: number;
}

export class LpaeTable {
  readonly stage: 1 | 2;
  readonly g: number;
  readonly ias: number;
  readonly oas: number;
  readonly bitsPerLevel: number;
  readonly startLevel: number;
  /** Index bits of the start table (concatenation included). */
  readonly pgdBits: number;
  readonly root: number;
  private readonly s2fwb: boolean;
  /** Live tables below the root: address -> bytes (for free()). */
  private readonly tables = new Set<number>();

  constructor(readonly mem: TableMemory, o: LpaeOptions) {
    if (![12, 14, 16].includes(o.g)) throw new Error(`granule shift ${o.g} is not 12, 14 or 16`);
    this.stage = o.stage;
    this.g = o.g;
    this.ias = o.ias;
    this.oas = o.oas;
    this.s2fwb = !!o.s2fwb;
    this.bitsPerLevel = o.g - 3;
    const vaBits = o.ias - o.g;
    const levels = Math.ceil(vaBits / this.bitsPerLevel);
    let start = 4 - levels;
    let pgdBits = vaBits - this.bitsPerLevel * (levels - 1);
    if (o.startLevel !== undefined && o.startLevel !== start) {
      // A later start level concatenates tables (stage 2 only, at most 16).
      const extra = (o.startLevel - start) * this.bitsPerLevel;
      pgdBits += extra;
      start = o.startLevel;
    } else if (o.stage === 2 && (o.concat ?? true) && this.concatMandatory(start)) {
      pgdBits += this.bitsPerLevel;
      start++;
    }
    if (start < 0 || start > 3) throw new Error(`start level ${start} out of range`);
    this.startLevel = start;
    this.pgdBits = pgdBits;
    this.root = mem.alloc(8 * P2[pgdBits]!);
  }

  /** arm_lpae_concat_mandatory. */
  private concatMandatory(start: number): boolean {
    if (this.g === 14 && start === 0) return this.oas === 48 || this.ias === 48;
    if (this.g === 12 && start === 0) return this.oas === 40 || this.oas === 42;
    return this.g === 14 && start === 1 && this.oas === 40;
  }

  /** Leaf sizes this table can hold, as a pgsize bitmap. */
  get pgsizeBitmap(): bigint {
    let b = 0n;
    for (const l of leafLevels(this.g)) if (l >= this.startLevel) b |= 1n << BigInt(levelShift(this.g, l));
    return b;
  }

  /** VTCR fields of a stage-2 STE (arm_64_lpae_alloc_pgtable_s2). */
  get vtcr(): { t0sz: number; sl0: number; tg: number; ps: number; irgn: number; orgn: number; sh: number } {
    const sl = this.startLevel + (this.g === 12 ? 1 : 0);
    return { t0sz: 64 - this.ias, sl0: ~sl & 3, tg: TG_ENC[this.g]!, ps: PS_ENC[this.oas]!, irgn: 1, orgn: 1, sh: 3 };
  }

  /** TCR fields of a CD (arm_64_lpae_alloc_pgtable_s1), TTB0 format. */
  get tcr(): { t0sz: number; tg0: number; ips: number; irgn: number; orgn: number; sh: number } {
    return { t0sz: 64 - this.ias, tg0: TG_ENC[this.g]!, ips: PS_ENC[this.oas]!, irgn: 1, orgn: 1, sh: 3 };
  }

  private index(va: number, level: number): number {
    const shift = levelShift(this.g, level);
    const bits = level === this.startLevel ? this.pgdBits : this.bitsPerLevel;
    return Math.floor(va / P2[shift]!) % P2[bits]!;
  }

  /** Leaf attribute bits (arm_lpae_prot_to_pte), as [lo, hi]. */
  protToPte(prot: number): [number, number] {
    let lo = PTE.AF;
    let hi = 0;
    if (this.stage === 1) {
      lo |= PTE.NG;
      if (!(prot & PROT.WRITE) && prot & PROT.READ) lo |= PTE.AP_RDONLY;
      if (!(prot & PROT.PRIV)) lo |= PTE.AP_UNPRIV;
      if (prot & PROT.MMIO) lo |= MAIR_IDX.DEV << PTE.ATTRIDX_SHIFT;
      else if (prot & PROT.CACHE) lo |= MAIR_IDX.CACHE << PTE.ATTRIDX_SHIFT;
    } else {
      if (prot & PROT.READ) lo |= PTE.HAP_READ;
      if (prot & PROT.WRITE) lo |= PTE.HAP_WRITE;
      const attr = prot & PROT.MMIO ? MEMATTR.DEV : prot & PROT.CACHE ? (this.s2fwb ? MEMATTR.FWB_WB : MEMATTR.OIWB) : MEMATTR.NC;
      lo |= attr << PTE.MEMATTR_SHIFT;
    }
    lo |= prot & PROT.CACHE ? PTE.SH_IS : PTE.SH_OS;
    if (prot & PROT.NOEXEC) hi |= PTE.HI_XN;
    return [lo >>> 0, hi];
  }

  /** Map one leaf of `size` bytes (a legal leaf size) at iova -> pa. EEXIST if anything is there. */
  map(iova: number, pa: number, size: number, prot: number): void {
    const [alo, ahi] = this.protToPte(prot);
    let table = this.root;
    for (let level = this.startLevel; level <= 3; level++) {
      const shift = levelShift(this.g, level);
      const ptep = table + 8 * this.index(iova, level);
      this.mem.read(ptep);
      if (P2[shift] === size) {
        if (!leafLevels(this.g).includes(level)) throw new Error(`no ${size}-byte leaf at level ${level}`);
        if (D.lo & 1) fail('EEXIST', 'io-pgtable: IOVA already mapped');
        const lo = ((pa % 2 ** 32) & LO_MASK(shift)) >>> 0;
        this.mem.write(ptep, (lo | alo | (level === 3 ? PTE.PAGE : PTE.BLOCK)) >>> 0, (Math.floor(pa / 2 ** 32) | ahi) >>> 0);
        return;
      }
      if (!(D.lo & 1)) {
        const next = this.mem.alloc(P2[this.g]!);
        this.tables.add(next);
        this.mem.write(ptep, ((next % 2 ** 32) | PTE.TABLE) >>> 0, Math.floor(next / 2 ** 32));
        table = next;
      } else if ((D.lo & 3) === PTE.TABLE && level < 3) {
        table = this.tableAddr(D.lo, D.hi);
      } else {
        fail('EEXIST', 'io-pgtable: IOVA already mapped by a block');
      }
    }
    throw new Error(`leaf size ${size} does not match granule 2^${this.g}`);
  }

  private tableAddr(lo: number, hi: number): number {
    return (hi & 0xffff) * 2 ** 32 + ((lo & LO_MASK(this.g)) >>> 0);
  }

  /** Map [iova, iova+length) -> pa.. with the largest aligned leaf sizes (iommu_map's split); unwinds on failure. */
  mapRange(iova: number, pa: number, length: number, prot: number, pgsizes: bigint = this.pgsizeBitmap): void {
    const sizes: number[] = [];
    for (let b = 63; b >= 0; b--) if (pgsizes & (1n << BigInt(b))) sizes.push(2 ** b);
    let done = 0;
    try {
      while (done < length) {
        const a = iova + done;
        const p = pa + done;
        const size = sizes.find((s) => a % s === 0 && p % s === 0 && s <= length - done);
        if (size === undefined) fail('EINVAL', `io-pgtable: no page size fits the run's alignment`);
        this.map(a, p, size, prot);
        done += size;
      }
    } catch (e) {
      if (done) this.unmap(iova, done);
      throw e;
    }
  }

  /**
   * Unmap [iova, iova+length); returns bytes that were mapped there. Splits
   * blocks a range cuts. `onLeaf` hears each cleared leaf (the iotlb gather).
   */
  unmap(iova: number, length: number, onLeaf?: (va: number, size: number) => void): number {
    this.onLeaf = onLeaf;
    try {
      return this.unmapLevel(this.root, this.startLevel, iova, iova + length);
    } finally {
      this.onLeaf = undefined;
    }
  }

  private onLeaf: ((va: number, size: number) => void) | undefined;

  private unmapLevel(table: number, level: number, start: number, end: number): number {
    const shift = levelShift(this.g, level);
    const size = P2[shift]!;
    const tableSpan = level === this.startLevel ? P2[shift + this.pgdBits]! : P2[shift + this.bitsPerLevel]!;
    let done = 0;
    let base = Math.floor(start / size) * size;
    for (; base < end; base += size) {
      const ptep = table + 8 * (Math.floor((base % tableSpan) / size));
      this.mem.read(ptep);
      if (!(D.lo & 1)) continue;
      const whole = base >= start && base + size <= end;
      const isTable = level < 3 && (D.lo & 3) === PTE.TABLE;
      if (!isTable) {
        if (whole) {
          this.mem.write(ptep, 0, 0);
          done += size;
          this.onLeaf?.(base, size);
          continue;
        }
        // Partial unmap of a block: replace it by a table of the next level holding the same mapping.
        this.splitBlock(ptep, level, D.lo, D.hi);
        this.mem.read(ptep);
      }
      const next = this.tableAddr(D.lo, D.hi);
      done += this.unmapLevel(next, level + 1, Math.max(start, base), Math.min(end, base + size));
      if (whole) {
        this.mem.write(ptep, 0, 0);
        this.mem.free(next);
        this.tables.delete(next);
      }
    }
    return done;
  }

  private splitBlock(ptep: number, level: number, lo: number, hi: number): void {
    const shift = levelShift(this.g, level);
    const childShift = levelShift(this.g, level + 1);
    const oa = (hi & 0xffff) * 2 ** 32 + ((lo & LO_MASK(shift)) >>> 0);
    const attrLo = (lo & 0xfff & ~3) >>> 0;
    const attrHi = (hi & ~0xffff) >>> 0;
    const next = this.mem.alloc(P2[this.g]!);
    this.tables.add(next);
    const n = P2[this.bitsPerLevel]!;
    const type = level + 1 === 3 ? PTE.PAGE : PTE.BLOCK;
    for (let i = 0; i < n; i++) {
      const a = oa + i * P2[childShift]!;
      this.mem.write(next + 8 * i, (((a % 2 ** 32) & LO_MASK(childShift)) | attrLo | type) >>> 0, (Math.floor(a / 2 ** 32) | attrHi) >>> 0);
    }
    this.mem.write(ptep, ((next % 2 ** 32) | PTE.TABLE) >>> 0, Math.floor(next / 2 ** 32));
  }

  /** The output address of iova, or undefined (arm_lpae_iova_to_phys). */
  iovaToPhys(iova: number): number | undefined {
    let table = this.root;
    for (let level = this.startLevel; level <= 3; level++) {
      const shift = levelShift(this.g, level);
      this.mem.read(table + 8 * this.index(iova, level));
      if (!(D.lo & 1)) return undefined;
      if (level < 3 && (D.lo & 3) === PTE.TABLE) {
        table = this.tableAddr(D.lo, D.hi);
        continue;
      }
      const oa = (D.hi & 0xffff) * 2 ** 32 + ((D.lo & LO_MASK(shift)) >>> 0);
      return oa + (iova % P2[shift]!);
    }
    return undefined;
  }

  /** Free every table (the root included). */
  free(): void {
    for (const t of this.tables) this.mem.free(t);
    this.tables.clear();
    this.mem.free(this.root);
  }
}
