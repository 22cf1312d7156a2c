// Fault injection as the kernel's framework has it (lib/fault-inject.c and its users): one
// per-task fail-nth counter that every evaluated failure point of every enabled kind counts
// down, the N-th firing. The kinds are the kernel's: slab allocations (failslab), page
// allocations (fail_page_alloc), user copies (fail_usercopy) and iommufd's own points
// (fail_iommufd, its object lookups and page-pinning checks). The debugfs switches that decide
// whether an allocation is a point at all on the fail-nth path are honoured: failslab and
// fail_page_alloc ignore-gfp-wait (allocations that may sleep are not points, the default),
// fail_page_alloc ignore-gfp-highmem and min-order, failslab cache-filter (no cache of ours is
// marked for injection). Probability, interval, times and task-filter only gate the random
// injection the kernel does when no fail-nth value is armed, which is not emulated: with
// fail-nth armed the kernel skips them, as here.
import { fail, type ErrnoName } from '../uapi/errno.js';

/** What an allocation may do: sleep (GFP_KERNEL, __GFP_DIRECT_RECLAIM set) or not (GFP_NOWAIT, GFP_ATOMIC). */
export type Gfp = 'kernel' | 'nowait';

/** The debugfs switches of the fault attributes that matter on the fail-nth path. */
export interface FaultSettings {
  /** failslab/ignore-gfp-wait: allocations that may sleep are not points. Kernel default true. */
  slabIgnoreGfpWait: boolean;
  /** failslab/cache-filter: only caches created with SLAB_FAILSLAB are points. Default false. */
  slabCacheFilter: boolean;
  /** fail_page_alloc/ignore-gfp-wait. Default true. */
  pageIgnoreGfpWait: boolean;
  /** fail_page_alloc/ignore-gfp-highmem. Default true. */
  pageIgnoreGfpHighmem: boolean;
  /** fail_page_alloc/min-order: smaller allocations are not points. Default 1. */
  pageMinOrder: number;
}

/** A booted kernel's values (mm/failslab.c, mm/fail_page_alloc.c). */
export const KERNEL_DEFAULTS: Readonly<FaultSettings> = Object.freeze({
  slabIgnoreGfpWait: true, slabCacheFilter: false, pageIgnoreGfpWait: true, pageIgnoreGfpHighmem: true, pageMinOrder: 1,
});

/** What the iommufd_fail_nth selftest writes before it sweeps: any allocation may fail. */
export const FAIL_NTH_SELFTEST: Readonly<FaultSettings> = Object.freeze({
  ...KERNEL_DEFAULTS, slabIgnoreGfpWait: false, pageIgnoreGfpWait: false, pageIgnoreGfpHighmem: false,
});

/**
 * The settings as bits (the wire carries them with each armed call): bit 0 slab
 * ignore-gfp-wait, 1 slab cache-filter, 2 page ignore-gfp-wait, 3 page ignore-gfp-highmem,
 * bits 8..15 page min-order; bit 31 says the word is present (0 = the kernel's defaults).
 */
export const FAULT_BITS = { SLAB_WAIT: 1, SLAB_CACHE: 2, PAGE_WAIT: 4, PAGE_HIGHMEM: 8, MIN_ORDER_SHIFT: 8, PRESENT: 0x80000000 } as const;

export function settingsFromBits(bits: number): FaultSettings {
  if (!(bits & FAULT_BITS.PRESENT)) return { ...KERNEL_DEFAULTS };
  return {
    slabIgnoreGfpWait: !!(bits & FAULT_BITS.SLAB_WAIT),
    slabCacheFilter: !!(bits & FAULT_BITS.SLAB_CACHE),
    pageIgnoreGfpWait: !!(bits & FAULT_BITS.PAGE_WAIT),
    pageIgnoreGfpHighmem: !!(bits & FAULT_BITS.PAGE_HIGHMEM),
    pageMinOrder: (bits >>> FAULT_BITS.MIN_ORDER_SHIFT) & 0xff,
  };
}

export function settingsToBits(s: FaultSettings): number {
  return (FAULT_BITS.PRESENT | (s.slabIgnoreGfpWait ? FAULT_BITS.SLAB_WAIT : 0) | (s.slabCacheFilter ? FAULT_BITS.SLAB_CACHE : 0)
    | (s.pageIgnoreGfpWait ? FAULT_BITS.PAGE_WAIT : 0) | (s.pageIgnoreGfpHighmem ? FAULT_BITS.PAGE_HIGHMEM : 0)
    | ((s.pageMinOrder & 0xff) << FAULT_BITS.MIN_ORDER_SHIFT)) >>> 0;
}

export class FaultInjection {
  /** The calling task's fail-nth counter (0 = off). */
  nth = 0;
  settings: FaultSettings = { ...KERNEL_DEFAULTS };

  /** should_fail_ex() on the fail-nth path: count down, fire at zero. */
  private fire(): boolean {
    return this.nth > 0 && --this.nth === 0;
  }

  /** Whether a slab allocation (kmalloc, kmem_cache_alloc) fails. */
  slab(gfp: Gfp = 'kernel'): boolean {
    if (this.nth === 0) return false;
    if (gfp === 'kernel' && this.settings.slabIgnoreGfpWait) return false;
    if (this.settings.slabCacheFilter) return false;
    return this.fire();
  }

