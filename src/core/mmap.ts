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
  if (pages.length === 0) fail('EINVAL', 'a region needs pages');
  ctx.emu.allocPoint();
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
export const MAP_PRIVATE = 0x02;
export const MAP_SHARED_VALIDATE = 0x03;
export const MAP_TYPE = 0x0f;
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
  if (!ctx.profile.iommufdMmap) {
    // The file has no mmap operation: do_mmap() checks the mapping type, then answers ENODEV.
    const type = flags & MAP_TYPE;
    if (type !== MAP_SHARED && type !== MAP_PRIVATE && type !== MAP_SHARED_VALIDATE) fail('EINVAL', 'mmap: no mapping type');
    fail('ENODEV', 'mmap: /dev/iommu of this kernel has no mmap');
  }
  if (length % BigInt(PAGE_SIZE) !== 0n || length === 0n) fail('EINVAL', 'mmap: length is 0 or not a multiple of PAGE_SIZE');
  if (!(flags & MAP_SHARED)) fail('EINVAL', 'mmap: only MAP_SHARED mappings');
  if (prot & PROT_EXEC) fail('EPERM', 'mmap: PROT_EXEC is refused');
  const r = regions(ctx).find((x) => x.offset === offset && x.length === length);
  if (!r || r.owner.users === 0) fail('ENXIO', 'mmap: no region at this offset and length');
  return piece(ctx, r);
}

/** One VMA piece's references (iommufd_fops_vma_open/close): the owner, and the file, i.e. the context. */
function piece(ctx: IommufdCtx, r: Region): MmapHandle {
  const { offset, length } = r;
  let open = true;
  const bus = ctx.emu.bus;
  const handle: MmapHandle & { readonly label: string } = {
    label: 'mmap',
    pages: r.pages,
    close() {
      if (!open) return;
      open = false;
      if (bus.on) bus.emit({ t: 'mmap', op: 'unmap', ctx: ctx.seq, owner: r.owner.id, offset, length });
      refput(r.owner, handle, 'mmap');
      ctx.put();
    },
    open: () => piece(ctx, r),
  };
  refget(r.owner, handle, 'mmap');
  ctx.ref();
  if (bus.on) bus.emit({ t: 'mmap', op: 'map', ctx: ctx.seq, owner: r.owner.id, offset, length });
  return handle;
}
