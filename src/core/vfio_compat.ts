// VFIO type1 container requests on the iommufd fd (01 §4.22, 05 §5): they act
// on the context's compat IOAS (IOMMU_VFIO_IOAS). Requests that are not
// recognised give ENOTTY.
import { fail } from '../uapi/errno.js';
import { VFIO } from '../uapi/ioctls.js';
import { IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE } from '../drivers/driver.js';
import type { Caller, IommufdCtx } from './context.js';
import { U64_MAX } from './io_pagetable.js';
import { getCompatIoas, mapUserPages, type Ioas } from './ioas.js';
import { PAGE_SIZE } from './usermem.js';

const PS = BigInt(PAGE_SIZE);
/** sizeof(struct vfio_iommu_type1_info) and the end of iova_pgsizes (its minimum argsz). */
const INFO_SIZE = 24;
const INFO_MINSZ = 16;
const MAP_MINSZ = 32;
const UNMAP_MINSZ = 24;

function u32(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, true);
}
function u64(b: Uint8Array, off: number): bigint {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(off, true);
}

function readUser(ctx: IommufdCtx, caller: Caller, arg: bigint, n: number): Uint8Array {
  ctx.emu.copyPoint();
  return caller.mem.read(arg, n);
}

/** A minimal ucmd-like view so the shared map helper can be used from here. */
function pseudoUcmd(ctx: IommufdCtx, caller: Caller): any {
  return { ctx, emu: ctx.emu, mem: caller.mem, caller };
}

/** DMA_CC_IOMMU: 1 when every HWPT of the compat IOAS enforces cache coherency. */
function ccIommu(ctx: IommufdCtx): number {
  const ioas = getCompatIoas(ctx);
  for (const hwpt of ioas.hwptList) {
    const enforce = hwpt?.enforceCacheCoherency ?? hwpt?.domain?.enforceCacheCoherency;
    if (!enforce) return 0;
  }
  return 1;
}

function checkExtension(ctx: IommufdCtx, type: number): number {
  switch (type) {
    case VFIO.TYPE1_IOMMU:
    case VFIO.TYPE1v2_IOMMU:
    case VFIO.UNMAP_ALL:
      return 1;
    case VFIO.NOIOMMU_IOMMU:
      return 0;
    case VFIO.DMA_CC_IOMMU:
      return ccIommu(ctx);
    default:
      return 0;
  }
}

function setIommu(ctx: IommufdCtx, type: number): number {
  if (type !== VFIO.TYPE1_IOMMU && type !== VFIO.TYPE1v2_IOMMU) fail('EINVAL', 'VFIO_SET_IOMMU: only TYPE1 and TYPE1v2');
  const ioas = getCompatIoas(ctx);
  // Type1 (v1) may unmap inside a mapping: only possible without large IOPTEs.
  if (type === VFIO.TYPE1_IOMMU) ioas.iopt.disableLargePages();
  return 0;
}

function mapDma(ctx: IommufdCtx, arg: bigint, caller: Caller): number {
  const b = readUser(ctx, caller, arg, MAP_MINSZ);
  const argsz = u32(b, 0);
  const flags = u32(b, 4);
  if (argsz < MAP_MINSZ || (flags & ~(VFIO.DMA_MAP_FLAG_READ | VFIO.DMA_MAP_FLAG_WRITE))) fail('EINVAL', 'VFIO_IOMMU_MAP_DMA: argsz too small or unknown flags');
  let prot = IOMMU_CACHE;
  if (flags & VFIO.DMA_MAP_FLAG_READ) prot |= IOMMU_READ;
  if (flags & VFIO.DMA_MAP_FLAG_WRITE) prot |= IOMMU_WRITE;
  const ioas = getCompatIoas(ctx);
  mapUserPages(pseudoUcmd(ctx, caller), ioas, u64(b, 8), u64(b, 24), u64(b, 16), prot);
  return 0;
}

function unmapDma(ctx: IommufdCtx, arg: bigint, caller: Caller): number {
  const b = readUser(ctx, caller, arg, UNMAP_MINSZ);
  const argsz = u32(b, 0);
  const flags = u32(b, 4);
  const iova = u64(b, 8);
  const size = u64(b, 16);
  if (argsz < UNMAP_MINSZ || (flags & ~VFIO.DMA_UNMAP_FLAG_ALL)) fail('EINVAL', 'VFIO_IOMMU_UNMAP_DMA: argsz too small or unknown flags');
  const ioas: Ioas = getCompatIoas(ctx);
  let unmapped = 0n;
  let error: string | undefined;
  if (flags & VFIO.DMA_UNMAP_FLAG_ALL) {
    if (iova !== 0n || size !== 0n) fail('EINVAL', 'VFIO_IOMMU_UNMAP_DMA: UNMAP_ALL needs iova and size 0');
    const r = ioas.iopt.unmapAll();
    unmapped = r.unmapped;
    error = r.error;
  } else {
    if (ioas.iopt.hugePagesDisabled) {
      // v1: cut the areas at both ends of the range first (no cut below IOVA 0).
      const cuts = [(iova + size - 1n) & U64_MAX, (iova - 1n) & U64_MAX];
      ioas.iopt.cut(iova ? cuts : cuts.slice(0, 1));
    }
    if (size === 0n) {
      error = 'EINVAL';
    } else if (iova + size - 1n > U64_MAX) {
      error = 'EOVERFLOW';
    } else {
      const r = ioas.iopt.unmapRange(iova, iova + size - 1n);
      unmapped = r.unmapped;
      error = r.error;
    }
  }
  // size = bytes unmapped, written back even when the walk stopped on an error.
  const out = new Uint8Array(b);
  new DataView(out.buffer).setBigUint64(16, unmapped, true);
  ctx.emu.copyPoint();
  caller.mem.write(arg, out);
  if (error) fail(error as 'EINVAL', 'VFIO_IOMMU_UNMAP_DMA: the range cannot be unmapped');
  return 0;
}

