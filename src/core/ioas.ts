// The IOAS object and the IOAS_* ioctls, IOMMU_OPTION and IOMMU_VFIO_IOAS
// (01 §4.2-4.11). Check orders follow the kernel of the selected profile.
import { fail } from '../uapi/errno.js';
import { MAP_FLAGS, MOCK, OPTION, VFIO_IOAS_OP } from '../uapi/enums.js';
import type { Decoded } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import { IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE } from '../drivers/driver.js';
import type { IommufdCtx, Ucmd } from './context.js';
import { IoPagetable, U64_MAX } from './io_pagetable.js';
import { IommufdObject, ObjType } from './object.js';
import { AccountMode, chargeLocked, Pages, unchargeLocked } from './pages.js';
import { DmaBuf } from './dmabuf.js';
import type { Emulator } from './emulator.js';
import type { FileBacking } from './usermem.js';

const MAP_ALL = MAP_FLAGS.FIXED_IOVA | MAP_FLAGS.WRITEABLE | MAP_FLAGS.READABLE;

export class Ioas extends IommufdObject {
  readonly type = ObjType.IOAS;
  readonly iopt: IoPagetable;
  /**
   * The HWPT_PAGING objects built on this IOAS, in creation order (owned by
   * hwpt.ts: it adds/removes entries and walks the list to find a compatible
   * auto-domain on attach, 01 §5.4). Typed loosely to avoid an import cycle.
   */
  hwptList: any[] = [];

  constructor(readonly ctx: IommufdCtx) {
    super();
    this.iopt = new IoPagetable(ctx.emu);
    this.iopt.owner = this;
  }

  /** Destroying an IOAS unmaps everything it still has (nothing else can hold it by then). */
  destroy(): void {
    this.iopt.destroy();
  }
}

/** The `ioas` trace event of a successful map, map_file, copy (src: the source) or unmap. */
function ioasEvent(ucmd: Ucmd<any>, op: 'map' | 'map_file' | 'copy' | 'unmap', ioas: Ioas, iova: bigint, length: bigint,
  src?: Ioas, srcIova?: bigint): void {
  const bus = ucmd.emu.bus;
  if (bus.on) bus.emit({ t: 'ioas', op, ctx: ucmd.ctx.seq, ioas: ioas.id, iova, length, src: src?.id, srcIova });
}

/** Look up an IOAS by ID (ENOENT). */
export function getIoas(ctx: IommufdCtx, id: number): Ioas {
  return ctx.get<Ioas>(id, ObjType.IOAS);
}

/** IOMMU_IOAS_MAP_* flags → IOMMU_READ/WRITE, always cache-coherent. */
export function convIommuProt(flags: number): number {
  let prot = IOMMU_CACHE;
  if (flags & MAP_FLAGS.READABLE) prot |= IOMMU_READ;
  if (flags & MAP_FLAGS.WRITEABLE) prot |= IOMMU_WRITE;
  return prot;
}

/** New pages objects follow the context's RLIMIT_MODE (CAP_IPC_LOCK callers stay uncharged). */
export function applyAccountMode(ctx: IommufdCtx, pages: Pages): void {
  if (ctx.accountMode === 1 && pages.accountMode === AccountMode.USER) pages.accountMode = AccountMode.MM;
}

/** Map `length` bytes of the caller's memory at `uptr` (IOAS_MAP, VFIO MAP_DMA). */
export function mapUserPages(ucmd: Ucmd<any>, ioas: Ioas, uptr: bigint, length: bigint, iova: bigint | null,
  prot: number): bigint {
  const pages = Pages.user(ucmd.emu, ucmd.mem, uptr, length, (prot & IOMMU_WRITE) !== 0);
  applyAccountMode(ucmd.ctx, pages);
  return ioas.iopt.mapPages([{ pages, startByte: BigInt(pages.startByte), length }], length, iova, prot);
}

/** Selftest syzkaller IOVA form: low u32 = n-th area, high u32 = offset (0 when there is no such area). */
export function syzConvIova(ioas: Ioas | null, iova: bigint): bigint {
  if (!ioas) return 0n;
  const nth = Number(iova & 0xffffffffn);
  const offset = (iova >> 32n) & 0xffffffffn;
  const area = ioas.iopt.nthArea(nth);
  return area ? area.iova + offset : 0n;
}

