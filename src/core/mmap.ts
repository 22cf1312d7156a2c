// mmap of /dev/iommu: driver MMIO regions registered per context (01 §5.8).
import { fail } from '../uapi/errno.js';
import type { IommufdCtx } from './context.js';
import { refget, refput, type IommufdObject } from './object.js';
import { PAGE_SIZE, type PhysPage } from './usermem.js';

interface Region {
  readonly offset: bigint;
  readonly length: bigint;
  readonly owner: IommufdObject;
  readonly pages: PhysPage[];
}

const KEY = 'mmap';

function regions(ctx: IommufdCtx): Region[] {
  let r = ctx.ext.get(KEY) as Region[] | undefined;
  if (!r) ctx.ext.set(KEY, (r = []));
  return r;
}

/** Register `pages` as a region owned by `owner`; offsets are allocated lowest-fit from PAGE_SIZE. */
export function registerMmap(ctx: IommufdCtx, owner: IommufdObject, pages: PhysPage[]): bigint {
  if (pages.length === 0) fail('EINVAL');
  ctx.emu.failPoint('ENOMEM');
  const list = regions(ctx);
  const length = BigInt(pages.length * PAGE_SIZE);
  let offset = BigInt(PAGE_SIZE);
  for (const r of list) {
    if (offset + length <= r.offset) break;
    offset = r.offset + r.length > offset ? r.offset + r.length : offset;
  }
  list.push({ offset, length, owner, pages });
  list.sort((a, b) => (a.offset < b.offset ? -1 : 1));
  return offset;
}

export function unregisterMmaps(ctx: IommufdCtx, owner: IommufdObject): void {
  const list = regions(ctx);
  for (let i = list.length - 1; i >= 0; i--) if (list[i]!.owner === owner) list.splice(i, 1);
}

export const MAP_SHARED = 0x01;
export const PROT_EXEC = 0x4;

export interface MmapHandle {
  readonly pages: PhysPage[];
  /** A VMA piece of this mapping is gone (munmap): drops its reference on the owner (and on the context). */
  close(): void;
  /**
   * A new VMA piece of this mapping (vm_ops->open: split, mremap, fork): it
   * holds references of its own, released by its own close().
   */
  open(): MmapHandle;
}

/** mmap(fd, offset, length): exact region only; holds the owner and the context until close. */
export function iommufdMmap(ctx: IommufdCtx, offset: bigint, length: bigint, flags: number, prot: number): MmapHandle {
  if (length % BigInt(PAGE_SIZE) !== 0n || length === 0n) fail('EINVAL');
  if (!(flags & MAP_SHARED)) fail('EINVAL');
  if (prot & PROT_EXEC) fail('EPERM');
  const r = regions(ctx).find((x) => x.offset === offset && x.length === length);
  if (!r || r.owner.users === 0) fail('ENXIO');
  return piece(ctx, r);
}

/** One VMA's references: the owner (iommufd_fops_vma_open/close) and the file, i.e. the context. */
function piece(ctx: IommufdCtx, r: Region): MmapHandle {
  refget(r.owner);
  ctx.ref();
  let open = true;
  return {
    pages: r.pages,
    close() {
      if (!open) return;
      open = false;
      refput(r.owner);
      ctx.put();
    },
    open: () => piece(ctx, r),
  };
}