/** iova_pgsizes: AND of the domains' page sizes (sub-page sizes folded into PAGE_SIZE), at least the alignment. */
function pageSizes(ioas: Ioas): bigint {
  let bm = U64_MAX;
  for (const d of ioas.iopt.domains) bm &= d.pgsizeBitmap;
  if (bm & (PS - 1n)) {
    bm &= ~(PS - 1n) & U64_MAX;
    bm |= PS;
  }
  const align = ioas.iopt.iovaAlignment;
  return bm > align ? bm : align;
}

function getInfo(ctx: IommufdCtx, arg: bigint, caller: Caller): number {
  const b = readUser(ctx, caller, arg, INFO_MINSZ);
  const argsz = u32(b, 0);
  if (argsz < INFO_MINSZ) fail('EINVAL', 'VFIO_IOMMU_GET_INFO: argsz too small');
  const minsz = Math.min(argsz, INFO_SIZE);
  const ioas = getCompatIoas(ctx);
  const mem = caller.mem;
  const put = (off: number, bytes: Uint8Array): void => {
    ctx.emu.copyPoint();
    mem.write(arg + BigInt(off), bytes);
  };
  const putU32 = (off: number, v: number): void => {
    const x = new Uint8Array(4);
    new DataView(x.buffer).setUint32(0, v, true);
    put(off, x);
  };

  // Capability 1: DMA_AVAIL (12 bytes, padded to 16).
  const fillDmaAvail = (at: number, avail: number): number => {
    const size = 12;
    if (avail >= size) {
      const x = new Uint8Array(size);
      const dv = new DataView(x.buffer);
      dv.setUint16(0, VFIO.CAP_DMA_AVAIL, true);
      dv.setUint16(2, 1, true);
      dv.setUint32(8, 0xffffffff, true);
      put(at, x);
    }
    return size;
  };
  // Capability 2: IOVA_RANGE (16-byte header + 16 per range), entries written as they fit.
  const fillIova = (at: number, avail: number): number => {
    const ranges = ioas.iopt.usableRanges();
    let n = 0;
    for (const [start, last] of ranges) {
      if (avail >= 16 + 16 * (n + 1)) {
        const x = new Uint8Array(16);
        const dv = new DataView(x.buffer);
        dv.setBigUint64(0, start, true);
        dv.setBigUint64(8, last, true);
        put(at + 16 + 16 * n, x);
      }
      n++;
    }
    if (avail >= 16 + 16 * n) {
      const x = new Uint8Array(16);
      const dv = new DataView(x.buffer);
      dv.setUint16(0, VFIO.CAP_IOVA_RANGE, true);
      dv.setUint16(2, 1, true);
      dv.setUint32(8, n, true);
      put(at, x);
    }
    return 16 + 16 * n;
  };

  let total = INFO_SIZE;
  let lastCap = -1;
  for (const fill of [fillDmaAvail, fillIova]) {
    const avail = argsz > total ? argsz - total : 0;
    const size = Math.ceil(fill(total, avail) / 8) * 8;
    if (lastCap >= 0 && argsz >= total) putU32(lastCap + 4, total);
    lastCap = total;
    total += size;
  }
  const info = new Uint8Array(INFO_SIZE);
  const dv = new DataView(info.buffer);
  dv.setUint32(0, total, true);
  dv.setUint32(4, VFIO.INFO_FLAGS_PGSIZES | VFIO.INFO_CAPS, true);
  dv.setBigUint64(8, pageSizes(ioas), true);
  dv.setUint32(16, argsz >= total ? INFO_SIZE : 0, true);
  put(0, info.subarray(0, minsz));
  return 0;
}

/** The VFIO container ioctl on an iommufd: returns the ioctl's value or throws the errno. */
export function vfioCompatIoctl(ctx: IommufdCtx, request: number, arg: bigint, caller: Caller): number {
  switch (request >>> 0) {
    case VFIO.GET_API_VERSION:
      return VFIO.API_VERSION;
    case VFIO.CHECK_EXTENSION:
      return checkExtension(ctx, arg > 0xffffffffn ? -1 : Number(arg));
    case VFIO.SET_IOMMU:
      return setIommu(ctx, arg > 0xffffffffn ? -1 : Number(arg));
    case VFIO.IOMMU_GET_INFO:
      return getInfo(ctx, arg, caller);
    case VFIO.IOMMU_MAP_DMA:
      return mapDma(ctx, arg, caller);
    case VFIO.IOMMU_UNMAP_DMA:
      return unmapDma(ctx, arg, caller);
    default:
      fail('ENOTTY', 'not a VFIO container ioctl');
  }
}