  /** Whether a page allocation of 2^order pages fails. */
  pages(order: number, gfp: Gfp = 'kernel', highmem = false): boolean {
    if (this.nth === 0 || order < this.settings.pageMinOrder) return false;
    if (highmem && this.settings.pageIgnoreGfpHighmem) return false;
    if (gfp === 'kernel' && this.settings.pageIgnoreGfpWait) return false;
    return this.fire();
  }

  /** Whether a user copy (copy_from_user, copy_to_user, strncpy_from_user) fails. */
  usercopy(): boolean {
    return this.fire();
  }

  /** iommufd_should_fail(): iommufd's own points. */
  iommufd(): boolean {
    return this.fire();
  }

  // ---- the points as statements: fail the call the way the kernel's caller does ----

  /** A slab allocation whose failure the caller returns as ENOMEM (or `code`). */
  alloc(gfp: Gfp = 'kernel', code: ErrnoName = 'ENOMEM'): void {
    if (this.slab(gfp)) fail(code, 'fault injection: slab allocation');
  }

  /** A user copy: EFAULT. */
  copy(): void {
    if (this.usercopy()) fail('EFAULT', 'fault injection: user copy');
  }

  /** One of iommufd's own points, failing with `code`. */
  iommufdPoint(code: ErrnoName): void {
    if (this.iommufd()) fail(code, 'fault injection: iommufd_should_fail');
  }

  /**
   * xas_store() needing `nodes` new xarray nodes: each is first allocated under the lock
   * without sleeping; when that fails the lock is dropped and the node allocated with the
   * caller's gfp (xas_nomem), whose failure is the caller's ENOMEM.
   */
  xaNodes(nodes: number, gfp: Gfp = 'kernel'): void {
    for (let i = 0; i < nodes; i++) if (this.slab('nowait')) this.alloc(gfp);
  }

  /** xa_store() of index `i` into the array shaped `xa` (its node allocations), then the store. */
  xaStore(xa: XaShape, i: number, gfp: Gfp = 'kernel'): void {
    this.xaNodes(xa.newNodes(i), gfp);
    xa.store(i);
  }

  /** A page allocation of 2^order pages whose failure the caller returns as ENOMEM. */
  allocPages(order = 0, gfp: Gfp = 'kernel'): void {
    if (this.pages(order, gfp)) fail('ENOMEM', 'fault injection: page allocation');
  }
}

const XA_CHUNK = 64;
const XA_LEVELS = 6; // enough for 32-bit indices

/** Levels of xarray nodes an array whose largest index is `max` needs (0: empty or only index 0). */
function xaHeight(max: number): number {
  let h = 0;
  for (let span = 1; max >= span; span *= XA_CHUNK) h++;
  return h;
}

/**
 * The node shape of an xarray (lib/xarray.c), to know how many nodes a store allocates:
 * the nodes are exactly those covering a present index (empty nodes are freed), over a
 * height set by the largest index.
 */
export class XaShape {
  /** Present indices under each node, per level (1 = leaf): prefix -> count. */
  private readonly levels: Map<number, number>[] = Array.from({ length: XA_LEVELS }, () => new Map());
  private max = -1;
  private count = 0;

  /** Nodes a store at `i` would allocate now. */
  newNodes(i: number): number {
    if (this.has(i)) return 0;
    const h = this.max > 0 ? xaHeight(this.max) : 0;
    const h2 = Math.max(h, xaHeight(i));
    let n = 0;
    for (let level = 1, span = XA_CHUNK; level <= h2; level++, span *= XA_CHUNK) {
      const prefix = Math.floor(i / span);
      if (level > h || !this.levels[level - 1]!.has(prefix)) n++;
      // Growing the tree (xas_expand) stacks new nodes over the old top along index 0's
      // path; where `i` leaves that path below the new top, those are nodes of their own.
      if (level > h && level < h2 && prefix !== 0 && (h > 0 || this.present.has(0))) n++;
    }
    return n;
  }

  has(i: number): boolean {
    return this.present.has(i);
  }

  private readonly present = new Set<number>();

  store(i: number): void {
    if (this.present.has(i)) return;
    this.present.add(i);
    this.count++;
    for (let level = 1, span = XA_CHUNK; level <= XA_LEVELS; level++, span *= XA_CHUNK) {
      const m = this.levels[level - 1]!;
      const p = Math.floor(i / span);
      m.set(p, (m.get(p) ?? 0) + 1);
    }
    if (i > this.max) this.max = i;
  }

  erase(i: number): void {
    if (!this.present.delete(i)) return;
    this.count--;
    for (let level = 1, span = XA_CHUNK; level <= XA_LEVELS; level++, span *= XA_CHUNK) {
      const m = this.levels[level - 1]!;
      const p = Math.floor(i / span);
      const c = m.get(p)! - 1;
      if (c) m.set(p, c);
      else m.delete(p);
    }
    if (i === this.max) {
      this.max = -1;
      if (this.count) {
        // The largest leaf node's largest index.
        const leaf = Math.max(...this.levels[0]!.keys());
        for (let j = leaf * XA_CHUNK + XA_CHUNK - 1; j >= leaf * XA_CHUNK; j--) {
          if (this.present.has(j)) {
            this.max = j;
            break;
          }
        }
      }
    }
  }
}
