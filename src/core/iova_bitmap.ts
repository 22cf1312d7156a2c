// The user bitmap of HWPT_GET_DIRTY_BITMAP, written the way the kernel's
// iova_bitmap does it: nothing is pinned up front; when a dirty range is
// recorded, the user pages from the byte holding its first bit onwards are
// pinned for writing (at most 512 pages at a time) and the bits are set in
// them. A failed pin drops the bits silently, and a record that runs past the
// end of the bitmap sets the bits that fall in the pages already pinned.
import { isErrno } from '../uapi/errno.js';
import type { Emulator } from './emulator.js';
import { getUserPages, PAGE_SIZE, type UserMemory } from './usermem.js';

const PS = BigInt(PAGE_SIZE);
const BITS_PER_PAGE = BigInt(PAGE_SIZE * 8);
/** pin_user_pages_fast() is asked for at most the page pointers a page holds. */
const MAX_PIN_PAGES = PAGE_SIZE / 8;
const U64 = (1n << 64n) - 1n;

/** The pinned window: bit 0 of the first pinned page stands for `iova` (minus `pgoff` bytes). */
interface Mapped {
  iova: bigint;
  length: bigint;
  /** Byte offset of the window's first bitmap byte in its first page. */
  pgoff: bigint;
  npages: number;
  /** User address of the first pinned page. */
  page0: bigint;
}

function ffs(v: bigint): bigint {
  let s = 0n;
  while (v && !(v & 1n)) {
    v >>= 1n;
    s++;
  }
  return s;
}

export class IovaBitmap {
  private readonly pgshift: bigint;
  /** Bytes of bitmap (u8 granules) the whole range needs. */
  private readonly totalIndex: bigint;
  private baseIndex = 0n;
  private mapped: Mapped | null = null;
  /** Bitmap pages with bits set and not yet stored: their bytes, and the span [lo, hi) changed. */
  private readonly pending = new Map<bigint, { bytes: Uint8Array; lo: number; hi: number }>();

  /** iova_bitmap_alloc: the structure and its page-pointer page are the only allocations. */
  constructor(emu: Emulator, private readonly mem: UserMemory, private readonly iova: bigint,
    private readonly length: bigint, pageSize: bigint, private readonly data: bigint) {
    emu.allocPoint(); // the iova_bitmap structure
    this.pgshift = ffs(pageSize);
    this.totalIndex = (((length - 1n) & U64) >> this.pgshift) / 8n + 1n;
  }

  /** Pin the window starting at byte baseIndex of the bitmap (iova_bitmap_get). */
  private get(): boolean {
    const addr = (this.data + this.baseIndex) & U64;
    const inPage = addr % PS;
    let npages = Number((this.totalIndex - this.baseIndex + PS - 1n) / PS) + (inPage ? 1 : 0);
    if (npages > MAX_PIN_PAGES) npages = MAX_PIN_PAGES;
    const page0 = addr - inPage;
    // pin_user_pages_fast(FOLL_WRITE): as many pages as can be pinned; none at all is EFAULT.
    let pinned = 0;
    for (; pinned < npages; pinned++) {
      try {
        getUserPages(this.mem, page0 + BigInt(pinned) * PS, 1, true);
      } catch (e) {
        if (!isErrno(e)) throw e;
        break;
      }
    }
    if (pinned === 0) return false;
    const iova = this.iova + ((this.baseIndex * 8n) << this.pgshift);
    const bytes = BigInt(pinned) * PS - inPage;
    let remainingIdx = this.totalIndex - this.baseIndex;
    if (bytes < remainingIdx) remainingIdx = bytes;
    let remaining = (remainingIdx * 8n) << this.pgshift;
    const maxIova = this.iova + this.length - 1n;
    if (iova + remaining - 1n > maxIova) remaining -= (iova + remaining - 1n) - maxIova;
    this.mapped = { iova, length: remaining, pgoff: inPage, npages: pinned, page0 };
    return true;
  }

  private advanceTo(iova: bigint): boolean {
    const index = ((iova - this.iova) >> this.pgshift) / 8n;
    if (index >= this.totalIndex) return false;
    this.flush(); // iova_bitmap_put of the old window
    this.baseIndex = index;
    this.mapped = null;
    return this.get();
  }

  private inMapped(iova: bigint, length: bigint): boolean {
    const m = this.mapped;
    return !!m && m.npages > 0 && iova >= m.iova && iova + length - 1n <= m.iova + m.length - 1n;
  }

  /** iova_bitmap_set: mark [iova, iova + length) dirty. */
  set(iova: bigint, length: bigint): void {
    for (;;) {
      if (!this.inMapped(iova, length) && !this.advanceTo(iova)) return;
      const m = this.mapped!;
      const lastPage = BigInt(m.npages - 1);
      let cur = ((iova - m.iova) >> this.pgshift) + m.pgoff * 8n;
      const last = ((iova + length - 1n - m.iova) >> this.pgshift) + m.pgoff * 8n;
      let again = false;
      do {
        const pageIdx = cur / BITS_PER_PAGE;
        const offset = cur % BITS_PER_PAGE;
        const rest = last - cur + 1n;
        const nbits = BITS_PER_PAGE - offset < rest ? BITS_PER_PAGE - offset : rest;
        if (pageIdx > lastPage) {
          const left = rest << this.pgshift;
          iova += length - left;
          length = left;
          again = true;
          break;
        }
        this.setBits(m.page0 + pageIdx * PS, offset, nbits);
        cur += nbits;
      } while (cur <= last);
      if (!again) return;
    }
  }

  /**
   * Set `nbits` bits from bit `offset` of the (pinned, writable) page at `page`.
   * The kernel sets them in the pinned page itself; here each touched page is read
   * once and written back by flush() (the caller is inside its ioctl meanwhile), not
   * read and written again for every dirty IOPTE.
   */
  private setBits(page: bigint, offset: bigint, nbits: bigint): void {
    let p = this.pending.get(page);
    if (!p) {
      p = { bytes: this.mem.read(page, PAGE_SIZE), lo: PAGE_SIZE, hi: 0 };
      this.pending.set(page, p);
    }
    const first = Number(offset);
    const end = first + Number(nbits);
    const b = p.bytes;
    for (let bit = first; bit < end; bit++) b[bit >> 3] = b[bit >> 3]! | (1 << (bit & 7));
    if (first >> 3 < p.lo) p.lo = first >> 3;
    if (((end - 1) >> 3) + 1 > p.hi) p.hi = ((end - 1) >> 3) + 1;
  }

  /** Store the bits set so far (iova_bitmap_free: the pinned pages already hold them). */
  flush(): void {
    for (const [page, p] of this.pending) {
      try {
        this.mem.write(page + BigInt(p.lo), p.bytes.subarray(p.lo, p.hi));
      } catch (e) {
        if (!isErrno(e)) throw e; // unmapped since it was pinned: nothing to store it in
      }
    }
    this.pending.clear();
  }
}
