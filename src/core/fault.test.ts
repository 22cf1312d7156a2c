import assert from 'node:assert/strict';
import test from 'node:test';
import {
  destroy, errno, faultAlloc, hwptAlloc, ioasAlloc, mockDomain, rawTry, selftestData, setup, testCmd, type T,
} from '../drivers/mock/test_helpers.js';
import type { MockDevice } from '../drivers/mock/mock.js';
import { HWPT_ALLOC, MOCK, PAGE_RESP, PGFAULT_FLAGS, TEST_OP } from '../uapi/enums.js';
import { decode, encode } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { Device } from './device.js';
import { POLLIN, POLLOUT, POLLRDNORM } from './file.js';
import { ObjType } from './object.js';

function fixture(profile: '6.12' | 'mainline' = 'mainline') {
  const t = setup(profile);
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const { faultId, faultFd } = faultAlloc(t);
  // 6.12 takes FAULT_ID_VALID only for a nested HWPT; later kernels also for a paging one.
  const hwpt = profile === '6.12'
    ? hwptAlloc(t, {
      devId: md.idevId, ptId: hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT }),
      flags: HWPT_ALLOC.FAULT_ID_VALID, faultId, dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t),
    })
    : hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.FAULT_ID_VALID, faultId });
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: hwpt });
  const file = t.caller.fds.lookup(faultFd)!;
  const mdev = (t.ctx.objects.find(md.idevId, ObjType.DEVICE) as Device).dev as MockDevice;
  return Object.assign(t, { ioas, md, faultId, faultFd, hwpt, file, mdev });
}

function trigger(t: T, devId: number, o: { pasid?: number; grpid?: number; perm?: number; addr?: bigint } = {}) {
  testCmd(t, TEST_OP.TRIGGER_IOPF, 0, { dev_id: devId, pasid: o.pasid ?? 0, grpid: o.grpid ?? 2, perm: o.perm ?? 3, addr: o.addr ?? 0xdeadbeafn });
}

function readRecords(t: T & { file: ReturnType<typeof fixture>['file'] }, count = 40 * 8) {
  const buf = t.mem.alloc(count);
  const n = t.file.read(t.mem, buf, count, 0n);
  const recs = [];
  for (let i = 0; i < n; i += 40) recs.push(decode(S.iommu_hwpt_pgfault, t.mem.read(buf + BigInt(i), 40)));
  return recs;
}

function respond(t: ReturnType<typeof fixture>, resps: { cookie: number; code: number }[]): number {
  const buf = t.mem.alloc(8 * Math.max(1, resps.length));
  resps.forEach((r, i) => t.mem.write(buf + BigInt(8 * i), encode(S.iommu_hwpt_page_response, r)));
  return t.file.write(t.mem, buf, 8 * resps.length, 0n);
}

test('FAULT_QUEUE_ALLOC: flags -> EOPNOTSUPP; the fd holds the FAULT (DESTROY -> EBUSY until closed)', () => {
  const t = setup();
  assert.equal(rawTry(t, 'FAULT_QUEUE_ALLOC', S.iommu_fault_alloc, { flags: 1 }).err?.code, 'EOPNOTSUPP');
  const { faultId, faultFd } = faultAlloc(t);
  assert.equal(faultId, 1);
  assert.equal(t.caller.fds.lookup(faultFd)!.name, '[iommufd-pgfault]');
  assert.throws(() => destroy(t, faultId), errno('EBUSY'));
  t.caller.fds.close(faultFd);
  destroy(t, faultId);
  assert.equal(t.ctx.objects.empty, true);
});

test('FAULT_QUEUE_ALLOC copy-back fault: no object, no fd', () => {
  const t = setup();
  const addr = t.mem.alloc(16);
  t.mem.write(addr, encode(S.iommu_fault_alloc, { size: 16 }));
  t.mem.mprotect(addr, 4096, 1);
  assert.throws(() => t.ctx.ioctl((0x3b << 8) | 0x8e, addr, t.caller), errno('EFAULT'));
  assert.equal(t.ctx.objects.empty, true);
  assert.equal(t.caller.fds.open, 0);
});

test('the fault fd keeps the context alive after the iommufd is closed', () => {
  const t = setup();
  const { faultFd } = faultAlloc(t);
  t.ctx.put();
  assert.equal(t.ctx.closed, false);
  t.caller.fds.close(faultFd);
  assert.equal(t.ctx.closed, true);
});

