// dma-buf import (IOAS_MAP_FILE of a dma-buf fd) and the selftest exporter
// (DMABUF_GET/REVOKE): sizes, mapping by physical address, no pins or accounting,
// accesses refused, revocation unmapping everything for good, ENODEV while revoked.
import assert from 'node:assert/strict';
import test from 'node:test';
import { MockAmdv1Domain } from '../drivers/mock/amdv1.js';
import {
  errOf, hwptAlloc, ioasAlloc, mapFixed, mockDomain, raw, rawTry, setup, testCmd, testCmdTry, S, TEST_OP, type T,
} from '../drivers/mock/test_helpers.js';
import { DmaBuf } from './dmabuf.js';
import type { HwptPaging } from './hwpt.js';
import { ObjType } from './object.js';
import { PAGE_SIZE } from './usermem.js';
import { IO } from '../uapi/ioctls.js';
import { encode, encodeInto } from '../uapi/layout.js';

const BASE = 1n << 24n;
const RW = 2 | 4;
const code = (r: { err: { code: string } | null }): string | 0 => r.err?.code ?? 0;

/** DMABUF_GET: the fd the exporter installed (7.3.4 returns 0; the fd is the table's newest). */
function dmabufGet(t: T, length: number): { ret: number; fd: number; buf: DmaBuf } {
  const before = t.fds.open;
  const r = testCmdTry(t, TEST_OP.DMABUF_GET, 0, { length, open_flags: 0o2000000 });
  if (r.err) throw r.err;
  assert.equal(t.fds.open, before + 1, 'one new fd');
  let fd = 1000;
  while (!(t.fds.lookup(fd) instanceof DmaBuf) || fd < 1000 + before) fd++;
  return { ret: 0, fd, buf: t.fds.lookup(fd) as DmaBuf };
}

function mapFile(t: T, ioas: number, fd: number, start: bigint, length: bigint, iova?: bigint) {
  return rawTry(t, 'IOAS_MAP_FILE', S.iommu_ioas_map_file,
    { flags: RW | (iova !== undefined ? 1 : 0), ioas_id: ioas, fd, start, length, iova: iova ?? 0n });
}

const revoke = (t: T, fd: number, revoked: boolean) =>
  testCmdTry(t, TEST_OP.DMABUF_REVOKE, 0, { dmabuf_fd: fd, revoked: revoked ? 1 : 0 }).err?.code ?? 0;

test('DMABUF_GET: absent before 6.19; 7.3.4 installs the fd but returns 0 (the mock\'s quirk)', () => {
  assert.equal(testCmdTry(setup('6.17'), TEST_OP.DMABUF_GET, 0, { length: 4096 }).err?.code, 'EOPNOTSUPP');
  const t = setup('7.3');
  assert.equal(testCmdTry(t, TEST_OP.DMABUF_GET, 0, { length: 0 }).err?.code, 'EINVAL');
  assert.equal(testCmdTry(t, TEST_OP.DMABUF_GET, 0, { length: PAGE_SIZE * 512 + 1 }).err?.code, 'EINVAL');
  assert.equal(t.fds.open, 0);
  // The ioctl's own return value.
  const addr = t.mem.alloc(S.IOMMU_TEST_CMD_SIZE);
  const cmd = encode(S.iommu_test_cmd, { size: S.IOMMU_TEST_CMD_SIZE, op: TEST_OP.DMABUF_GET, id: 0 }, Infinity, S.IOMMU_TEST_CMD_SIZE);
  encodeInto(S.test_dmabuf_get, { length: 4096, open_flags: 0 }, cmd);
  t.mem.write(addr, cmd);
  assert.equal(t.ctx.ioctl(IO(0xa0), addr, t.caller), 0);
  assert.equal(t.fds.open, 1);
  const { buf } = dmabufGet(t, 1);
  assert.equal(buf.size, BigInt(PAGE_SIZE), 'the length is rounded up to pages');
  assert.equal(errOf(() => buf.read(t.mem, 0n, 8, 0n)), 'EINVAL');
});

