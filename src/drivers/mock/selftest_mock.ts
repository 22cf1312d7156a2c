// IOMMU_TEST_CMD ops of the mock driver (03 §4): MOCK_DOMAIN(_FLAGS),
// MOCK_DOMAIN_REPLACE, MD_CHECK_MAP, MD_CHECK_IOTLB, DEV_CHECK_CACHE, DIRTY,
// TRIGGER_IOPF and the PASID ops, plus the SELFTEST object that owns a mock
// device bound to the context.
import { mockDeviceDelPoints } from './device_core_points.js';
import type { IommufdCtx, Ucmd } from '../../core/context.js';
import {
  deviceAttach, deviceBind, deviceDetach, deviceReplace, deviceUnbind, NO_PASID, type Device,
} from '../../core/device.js';
import { DmaBuf } from '../../core/dmabuf.js';
import { reportDeviceFault } from '../../core/fault.js';
import { installFile } from '../../core/file.js';
import { allIopts } from '../../core/ioas.js';
import type { HwptNested, HwptPaging } from '../../core/hwpt.js';
import { IommufdObject, ObjType } from '../../core/object.js';
import { registerTestOp, type TestCmd } from '../../core/selftest.js';
import { getUserPages, PAGE_SIZE } from '../../core/usermem.js';
import { fail } from '../../uapi/errno.js';
import { MOCK, PGFAULT_FLAGS, TEST_OP } from '../../uapi/enums.js';
import { isMockPaging, MockDevice, MockNestedDomain, mockDriverOf, type MockPaging } from './mock.js';

/** The SELFTEST object: a mock device bound to (and attached in) this context. */
export class SelftestObj extends IommufdObject {
  readonly type = ObjType.SELFTEST;
  readonly kind = 'idev' as const;
  idev: Device | null = null;
  mockDev: MockDevice | null = null;

  constructor(readonly ctx: IommufdCtx) {
    super();
  }

  /** Detach (RID), unbind, delete the mock device. Idempotent. */
  teardown(): void {
    const idev = this.idev;
    this.idev = null;
    if (idev) {
      deviceDetach(idev, NO_PASID);
      deviceUnbind(idev);
    }
    if (this.mockDev) {
      mockDeviceDelPoints(this.ctx.emu);
      this.mockDev.destroyed = true;
      this.mockDev = null;
    }
  }

  destroy(): void {
    this.teardown();
  }
}

function getStdev(ucmd: Ucmd<TestCmd>): SelftestObj & { idev: Device; mockDev: MockDevice } {
  const sobj = ucmd.ctx.get<SelftestObj>(ucmd.cmd.id, ObjType.SELFTEST);
  if (sobj.kind !== 'idev' || !sobj.idev || !sobj.mockDev) fail('EINVAL', `id is not a mock device's selftest object`);
  return sobj as SelftestObj & { idev: Device; mockDev: MockDevice };
}

function getMockPaging(ctx: IommufdCtx, id: number): MockPaging {
  const hwpt = ctx.get<HwptPaging>(id, ObjType.HWPT_PAGING);
  if (!isMockPaging(hwpt.domain)) fail('EINVAL', `the HWPT's domain is not a mock domain`);
  return hwpt.domain;
}

/** MOCK_DOMAIN / MOCK_DOMAIN_FLAGS (03 §4.1): IDs stdev, idev, (auto) hwpt in that order. */
function mockDomain(ucmd: Ucmd<TestCmd>): void {
  const { ctx } = ucmd;
  const u = ucmd.cmd.u as { out_stdev_id: number; out_hwpt_id: number; out_idev_id: number; dev_flags?: number };
  const sobj = ctx.allocObj(new SelftestObj(ctx));
  try {
    const flags = ucmd.cmd.op === TEST_OP.MOCK_DOMAIN_FLAGS ? (u.dev_flags ?? 0) : 0;
    sobj.mockDev = mockDriverOf(ucmd.emu).createDevice(flags);
    sobj.idev = deviceBind(ctx, sobj.mockDev, { mock: true, binder: sobj });
    const ptId = deviceAttach(sobj.idev, undefined, ucmd.cmd.id);
    u.out_hwpt_id = ptId;
    u.out_stdev_id = sobj.id;
    u.out_idev_id = sobj.idev.id;
    ucmd.respond();
  } catch (e) {
    sobj.teardown();
    ctx.objects.abort(sobj);
    throw e;
  }
  ctx.objects.finalize(sobj);
}