test('a triggered fault is read as one record with cookie 1 and answered by a response', () => {
  const t = fixture();
  assert.equal(t.file.poll(), POLLOUT);
  trigger(t, t.md.idevId, { pasid: 0, grpid: 2, perm: 3, addr: 0xdeadbeafn });
  assert.equal(t.file.poll(), POLLOUT | POLLIN | POLLRDNORM);
  const [rec, ...rest] = readRecords(t);
  assert.equal(rest.length, 0);
  assert.deepEqual(rec, {
    flags: PGFAULT_FLAGS.LAST_PAGE, dev_id: t.md.idevId, pasid: 0, grpid: 2, perm: 3, __reserved: 0,
    addr: 0xdeadbeafn, length: 0, cookie: 1,
  });
  assert.equal(t.file.poll(), POLLOUT);
  assert.deepEqual(readRecords(t), []); // nothing pending: 0, no blocking
  assert.throws(() => destroy(t, t.faultId), errno('EBUSY'));
  assert.equal(respond(t, [{ cookie: 1, code: PAGE_RESP.SUCCESS }]), 8);
  assert.deepEqual(t.mdev.responses, [{ grpid: 2, pasid: 0, code: PAGE_RESP.SUCCESS }]);
  // Cookies are lowest-free: 1 again.
  trigger(t, t.md.idevId, { grpid: 3 });
  const [again] = readRecords(t);
  assert.equal(again!.cookie, 1);
  // A PASID fault with no PASID attachment (and a paging RID HWPT) is answered at once.
  trigger(t, t.md.idevId, { pasid: 5 });
  assert.deepEqual(readRecords(t), []);
  assert.deepEqual(t.mdev.responses[1], { grpid: 2, pasid: 5, code: PAGE_RESP.INVALID });
});

test('fault fd read/write: ESPIPE rules, whole groups, partial write results', () => {
  const t = fixture();
  const buf = t.mem.alloc(4096);
  assert.throws(() => t.file.read(t.mem, buf, 39, 0n), errno('ESPIPE'));
  assert.throws(() => t.file.read(t.mem, buf, 40, 1n), errno('ESPIPE'));
  assert.throws(() => t.file.write(t.mem, buf, 7, 0n), errno('ESPIPE'));
  assert.throws(() => t.file.write(t.mem, buf, 8, 8n), errno('ESPIPE'));
  assert.equal(t.file.read(t.mem, buf, 0, 0n), 0);
  for (let i = 0; i < 3; i++) trigger(t, t.md.idevId, { grpid: 10 + i });
  assert.equal(t.file.read(t.mem, buf, 80, 0n), 80); // two groups fit
  assert.deepEqual(readRecords(t).map((r) => [r.grpid, r.cookie]), [[12, 3]]);
  // A bad code or unknown cookie stops the write; earlier responses count.
  assert.throws(() => respond(t, [{ cookie: 1, code: 2 }]), errno('EINVAL'));
  assert.throws(() => respond(t, [{ cookie: 9, code: 0 }]), errno('EINVAL'));
  assert.equal(respond(t, [{ cookie: 2, code: 0 }, { cookie: 9, code: 0 }, { cookie: 1, code: 0 }]), 8);
  assert.equal(respond(t, [{ cookie: 1, code: PAGE_RESP.INVALID }, { cookie: 3, code: 0 }]), 16);
  assert.throws(() => respond(t, [{ cookie: 1, code: 0 }]), errno('EINVAL')); // already answered
  // A fault on the user buffer with nothing copied.
  trigger(t, t.md.idevId);
  assert.throws(() => t.file.read(t.mem, 0x10n, 40, 0n), errno('EFAULT'));
  assert.equal(readRecords(t).length, 1, 'the group stayed queued');
  assert.throws(() => t.file.write(t.mem, 0x10n, 8, 0n), errno('EFAULT'));
});

test('detach auto-responds INVALID to queued and awaiting groups; FAULT destroy answers the rest', () => {
  const t = fixture();
  trigger(t, t.md.idevId, { grpid: 1 });
  trigger(t, t.md.idevId, { grpid: 2 });
  readRecords(t, 40); // grpid 1 now awaits a response
  destroy(t, t.md.stdevId); // detach + unbind
  assert.deepEqual(t.mdev.responses.map((r) => [r.grpid, r.code]), [[2, PAGE_RESP.INVALID], [1, PAGE_RESP.INVALID]]);
  assert.deepEqual(readRecords(t), []);
  assert.equal(t.file.poll(), POLLOUT);
  // Faults on a HWPT without a FAULT are silently answered; with no fault-capable attachment they are dropped.
  const t2 = fixture();
  const plain = hwptAlloc(t2, { devId: t2.md.idevId, ptId: t2.ioas });
  const other = mockDomain(t2, plain);
  trigger(t2, other.idevId);
  trigger(t2, t2.md.idevId, { pasid: 7 }); // no PASID attachment, RID is not nested: answered INVALID
  assert.deepEqual(t2.mdev.responses, [{ grpid: 2, pasid: 7, code: PAGE_RESP.INVALID }]);
  // FAULT destroy with groups queued (the HWPT and fd gone first).
  trigger(t2, t2.md.idevId, { grpid: 4 });
  testCmd(t2, TEST_OP.MOCK_DOMAIN_REPLACE, t2.md.stdevId, { pt_id: plain });
  // 7.3.4 (and 6.12.117): the replace answers the old attachment's groups from the old HWPT's queue
  // (found by the 7.3.4 golden traces: a poll still saw the group queued); the profiles in between
  // looked in the new HWPT's queue, which has none.
  assert.deepEqual(t2.mdev.responses.map((r) => [r.grpid, r.code]), [[2, 1], [4, PAGE_RESP.INVALID]]);
  assert.equal(t2.file.poll(), POLLOUT);
  destroy(t2, t2.hwpt);
  t2.caller.fds.close(t2.faultFd);
  destroy(t2, t2.faultId);
  assert.deepEqual(t2.mdev.responses.map((r) => [r.grpid, r.code]), [[2, 1], [4, PAGE_RESP.INVALID]]);
});