test('MAP_FILE of a dma-buf: bounds, mapped by physical address into domains, never pinned or charged', () => {
  const t = setup('7.3', { capIpcLock: false, memlockLimit: 0 });
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const size = 4 * PAGE_SIZE;
  const { fd } = dmabufGet(t, size);
  assert.equal(code(mapFile(t, ioas, fd, 0n, 0n)), 'EINVAL');
  assert.equal(code(mapFile(t, ioas, fd, BigInt(size), BigInt(size))), 'EINVAL');
  assert.equal(code(mapFile(t, ioas, fd, 0n, BigInt(size) + 1n)), 'EINVAL');
  // RLIMIT_MEMLOCK 0 and no CAP_IPC_LOCK: fine, a dma-buf is not accounted.
  const r = mapFile(t, ioas, fd, 0n, BigInt(size), BASE);
  assert.equal(code(r), 0);
  assert.equal(t.mem.process.pinnedPages, 0);
  const d = (t.ctx.objects.find(md.hwptId, ObjType.HWPT_PAGING) as HwptPaging).domain as MockAmdv1Domain;
  // One physically contiguous run: a single 16 KiB entry.
  assert.deepEqual(d.leaves().map((l) => l.size), [BigInt(size)]);
  const phys0 = d.iovaToPhys(BASE)!;
  assert.equal(d.iovaToPhys(BASE + 5000n), phys0 + 5000);
  // In-kernel accesses cannot use it.
  const access = testCmd(t, TEST_OP.CREATE_ACCESS, ioas, { flags: 1 }).out_access_fd;
  const uptr = t.mem.alloc(PAGE_SIZE);
  assert.equal(testCmdTry(t, TEST_OP.ACCESS_PAGES, access, { iova: BASE, length: 4096n, uptr }).err?.code, 'EINVAL');
  assert.equal(testCmdTry(t, TEST_OP.ACCESS_RW, access, { iova: BASE, length: 8n, uptr }).err?.code, 'EINVAL');
  // Only file pages can change process.
  assert.equal(errOf(() => raw(t, 'IOAS_CHANGE_PROCESS', S.iommu_ioas_change_process, {})), 'EINVAL');
});

test('REVOKE: every attachment is unmapped for good; new ones get ENODEV until un-revoked', () => {
  const t = setup('7.3');
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const size = BigInt(4 * PAGE_SIZE);
  const { fd } = dmabufGet(t, Number(size));
  assert.equal(code(mapFile(t, ioas, fd, 0n, size, BASE)), 0);
  const dom = (id: number) => (t.ctx.objects.find(id, ObjType.HWPT_PAGING) as HwptPaging).domain as MockAmdv1Domain;
  assert.equal(dom(md.hwptId).stats.entries, 1);
  assert.equal(revoke(t, fd, true), 0);
  assert.equal(dom(md.hwptId).stats.entries, 0, 'unmapped from the domain');
  assert.equal(code(mapFile(t, ioas, fd, 0n, size)), 'ENODEV');
  // A domain attached now maps nothing of the revoked area.
  const h2 = hwptAlloc(t, { devId: md.idevId, ptId: ioas });
  assert.equal(dom(h2).stats.entries, 0);
  // Un-revoking invalidates too: the old attachment stays empty, a new one maps.
  assert.equal(revoke(t, fd, false), 0);
  const r = mapFile(t, ioas, fd, 0n, size);
  assert.equal(code(r), 0);
  assert.equal(dom(md.hwptId).stats.entries, 1);
  raw(t, 'IOAS_UNMAP', S.iommu_ioas_unmap, { ioas_id: ioas, iova: BASE, length: size });
  assert.equal(code(mapFile(t, ioas, fd, 0n, size, BASE)), 0);
  assert.equal(dom(md.hwptId).stats.entries, 2);
  // Not a dma-buf: EINVAL; not an open fd: EBADF.
  const access = testCmd(t, TEST_OP.CREATE_ACCESS, ioas, { flags: 0 }).out_access_fd;
  assert.equal(revoke(t, access, true), 'EINVAL');
  assert.equal(revoke(t, 4242, true), 'EBADF');
  // Closing the fd keeps the attachments.
  t.fds.close(fd);
  assert.equal(dom(md.hwptId).stats.entries, 2);
  mapFixed(t, ioas, BASE + (1n << 20n), 4096);
});