/** MOCK_DOMAIN_REPLACE (03 §4.2). */
function mockDomainReplace(ucmd: Ucmd<TestCmd>): void {
  const sobj = getStdev(ucmd);
  const u = ucmd.cmd.u as { pt_id: number };
  u.pt_id = deviceReplace(sobj.idev, undefined, u.pt_id);
  ucmd.respond();
}

/** MD_CHECK_MAP (03 §4.4): the domain holds the physical address behind each user slot. */
function mdCheckMap(ucmd: Ucmd<TestCmd>): void {
  const { ctx } = ucmd;
  const u = ucmd.cmd.u as { iova: bigint; length: bigint; uptr: bigint };
  const overflow = u.uptr + u.length > (1n << 64n) - 1n;
  let domain: MockPaging;
  let step: bigint;
  if (mockDriverOf(ucmd.emu).gen === 'A') {
    // The xarray mock checks its fixed 2 KiB step before the lookup...
    step = BigInt(PAGE_SIZE / 2);
    if (u.iova % step || u.length % step || u.uptr % step || overflow) fail('EINVAL', 'MD_CHECK_MAP: not 2 KiB aligned');
    domain = getMockPaging(ctx, ucmd.cmd.id);
  } else {
    // ...the page-table mock looks the domain up first and steps by its smallest page size.
    domain = getMockPaging(ctx, ucmd.cmd.id);
    step = domain.minPageSize;
    if (u.iova % step || u.length % step || u.uptr % step || overflow) fail('EINVAL', 'MD_CHECK_MAP: not page aligned');
  }
  const page = BigInt(PAGE_SIZE);
  for (let off = 0n; off < u.length; off += step) {
    const uptr = u.uptr + off;
    const [p] = getUserPages(ucmd.mem, uptr - (uptr % page), 1, false);
    const phys = p!.pfn * PAGE_SIZE + Number(uptr % page);
    if (domain.iovaToPhys(u.iova + off) !== phys) fail('EINVAL', 'MD_CHECK_MAP: physical address differs');
  }
}

/** MD_CHECK_IOTLB (03 §4.6). */
function mdCheckIotlb(ucmd: Ucmd<TestCmd>): void {
  const hwpt = ucmd.ctx.get<HwptNested>(ucmd.cmd.id, ObjType.HWPT_NESTED);
  if (!(hwpt.domain instanceof MockNestedDomain)) fail('EINVAL', `the HWPT's domain is not a mock nested domain`);
  const u = ucmd.cmd.u as { id: number; iotlb: number };
  if (u.id >= MOCK.NESTED_DOMAIN_IOTLB_NUM || hwpt.domain.iotlb[u.id] !== u.iotlb) fail('EINVAL', 'iotlb id out of range or the IOTLB entry differs');
}

/** DEV_CHECK_CACHE (03 §4.7): `id` is the DEVICE id. */
function devCheckCache(ucmd: Ucmd<TestCmd>): void {
  const idev = ucmd.ctx.get<Device>(ucmd.cmd.id, ObjType.DEVICE);
  const u = ucmd.cmd.u as { id: number; cache: number };
  if (!(idev.dev instanceof MockDevice)) fail('EINVAL', 'the device is not a mock device');
  if (u.id >= MOCK.DEV_CACHE_NUM || idev.dev.cache[u.id] !== u.cache) fail('EINVAL', 'cache id out of range or the cache entry differs');
}