/** Copy a u64 back into the caller's struct at byte `off` (raw entry only). */
function putU64(ucmd: Ucmd<any>, off: number, v: bigint): void {
  const arg = ucmd.arg;
  if (!arg) return;
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  ucmd.emu.copyPoint();
  ucmd.mem.write(arg + BigInt(off), b);
}

// ---- IOMMU_IOAS_ALLOC (01 §4.2) ---------------------------------------------------------

export function iommufdIoasAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_alloc>>): void {
  const cmd = ucmd.cmd;
  if (cmd.flags) fail('EOPNOTSUPP', 'flags must be 0');
  const ctx = ucmd.ctx;
  ctx.createObj(new Ioas(ctx), (ioas) => {
    cmd.out_ioas_id = ioas.id;
    ucmd.respond();
  });
}

// ---- IOMMU_IOAS_ALLOW_IOVAS (01 §4.3) ----------------------------------------------------

export function iommufdIoasAllowIovas(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_allow_iovas>>): void {
  const cmd = ucmd.cmd;
  if (cmd.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
  const ioas = getIoas(ucmd.ctx, cmd.ioas_id);
  const b = IoPagetable.allowedBuilder(ucmd.emu);
  for (let i = 0; i < cmd.num_iovas; i++) {
    ucmd.emu.copyPoint();
    const raw = ucmd.mem.read(cmd.allowed_iovas + 16n * BigInt(i), 16);
    const dv = new DataView(raw.buffer, raw.byteOffset, 16);
    b.add(dv.getBigUint64(0, true), dv.getBigUint64(8, true));
  }
  ioas.iopt.setAllowed(b.tree);
}

// ---- IOMMU_IOAS_COPY (01 §4.4) -------------------------------------------------------------

export function iommufdIoasCopy(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_copy>>): void {
  const cmd = ucmd.cmd;
  const ctx = ucmd.ctx;
  if (ucmd.emu.selftest && (cmd.flags & MOCK.FLAGS_ACCESS_SYZ)) {
    cmd.flags = (cmd.flags & ~MOCK.FLAGS_ACCESS_SYZ) >>> 0;
    cmd.src_iova = syzConvIova(ctx.objects.find(cmd.src_ioas_id, ObjType.IOAS) as Ioas | undefined ?? null, cmd.src_iova);
  }
  if (cmd.flags & ~MAP_ALL) fail('EOPNOTSUPP', 'flags has bits other than FIXED_IOVA|WRITEABLE|READABLE');
  if (cmd.length >= U64_MAX || cmd.src_iova >= U64_MAX || cmd.dst_iova >= U64_MAX) fail('EOVERFLOW', 'length, src_iova or dst_iova is U64_MAX');
  if (!(cmd.flags & (MAP_FLAGS.WRITEABLE | MAP_FLAGS.READABLE))) fail('EINVAL', 'neither READABLE nor WRITEABLE');
  const src = getIoas(ctx, cmd.src_ioas_id);
  const segs = src.iopt.getPages(cmd.src_iova, cmd.length);
  const dst = getIoas(ctx, cmd.dst_ioas_id);
  const fixed = (cmd.flags & MAP_FLAGS.FIXED_IOVA) !== 0;
  cmd.dst_iova = dst.iopt.mapPages(segs, cmd.length, fixed ? cmd.dst_iova : null, convIommuProt(cmd.flags));
  ioasEvent(ucmd, 'copy', dst, cmd.dst_iova, cmd.length, src, cmd.src_iova);
  ucmd.respond();
}

// ---- IOMMU_IOAS_IOVA_RANGES (01 §4.5) ----------------------------------------------------------

export function iommufdIoasIovaRanges(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_iova_ranges>>): void {
  const cmd = ucmd.cmd;
  if (cmd.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
  const ioas = getIoas(ucmd.ctx, cmd.ioas_id);
  const max = cmd.num_iovas;
  cmd.num_iovas = 0;
  cmd.out_iova_alignment = ioas.iopt.iovaAlignment;
  for (const [start, last] of ioas.iopt.usableRanges()) {
    if (cmd.num_iovas < max) {
      const b = new Uint8Array(16);
      const dv = new DataView(b.buffer);
      dv.setBigUint64(0, start, true);
      dv.setBigUint64(8, last, true);
      ucmd.emu.copyPoint();
      ucmd.mem.write(cmd.allowed_iovas + 16n * BigInt(cmd.num_iovas), b);
    }
    cmd.num_iovas++;
  }
  ucmd.respond();
  if (cmd.num_iovas > max) fail('EMSGSIZE', 'num_iovas is smaller than the number of usable ranges (the count was copied back)');
}

// ---- IOMMU_IOAS_MAP (01 §4.6) -------------------------------------------------------------------

export function iommufdIoasMap(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_map>>): void {
  const cmd = ucmd.cmd;
  if ((cmd.flags & ~MAP_ALL) || cmd.__reserved) fail('EOPNOTSUPP', 'flags has unknown bits or __reserved is not 0');
  if (cmd.iova >= U64_MAX || cmd.length >= U64_MAX) fail('EOVERFLOW', 'iova or length is U64_MAX');
  if (!(cmd.flags & (MAP_FLAGS.WRITEABLE | MAP_FLAGS.READABLE))) fail('EINVAL', 'neither READABLE nor WRITEABLE');
  const ioas = getIoas(ucmd.ctx, cmd.ioas_id);
  const fixed = (cmd.flags & MAP_FLAGS.FIXED_IOVA) !== 0;
  cmd.iova = mapUserPages(ucmd, ioas, cmd.user_va, cmd.length, fixed ? cmd.iova : null, convIommuProt(cmd.flags));
  ioasEvent(ucmd, 'map', ioas, cmd.iova, cmd.length);
  // A failing copy-back leaves the mapping in place (the kernel does not undo it).
  ucmd.respond();
}

// ---- IOMMU_IOAS_MAP_FILE (01 §4.7) ----------------------------------------------------------------

export function iommufdIoasMapFile(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_map_file>>): void {
  const cmd = ucmd.cmd;
  if (cmd.flags & ~MAP_ALL) fail('EOPNOTSUPP', 'flags has bits other than FIXED_IOVA|WRITEABLE|READABLE');
  if (cmd.iova >= U64_MAX || cmd.length >= U64_MAX) fail('EOVERFLOW', 'iova or length is U64_MAX');
  if (!(cmd.flags & (MAP_FLAGS.WRITEABLE | MAP_FLAGS.READABLE))) fail('EINVAL', 'neither READABLE nor WRITEABLE');
  const ioas = getIoas(ucmd.ctx, cmd.ioas_id);
  if (cmd.length === 0n) fail('EINVAL', 'length is 0');
  if (cmd.start + cmd.length - 1n > U64_MAX) fail('EOVERFLOW', 'start + length wraps past 2^64');
  const mem = ucmd.mem;
  const prot = convIommuProt(cmd.flags);
  const writable = (prot & IOMMU_WRITE) !== 0;
  let pages: Pages;
  // dma_buf_get(fd) first (dma-bufs exist from 6.19 on); anything else is taken as a file (fget).
  const emulated = cmd.fd >= 0 ? ucmd.caller.fds.lookup(cmd.fd) : undefined;
  if (emulated instanceof DmaBuf) {
    pages = Pages.dmabuf(ucmd.emu, emulated, cmd.start, cmd.length, writable, mem.process);
  } else {
    if (emulated) {
      // An anonymous file of ours (fault queue, vEVENTQ...): fget succeeds, pinning never does.
      pages = Pages.file(ucmd.emu, UNPINNABLE, cmd.start, cmd.length, writable, mem.process);
    } else {
      if (!mem.getFile || cmd.fd < 0) fail('EBADF', 'MAP_FILE: not an open file');
      pages = Pages.file(ucmd.emu, mem.getFile(cmd.fd), cmd.start, cmd.length, writable, mem.process);
    }
    applyAccountMode(ucmd.ctx, pages);
  }
  const fixed = (cmd.flags & MAP_FLAGS.FIXED_IOVA) !== 0;
  cmd.iova = ioas.iopt.mapPages([{ pages, startByte: BigInt(pages.startByte), length: cmd.length }], cmd.length,
    fixed ? cmd.iova : null, prot);
  ioasEvent(ucmd, 'map_file', ioas, cmd.iova, cmd.length);
  ucmd.respond();
}

/** A file that is not shmem/hugetlbfs (an anonymous inode): mapped lazily, refused at pin time. */
const UNPINNABLE: FileBacking = { pinnable: false, size: 0n, getPages: () => fail('EINVAL', 'file cannot be pinned') };

/** Every IO page table of the emulator: the importers a dma-buf exporter notifies. */
export function* allIopts(emu: Emulator): Generator<IoPagetable> {
  for (const ctx of emu.contexts) {
    for (const o of ctx.objects.all()) if (o instanceof Ioas) yield o.iopt;
  }
}

// ---- IOMMU_IOAS_UNMAP (01 §4.8) -----------------------------------------------------------------------

export function iommufdIoasUnmap(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_unmap>>): void {
  const cmd = ucmd.cmd;
  const ioas = getIoas(ucmd.ctx, cmd.ioas_id);
  let unmapped: bigint;
  if (cmd.iova === 0n && cmd.length === U64_MAX) {
    const r = ioas.iopt.unmapAll();
    if (r.error) fail(r.error, r.reason);
    unmapped = r.unmapped;
  } else {
    if (cmd.iova >= U64_MAX || cmd.length >= U64_MAX) fail('EOVERFLOW', 'iova or length is U64_MAX');
    if (cmd.length === 0n) fail('EINVAL', 'length is 0');
    const last = cmd.iova + cmd.length - 1n;
    if (last > U64_MAX) fail('EOVERFLOW', 'iova + length wraps past 2^64');
    const r = ioas.iopt.unmapRange(cmd.iova, last);
    if (r.error) fail(r.error, r.reason);
    if (r.unmapped === 0n) fail('ENOENT', 'no area inside [iova, iova + length)');
    unmapped = r.unmapped;
  }
  ioasEvent(ucmd, 'unmap', ioas, cmd.iova, unmapped);
  cmd.length = unmapped;
  ucmd.respond();
}

// ---- IOMMU_IOAS_CHANGE_PROCESS (01 §4.9) ----------------------------------------------------------------

export function iommufdIoasChangeProcess(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_change_process>>): void {
  const cmd = ucmd.cmd;
  if (cmd.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
  const ctx = ucmd.ctx;
  const me = ucmd.mem.process;
  const ioases = ctx.objects.all().filter((o): o is Ioas => o instanceof Ioas && o.published);
  ctx.emu.allocPoint();
  const pagesSet = new Set<Pages>();
  for (const ioas of ioases) {
    for (const area of ioas.iopt.allAreasIncludingBusy()) {
      if (area.busy) fail('EBUSY', 'an area is still being mapped');
      if (!area.pages.isFile) fail('EINVAL', 'an area maps user memory, not a file (only MAP_FILE pages can change process)');
      pagesSet.add(area.pages);
    }
  }
  const needsUpdate = (p: Pages): boolean => {
    switch (p.accountMode) {
      case AccountMode.NONE: return false;
      // A different source process (USER mode also tracks the process-wide pinned count).
      case AccountMode.MM:
      case AccountMode.USER:
        return p.owner !== me;
    }
  };
  const total = new Map<AccountMode, number>();
  for (const p of pagesSet) if (needsUpdate(p)) total.set(p.accountMode, (total.get(p.accountMode) ?? 0) + p.npinned);
  const charged: [AccountMode, number][] = [];
  try {
    for (const mode of [AccountMode.NONE, AccountMode.USER, AccountMode.MM]) {
      const n = total.get(mode) ?? 0;
      if (!n) continue;
      chargeLocked(ctx.emu, me, mode, n);
      charged.push([mode, n]);
    }
  } catch (e) {
    for (const [mode, n] of charged) unchargeLocked(ctx.emu, me, mode, n);
    throw e;
  }
  for (const p of pagesSet) {
    if (needsUpdate(p)) unchargeLocked(ctx.emu, p.owner, p.accountMode, p.npinned);
    p.owner = me;
  }
}

// ---- IOMMU_IOAS_NOIOMMU_GET_PA (7.3) ------------------------------------------------------------------

/**
 * IOVA -> physical address of a no-IOMMU device's IOAS. Without CONFIG_IOMMUFD_NOIOMMU
 * (the default: only VFIO_NOIOMMU selects it) the kernel's stub answers EOPNOTSUPP after
 * the dispatcher's size checks. With it, the checks below run; the answer needs an area
 * whose storage domain is the software no-IOMMU table, which only a no-IOMMU VFIO device
 * attaching creates. The emulator models no such device, so a mapped area answers
 * EOPNOTSUPP, as on such a kernel with none bound.
 */
export function iommufdIoasNoiommuGetPa(ucmd: Ucmd<Decoded<typeof S.iommu_ioas_noiommu_get_pa>>): void {
  const cmd = ucmd.cmd;
  if (!ucmd.emu.noiommu) fail('EOPNOTSUPP', 'NOIOMMU_GET_PA: kernel built without CONFIG_IOMMUFD_NOIOMMU');
  if (!ucmd.mem.process.capSysRawio) fail('EPERM', 'NOIOMMU_GET_PA: needs CAP_SYS_RAWIO');
  if (cmd.flags || cmd.__reserved) fail('EOPNOTSUPP', 'NOIOMMU_GET_PA: flags or __reserved set');
  if (!cmd.length) fail('EINVAL', 'NOIOMMU_GET_PA: zero length');
  if (cmd.iova >= U64_MAX) fail('EOVERFLOW', 'NOIOMMU_GET_PA: iova >= ULONG_MAX');
  const ioas = getIoas(ucmd.ctx, cmd.ioas_id);
  const area = ioas.iopt.areasIn(cmd.iova, cmd.iova)[0];
  if (!area) fail('ENOENT', 'NOIOMMU_GET_PA: no area at iova');
  if (area.pages.revoked) fail('EINVAL', 'NOIOMMU_GET_PA: revoked dma-buf');
  fail('EOPNOTSUPP', 'NOIOMMU_GET_PA: the area is not stored in a no-IOMMU domain');
}

// ---- IOMMU_OPTION (01 §4.10) --------------------------------------------------------------------------------

export function iommufdOption(ucmd: Ucmd<Decoded<typeof S.iommu_option>>): void {
  const cmd = ucmd.cmd;
  const ctx = ucmd.ctx;
  if (cmd.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
  switch (cmd.option_id) {
    case OPTION.RLIMIT_MODE:
      if (cmd.object_id) fail('EOPNOTSUPP', 'RLIMIT_MODE takes object_id 0');
      if (cmd.op === OPTION.OP_GET) {
        cmd.val64 = ctx.accountMode === 1 ? 1n : 0n;
      } else if (cmd.op === OPTION.OP_SET) {
        if (!ucmd.mem.process.capSysResource) fail('EPERM', 'setting RLIMIT_MODE needs CAP_SYS_RESOURCE');
        if (!ctx.objects.empty) fail('EBUSY', 'RLIMIT_MODE can only change while the context has no objects');
        if (cmd.val64 === 0n) ctx.accountMode = 0;
        else if (cmd.val64 === 1n) ctx.accountMode = 1;
        else fail('EINVAL', 'RLIMIT_MODE val64 must be 0 or 1');
      } else {
        fail('EOPNOTSUPP', 'op is neither GET nor SET');
      }
      break;
    case OPTION.HUGE_PAGES: {
      const ioas = getIoas(ctx, cmd.object_id);
      if (cmd.op === OPTION.OP_GET) {
        cmd.val64 = ioas.iopt.hugePagesDisabled ? 0n : 1n;
      } else if (cmd.op === OPTION.OP_SET) {
        if (cmd.val64 === 0n) ioas.iopt.disableLargePages();
        else if (cmd.val64 === 1n) ioas.iopt.enableLargePages();
        else fail('EINVAL', 'HUGE_PAGES val64 must be 0 or 1');
      } else {
        fail('EOPNOTSUPP', 'op is neither GET nor SET');
      }
      break;
    }
    default:
      fail('EOPNOTSUPP', 'unknown option_id');
  }
  // Only val64 goes back, not the whole struct.
  putU64(ucmd, S.iommu_option.fields.val64.offset, cmd.val64);
}

// ---- IOMMU_VFIO_IOAS (01 §4.11) ---------------------------------------------------------------------------------

/** The VFIO-compat IOAS of a context: ENODEV when none is set. */
export function getCompatIoas(ctx: IommufdCtx): Ioas {
  const ioas = ctx.vfioIoas;
  if (!ioas || !(ioas instanceof Ioas) || ctx.objects.find(ioas.id, ObjType.IOAS) !== ioas) fail('ENODEV', 'no compat IOAS set (VFIO_IOAS SET first)');
  return ioas;
}

export function iommufdVfioIoas(ucmd: Ucmd<Decoded<typeof S.iommu_vfio_ioas>>): void {
  const cmd = ucmd.cmd;
  const ctx = ucmd.ctx;
  if (cmd.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
  switch (cmd.op) {
    case VFIO_IOAS_OP.GET:
      cmd.ioas_id = getCompatIoas(ctx).id;
      ucmd.respond();
      return;
    case VFIO_IOAS_OP.SET:
      ctx.vfioIoas = getIoas(ctx, cmd.ioas_id);
      return;
    case VFIO_IOAS_OP.CLEAR:
      ctx.vfioIoas = null;
      return;
    default:
      fail('EOPNOTSUPP', 'op is not GET, SET or CLEAR');
  }
}
