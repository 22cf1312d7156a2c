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

  /** Set `nbits` bits from bit `offset` of the (pinned, writable) page at `page`. */
  private setBits(page: bigint, offset: bigint, nbits: bigint): void {
    const firstByte = offset / 8n;
    const lastByte = (offset + nbits - 1n) / 8n;
    const n = Number(lastByte - firstByte + 1n);
    const addr = page + firstByte;
    const b = this.mem.read(addr, n);
    for (let bit = offset; bit < offset + nbits; bit++) {
      const i = Number(bit / 8n - firstByte);
      b[i] = b[i]! | (1 << Number(bit % 8n));
    }
    this.mem.write(addr, b);
  }
}