/** DIRTY (03 §4.14): mark mock IOPTEs dirty from a user bitmap. */
function dirty(ucmd: Ucmd<TestCmd>): void {
  const { ctx } = ucmd;
  const u = ucmd.cmd.u as { flags: number; iova: bigint; length: bigint; page_size: bigint; uptr: bigint; out_nr_dirty: bigint };
  const ps = u.page_size;
  if (!ps || !u.length || u.iova % ps || u.length % ps || !u.uptr) fail('EINVAL', 'page_size, length, iova or uptr is 0 or misaligned');
  const max = u.length / ps;
  if (max > 1n << 27n) fail('EOVERFLOW', 'more than 2^27 pages');
  const domain = getMockPaging(ctx, ucmd.cmd.id);
  if (!domain.tracking) fail('EINVAL', 'dirty tracking is off');
  ucmd.emu.allocPoint();
  const bits = ucmd.mem.read(u.uptr, Number((max + 7n) / 8n));
  const countAll = mockDriverOf(ucmd.emu).gen === 'B';
  const quirk = ucmd.ctx.profile.mockDirtyIndexQuirk;
  let count = 0n;
  const n = Number(max);
  for (let byte = 0; byte < bits.length; byte++) {
    const b = bits[byte]!;
    if (!b) continue;
    for (let j = 0; j < 8; j++) {
      const i = byte * 8 + j;
      if (i >= n || !(b & (1 << j))) continue;
      const cur = u.iova + BigInt(i) * ps;
      // 6.12 (quirk): the entry is looked up at cur / page_size, whatever the page size.
      const marked = quirk ? domain.markDirtySlot(Number(cur / ps)) : domain.markDirty(cur);
      if (marked || countAll) count++;
    }
  }
  u.out_nr_dirty = count;
  ucmd.respond();
}

/** TRIGGER_IOPF (03 §4.15): always 0 once the device is found. */
function triggerIopf(ucmd: Ucmd<TestCmd>): void {
  const u = ucmd.cmd.u as { dev_id: number; pasid: number; grpid: number; perm: number; addr: bigint };
  const idev = ucmd.ctx.get<Device>(u.dev_id, ObjType.DEVICE);
  if (!(idev.dev instanceof MockDevice)) fail('EINVAL', 'the device is not a mock device');
  const flags = PGFAULT_FLAGS.LAST_PAGE | (u.pasid !== NO_PASID ? PGFAULT_FLAGS.PASID_VALID : 0);
  reportDeviceFault(idev, { flags, pasid: u.pasid, grpid: u.grpid, perm: u.perm, addr: u.addr });
}

/** PASID_ATTACH (03 §4.17): detached again if the copy-back fails. */
function pasidAttach(ucmd: Ucmd<TestCmd>): void {
  const sobj = getStdev(ucmd);
  const u = ucmd.cmd.u as { pasid: number; pt_id: number };
  u.pt_id = deviceAttach(sobj.idev, u.pasid, u.pt_id);
  try {
    ucmd.respond();
  } catch (e) {
    deviceDetach(sobj.idev, u.pasid);
    throw e;
  }
}

function pasidReplace(ucmd: Ucmd<TestCmd>): void {
  const sobj = getStdev(ucmd);
  const u = ucmd.cmd.u as { pasid: number; pt_id: number };
  u.pt_id = deviceReplace(sobj.idev, u.pasid, u.pt_id);
  ucmd.respond();
}

function pasidDetach(ucmd: Ucmd<TestCmd>): void {
  const sobj = getStdev(ucmd);
  deviceDetach(sobj.idev, (ucmd.cmd.u as { pasid: number }).pasid);
}

/** PASID_CHECK_HWPT: hwpt_id 0 = "nothing attached at pasid". */
function pasidCheckHwpt(ucmd: Ucmd<TestCmd>): void {
  const sobj = getStdev(ucmd);
  const u = ucmd.cmd.u as { pasid: number; hwpt_id: number };
  const attached = sobj.idev.attachment(u.pasid)?.hwpt ?? null;
  if (!u.hwpt_id) {
    if (attached) fail('EINVAL', 'the device is attached at this PASID (expected nothing)');
    return;
  }
  const obj = ucmd.ctx.get<IommufdObject>(u.hwpt_id, ObjType.ANY);
  if (obj.type !== ObjType.HWPT_PAGING && obj.type !== ObjType.HWPT_NESTED) fail('EINVAL', 'hwpt_id is not a HWPT');
  if (obj !== attached) fail('EINVAL', 'the device is not attached to hwpt_id at this PASID');
}

