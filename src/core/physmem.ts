// Physical memory of the emulated machine. Every page the emulator models
// (simulated memory, client processes' memory, driver-owned pages) takes its
// frame number from one pfn space, so a physical address names one page.
// Devices doing DMA and IOMMU table walkers reach pages by physical address;
// the pages they can reach are the ones pinned by a pages object (all that an
// IOMMU domain ever maps) and the ones a driver registers (its own tables).
import { HPAGE_SIZE, PAGE_SIZE, type PhysPage } from './usermem.js';

const PAGES_PER_HUGE = HPAGE_SIZE / PAGE_SIZE;

/** Page frame numbers, never reused; huge pages are naturally aligned runs of 512. */
export class PfnSpace {
  private next = 0x100000; // above 4 GiB, so 0 is never a valid physical address
  one(): number {
    return this.next++;
  }
  /**
   * A 4 KiB page of user memory. The kernel's page allocator hands out separately faulted
   * pages that are, in practice, never physically adjacent (IOMMU page tables then map them
   * with 4 KiB entries): a frame is left out after each.
   */
  userPage(): number {
    const pfn = this.next;
    this.next += 2;
    return pfn;
  }
  /** `n` physically contiguous small frames (a buffer from a contiguous allocator); returns the first. */
  run(n: number): number {
    const base = this.next;
    this.next += n + 1;
    return base;
  }
  huge(): number {
    this.next = Math.ceil(this.next / PAGES_PER_HUGE) * PAGES_PER_HUGE;
    const base = this.next;
    this.next += PAGES_PER_HUGE;
    return base;
  }
}

/** The one pfn space of this process (a machine has one physical address space). */
export const PFNS = new PfnSpace();

/** Physical pages by pfn: what DMA and table walks can reach. */
export class PhysMemory {
  private readonly pages = new Map<number, { page: PhysPage; refs: number }>();

  /** Make `page` reachable (counted: a pinned page and a driver may both add it). */
  add(page: PhysPage): void {
    const e = this.pages.get(page.pfn);
    if (e) e.refs++;
    else this.pages.set(page.pfn, { page, refs: 1 });
  }

  remove(page: PhysPage): void {
    const e = this.pages.get(page.pfn);
    if (!e) throw new Error(`physmem: remove of unknown pfn 0x${page.pfn.toString(16)}`);
    if (--e.refs === 0) this.pages.delete(page.pfn);
  }

  page(pfn: number): PhysPage | undefined {
    return this.pages.get(pfn)?.page;
  }

  /** Read `length` bytes at physical byte address `phys`; undefined when any byte has no page. */
  read(phys: number, length: number): Uint8Array | undefined {
    const out = new Uint8Array(length);
    return this.span(phys, length, (p, off, done, n) => out.set(p.read(off, n), done)) ? out : undefined;
  }

  /** Write `data` at `phys`; false (nothing written) when any byte has no page. */
  write(phys: number, data: Uint8Array): boolean {
    return this.span(phys, data.length, (p, off, done, n) => p.write(off, data.subarray(done, done + n)));
  }

  private span(phys: number, length: number, fn: (p: PhysPage, off: number, done: number, n: number) => void): boolean {
    const pages: PhysPage[] = [];
    for (let pfn = Math.floor(phys / PAGE_SIZE); length > 0 && pfn <= Math.floor((phys + length - 1) / PAGE_SIZE); pfn++) {
      const p = this.page(pfn);
      if (!p) return false;
      pages.push(p);
    }
    let done = 0;
    for (const p of pages) {
      const off = (phys + done) % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, length - done);
      fn(p, off, done, n);
      done += n;
    }
    return true;
  }
}

/** The machine's physical memory as devices see it. */
export const PHYS = new PhysMemory();