test('replace between HWPTs sharing a FAULT answers the old attachment\'s groups', () => {
  const t = fixture();
  const h2 = hwptAlloc(t, { devId: t.md.idevId, ptId: t.ioas, flags: HWPT_ALLOC.FAULT_ID_VALID, faultId: t.faultId });
  trigger(t, t.md.idevId, { grpid: 9 });
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, t.md.stdevId, { pt_id: h2 });
  assert.deepEqual(t.mdev.responses, [{ grpid: 9, pasid: 0, code: PAGE_RESP.INVALID }]);
  trigger(t, t.md.idevId, { grpid: 10 });
  assert.deepEqual(readRecords(t).map((r) => r.grpid), [10]);
});

test('PASID faults route to the PASID attachment, else to a nested RID attachment', () => {
  const t = setup();
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas, MOCK.FLAGS_DEVICE_PASID);
  const { faultId, faultFd } = faultAlloc(t);
  const F = HWPT_ALLOC.FAULT_ID_VALID;
  const parent = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT | HWPT_ALLOC.PASID });
  const nested = hwptAlloc(t, { devId: md.idevId, ptId: parent, flags: F | HWPT_ALLOC.PASID, faultId,
    dataType: MOCK.HWPT_DATA_SELFTEST, data: selftestData(t) });
  testCmd(t, TEST_OP.MOCK_DOMAIN_REPLACE, md.stdevId, { pt_id: nested });
  const file = t.caller.fds.lookup(faultFd)!;
  trigger(t, md.idevId, { pasid: 33 });
  const buf = t.mem.alloc(80);
  assert.equal(file.read(t.mem, buf, 80, 0n), 40);
  const rec = decode(S.iommu_hwpt_pgfault, t.mem.read(buf, 40));
  assert.equal(rec.pasid, 33);
  const pasidHwpt = hwptAlloc(t, { devId: md.idevId, ptId: ioas, flags: F | HWPT_ALLOC.PASID, faultId });
  testCmd(t, TEST_OP.PASID_ATTACH, md.stdevId, { pasid: 33, pt_id: pasidHwpt });
  trigger(t, md.idevId, { pasid: 33, grpid: 5 });
  testCmd(t, TEST_OP.PASID_DETACH, md.stdevId, { pasid: 33 });
  const mdev = (t.ctx.objects.find(md.idevId, ObjType.DEVICE) as Device).dev as MockDevice;
  assert.deepEqual(mdev.responses, [{ grpid: 5, pasid: 33, code: PAGE_RESP.INVALID }]);
});

test('6.12: HWPT_ALLOC of a paging HWPT with FAULT_ID_VALID is EOPNOTSUPP (only NEST_PARENT and DIRTY_TRACKING)', () => {
  const t = setup('6.12');
  const ioas = ioasAlloc(t);
  const md = mockDomain(t, ioas);
  const { faultId } = faultAlloc(t);
  const alloc = (faultIdArg: number) => rawTry(t, 'HWPT_ALLOC', S.iommu_hwpt_alloc,
    { dev_id: md.idevId, pt_id: ioas, flags: HWPT_ALLOC.FAULT_ID_VALID, fault_id: faultIdArg }).err?.code;
  assert.equal(alloc(faultId), 'EOPNOTSUPP');
  assert.equal(alloc(99), 'EOPNOTSUPP', 'rejected before the fault lookup');
  const t13 = setup('6.13');
  const i13 = ioasAlloc(t13);
  const m13 = mockDomain(t13, i13);
  assert.equal(rawTry(t13, 'HWPT_ALLOC', S.iommu_hwpt_alloc,
    { dev_id: m13.idevId, pt_id: i13, flags: HWPT_ALLOC.FAULT_ID_VALID, fault_id: 99 }).err?.code, 'ENOENT');
});

test('TRIGGER_IOPF: unknown device -> ENOENT', () => {
  const t = fixture('6.12');
  assert.throws(() => trigger(t, 99), errno('ENOENT'));
  assert.throws(() => trigger(t, t.ioas), errno('ENOENT'));
});