/**
 * DMABUF_GET (6.19+): the selftest's dma-buf exporter. The length is rounded up to pages
 * (0 or above 512 pages: EINVAL); the new fd is installed with open_flags. 7.3.4's mock
 * returns 0 instead of the fd (a kernel quirk, dmabufGetReturnsZero): the fd stays open.
 */
const O_CLOEXEC = 0o2000000;

function dmabufGet(ucmd: Ucmd<TestCmd>): number {
  const u = ucmd.cmd.u as { length: number; open_flags: number };
  const len = BigInt(u.length + PAGE_SIZE - 1) & ~BigInt(PAGE_SIZE - 1);
  if (len === 0n || len > BigInt(PAGE_SIZE * 512)) fail('EINVAL', 'DMABUF_GET: length 0 or above 512 pages');
  const emu = ucmd.emu;
  emu.allocPoint(); // the exporter's private data
  emu.allocPoint(); // its memory
  emu.allocPoint(); // dma_buf_export
  const buf = new DmaBuf(emu, len, () => allIopts(emu), u.open_flags);
  let fd = -1;
  // dma_buf_fd(): the fd is close-on-exec only when open_flags asks for it.
  installFile(ucmd, buf, (n) => (fd = n), undefined, { cloexec: (u.open_flags & O_CLOEXEC) !== 0 });
  return ucmd.ctx.profile.dmabufGetReturnsZero ? 0 : fd;
}

/** DMABUF_REVOKE: the selftest exporter's revoked state, then its move notification to every importer. */
function dmabufRevoke(ucmd: Ucmd<TestCmd>): void {
  const u = ucmd.cmd.u as { dmabuf_fd: number; revoked: number };
  const fds = ucmd.caller.fds;
  const file = u.dmabuf_fd >= 0 ? fds.lookup(u.dmabuf_fd) : undefined;
  if (!file) {
    const open = u.dmabuf_fd >= 0 && (fds.isOpen?.(u.dmabuf_fd) ?? false);
    fail(open ? 'EINVAL' : 'EBADF', open ? 'DMABUF_REVOKE: not a dma-buf' : 'DMABUF_REVOKE: not an open fd');
  }
  if (!(file instanceof DmaBuf)) fail('EINVAL', 'DMABUF_REVOKE: not a dma-buf');
  file.revoked = u.revoked !== 0;
  file.invalidate();
}

registerTestOp(TEST_OP.MOCK_DOMAIN, mockDomain);
registerTestOp(TEST_OP.MOCK_DOMAIN_FLAGS, mockDomain);
registerTestOp(TEST_OP.MOCK_DOMAIN_REPLACE, mockDomainReplace);
registerTestOp(TEST_OP.MD_CHECK_MAP, mdCheckMap);
registerTestOp(TEST_OP.MD_CHECK_IOTLB, mdCheckIotlb);
registerTestOp(TEST_OP.DEV_CHECK_CACHE, devCheckCache);
registerTestOp(TEST_OP.DIRTY, dirty);
registerTestOp(TEST_OP.TRIGGER_IOPF, triggerIopf);
registerTestOp(TEST_OP.PASID_ATTACH, pasidAttach);
registerTestOp(TEST_OP.PASID_REPLACE, pasidReplace);
registerTestOp(TEST_OP.PASID_DETACH, pasidDetach);
registerTestOp(TEST_OP.PASID_CHECK_HWPT, pasidCheckHwpt);
registerTestOp(TEST_OP.DMABUF_GET, dmabufGet);
registerTestOp(TEST_OP.DMABUF_REVOKE, dmabufRevoke);

