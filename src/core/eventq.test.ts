// vEVENTQ on the raw entry (02 §8, 03 §4.16, §5.9): VEVENTQ_ALLOC check order,
// the fd (read/write/poll/close), sequence numbers and the lost-events marker,
// TRIGGER_VEVENT, destroy.
import assert from 'node:assert/strict';
import test from 'node:test';
import { POLLIN, POLLOUT, POLLRDNORM } from './file.js';
import { ObjType } from './object.js';
import type { Veventq } from './eventq.js';
import { encode } from '../uapi/layout.js';
import type { ProfileName } from '../uapi/profiles.js';
import {
  closeCtx, code, destroy, destroyTry, errOf, fixture, MOCK, mockDomain, nestedAlloc, nextId, parseEvents, readFd,
  replace, S, trigger, vdevAlloc, veventqAlloc, veventqAllocTry, viommuAlloc, rawReadOnly, type Fx,
} from './viommu_test_helpers.js';

const PROFILES: ProfileName[] = ['6.15', '6.17', '7.3', 'mainline'];
const NEW: ProfileName[] = ['6.17', '7.3', 'mainline'];
const LOST = 1;

/** A vIOMMU with the fixture device attached to a nested HWPT of it through vDEVICE `virt`. */
function attached(profile: ProfileName, virt = 0x99n): Fx & { viommu: number; vdev: number; nested: number } {
  const t = fixture(profile);
  const viommu = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
  const vdev = vdevAlloc(t, viommu, t.idev, virt);
  const nested = nestedAlloc(t, t.idev, viommu);
  assert.equal(replace(t, t.stdev, nested), 0);
  return Object.assign(t, { viommu, vdev, nested });
}

function queueObj(t: Fx, id: number): Veventq {
  return t.ctx.objects.get(id, ObjType.VEVENTQ) as Veventq;
}

for (const p of PROFILES) {
  test(`VEVENTQ_ALLOC check order (${p})`, () => {
    const t = fixture(p);
    const v = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    // 1. flags, __reserved, DEFAULT type: before everything else.
    assert.equal(code(veventqAllocTry(t, 999, { flags: 1, depth: 0 })), 'EOPNOTSUPP');
    assert.equal(code(veventqAllocTry(t, 999, { reserved: 1, depth: 0 })), 'EOPNOTSUPP');
    assert.equal(code(veventqAllocTry(t, 999, { type: 0, depth: 0 })), 'EOPNOTSUPP');
    // 2. depth 0, before the lookup; 7.3 also caps it at 1<<19 (older kernels have no upper bound).
    assert.equal(code(veventqAllocTry(t, 999, { depth: 0 })), 'EINVAL');
    const capped = t.ctx.profile.veventqMaxDepth !== 0;
    assert.equal(code(veventqAllocTry(t, 999, { depth: (1 << 19) + 1 })), capped ? 'EINVAL' : 'ENOENT');
    assert.equal(code(veventqAllocTry(t, 999, { depth: 1 << 19 })), 'ENOENT');
    // 3. the vIOMMU.
    assert.equal(code(veventqAllocTry(t, 999)), 'ENOENT');
    assert.equal(code(veventqAllocTry(t, 0)), 'ENOENT');
    assert.equal(code(veventqAllocTry(t, t.parent)), 'ENOENT');
    // Success: IDs and fd; a failure after it leaves no fd and no ID behind.
    const expect = nextId(t);
    const fdsBefore = t.caller.fds.open;
    const r = veventqAllocTry(t, v, { depth: capped ? 1 << 19 : 0xffffffff });
    assert.equal(code(r), 0);
    assert.equal(r.out.out_veventq_id, expect);
    assert.equal(t.caller.fds.lookup(r.out.out_veventq_fd)?.name, '[iommufd-viommu-event]');
    // 4. one queue per type per vIOMMU.
    assert.equal(code(veventqAllocTry(t, v)), 'EEXIST');
    assert.equal(t.caller.fds.open, fdsBefore + 1);
    assert.equal(nextId(t), expect + 1);
    // Another type is accepted even if the driver never produces it.
    const arm = veventqAllocTry(t, v, { type: 1 });
    assert.equal(code(arm), 0);
    assert.equal(code(veventqAllocTry(t, v, { type: 1 })), 'EEXIST');
    // A second vIOMMU has its own set.
    const v2 = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    assert.equal(code(veventqAllocTry(t, v2)), 0);
  });

  test(`VEVENTQ_ALLOC struct sizes: min 28 (no __reserved), zero tail beyond 32 (${p})`, () => {
    const t = fixture(p);
    const v = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    assert.equal(code(veventqAllocTry(t, v, {}, 27)), 'EINVAL');
    const r = veventqAllocTry(t, v, {}, 28);
    assert.equal(code(r), 0);
    assert.ok(r.out.out_veventq_fd > 0);
    assert.equal(code(veventqAllocTry(t, v, { type: 1 }, 36)), 0);
  });

  test(`vEVENTQ references: the fd holds the queue, the queue holds the vIOMMU (${p})`, () => {
    const t = fixture(p);
    const v = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    const q = veventqAlloc(t, v);
    assert.equal(destroyTry(t, q.id), 'EBUSY');
    assert.equal(destroyTry(t, v), 'EBUSY');
    t.caller.fds.close(q.fd);
    assert.equal(destroyTry(t, v), 'EBUSY');
    assert.equal(destroyTry(t, q.id), 0);
    assert.equal(destroyTry(t, v), 0);
  });

  test(`TRIGGER_VEVENT: device lookup, attachment through a vIOMMU, a queue of the selftest type (${p})`, () => {
    const t = fixture(p);
    const v = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
    assert.equal(trigger(t, 999), 'ENOENT');
    assert.equal(trigger(t, t.ioas), 'ENOENT');
    // Attached to an IOAS: no vIOMMU -> ENOENT.
    assert.equal(trigger(t, t.idev), 'ENOENT');
    // Attached to a nested HWPT made directly on the parent: still no vIOMMU.
    const direct = nestedAlloc(t, t.idev, t.parent);
    assert.equal(replace(t, t.stdev, direct), 0);
    assert.equal(trigger(t, t.idev), 'ENOENT');
    vdevAlloc(t, v, t.idev, 0x99n);
    const nested = nestedAlloc(t, t.idev, v);
    assert.equal(replace(t, t.stdev, nested), 0);
    // No queue of the selftest type: EOPNOTSUPP; an ARM-typed queue does not count.
    assert.equal(trigger(t, t.idev), 'EOPNOTSUPP');
    const arm = veventqAlloc(t, v, { type: 1 });
    assert.equal(trigger(t, t.idev), 'EOPNOTSUPP');
    assert.deepEqual(readFd(t, arm.fd, 64), new Uint8Array(0));
    const q = veventqAlloc(t, v);
    assert.equal(trigger(t, t.idev), 0);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 0, virtId: 0x99 }]);
    // Back on the IOAS: the device no longer reports.
    assert.equal(replace(t, t.stdev, t.ioas), 0);
    assert.equal(trigger(t, t.idev), 'ENOENT');
  });

  test(`TRIGGER_VEVENT: virt_id 0 means "none" (${p})`, () => {
    const t = attached(p, 0n);
    veventqAlloc(t, t.viommu);
    assert.equal(trigger(t, t.idev), 'ENOENT');
  });

  test(`TRIGGER_VEVENT: the payload is the virt_id truncated to 32 bits (${p})`, () => {
    const t = attached(p, 0x1_0000_0077n);
    const q = veventqAlloc(t, t.viommu);
    assert.equal(trigger(t, t.idev), 0);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 0, virtId: 0x77 }]);
  });

  test(`sequence numbers and the lost-events marker: the depth-2 example of 02 §8.3 (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 2 });
    for (let i = 0; i < 3; i++) assert.equal(trigger(t, t.idev), 0);
    const b = readFd(t, q.fd, 3 * 12);
    assert.equal(b.length, 12 + 12 + 8);
    assert.deepEqual(parseEvents(b), [
      { flags: 0, seq: 0, virtId: 0x99 }, { flags: 0, seq: 1, virtId: 0x99 }, { flags: LOST, seq: 2 }]);
    assert.equal(trigger(t, t.idev), 0);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 3, virtId: 0x99 }]);
    assert.deepEqual(readFd(t, q.fd, 64), new Uint8Array(0));
  });

  test(`overflow while the marker is at the tail re-stamps it (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 1 });
    for (let i = 0; i < 4; i++) assert.equal(trigger(t, t.idev), 0); // seq 0, marker 1 -> 2 -> 3
    assert.equal(queueObj(t, q.id).records.length, 2);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 0, virtId: 0x99 }, { flags: LOST, seq: 3 }]);
    assert.equal(trigger(t, t.idev), 0);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 4, virtId: 0x99 }]);
  });

  test(`after making room, the next event replaces the marker and the gap shows the loss (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 2 });
    for (let i = 0; i < 3; i++) trigger(t, t.idev); // 0, 1, marker 2
    assert.deepEqual(parseEvents(readFd(t, q.fd, 12)), [{ flags: 0, seq: 0, virtId: 0x99 }]);
    assert.equal(trigger(t, t.idev), 0); // marker unlinked, record seq 3
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 1, virtId: 0x99 }, { flags: 0, seq: 3, virtId: 0x99 }]);
  });

  test(`sequence numbers wrap from 0x7fffffff to 0 (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 8 });
    queueObj(t, q.id).sequence = 0x7ffffffe;
    for (let i = 0; i < 3; i++) trigger(t, t.idev);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)).map((e) => e.seq), [0x7ffffffe, 0x7fffffff, 0]);
  });

  test(`read: whole records only, short buffers read 0 (7.3: EINVAL), ESPIPE at a non-zero position, EFAULT (${p})`, () => {
    const t = attached(p);
    const strict = t.ctx.profile.veventqReadEinval;
    const q = veventqAlloc(t, t.viommu, { depth: 1 });
    assert.deepEqual(readFd(t, q.fd, 64), new Uint8Array(0)); // empty
    // Below one header, even on an empty queue: 7.3 refuses it.
    assert.equal(strict ? errOf(() => readFd(t, q.fd, 7)) : readFd(t, q.fd, 7).length, strict ? 'EINVAL' : 0);
    trigger(t, t.idev);
    trigger(t, t.idev); // record seq 0 + marker seq 1
    // ESPIPE whatever the queue holds.
    assert.equal(errOf(() => readFd(t, q.fd, 64, 1n)), 'ESPIPE');
    // A header fits but not its payload: 0 bytes (7.3: EINVAL), nothing consumed.
    for (const n of [0, 7, 8, 11]) {
      if (strict) assert.equal(errOf(() => readFd(t, q.fd, n)), 'EINVAL', `count ${n}`);
      else assert.equal(readFd(t, q.fd, n).length, 0, `count ${n}`);
    }
    // 12..19 bytes: the record only (the marker needs 8 more).
    assert.equal(readFd(t, q.fd, 19).length, 12);
    // The marker alone needs just its header.
    if (strict) assert.equal(errOf(() => readFd(t, q.fd, 7)), 'EINVAL');
    else assert.equal(readFd(t, q.fd, 7).length, 0);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 8)), [{ flags: LOST, seq: 1 }]);
    // EFAULT when nothing could be copied; the record stays queued.
    trigger(t, t.idev);
    assert.equal(errOf(() => readFd(t, q.fd, 64, 0n, 0x10n)), 'EFAULT');
    const ro = t.mem.alloc(64);
    t.mem.mprotect(ro, 4096, 1);
    assert.equal(errOf(() => readFd(t, q.fd, 64, 0n, ro)), 'EFAULT');
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 2, virtId: 0x99 }]);
  });

  test(`read: a fault after the first record returns what was copied; the rest stays queued (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 4 });
    trigger(t, t.idev);
    trigger(t, t.idev);
    const page = t.mem.alloc(4096); // followed by an unmapped guard page
    const buf = page + 4096n - 16n; // room for one record before the hole
    const first = readFd(t, q.fd, 24, 0n, buf);
    assert.deepEqual(parseEvents(first), [{ flags: 0, seq: 0, virtId: 0x99 }]);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 1, virtId: 0x99 }]);
  });

  test(`the fd: write -> EINVAL, poll readable only while records are queued, never writable (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 1 });
    const f = t.caller.fds.lookup(q.fd)!;
    const buf = t.mem.alloc(16);
    assert.equal(errOf(() => f.write(t.mem, buf, 8, 0n)), 'EINVAL');
    assert.equal(errOf(() => f.write(t.mem, buf, 0, 0n)), 'EINVAL');
    assert.equal(f.poll(), 0);
    trigger(t, t.idev);
    assert.equal(f.poll(), POLLIN | POLLRDNORM);
    trigger(t, t.idev); // overflow: record + marker
    readFd(t, q.fd, 12);
    assert.equal(f.poll(), POLLIN | POLLRDNORM, 'the marker alone is readable');
    assert.equal(f.poll() & POLLOUT, 0);
    readFd(t, q.fd, 8);
    assert.equal(f.poll(), 0);
  });

  test(`closing the fd keeps the records until destroy; destroy discards them and unlinks the queue (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 4 });
    trigger(t, t.idev);
    trigger(t, t.idev);
    t.caller.fds.close(q.fd);
    assert.equal(errOf(() => t.caller.fds.close(q.fd)), 'EBADF');
    assert.equal(queueObj(t, q.id).records.length, 2);
    // Events still land in the (fd-less) queue.
    assert.equal(trigger(t, t.idev), 0);
    assert.equal(queueObj(t, q.id).records.length, 3);
    destroy(t, q.id);
    assert.equal(trigger(t, t.idev), 'EOPNOTSUPP');
    // A new queue of the same type starts afresh.
    const q2 = veventqAlloc(t, t.viommu);
    assert.equal(trigger(t, t.idev), 0);
    assert.deepEqual(parseEvents(readFd(t, q2.fd, 64)), [{ flags: 0, seq: 0, virtId: 0x99 }]);
  });

  test(`the vEVENTQ fd keeps the context alive after /dev/iommu is closed (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu);
    closeCtx(t);
    assert.equal(t.ctx.closed, false);
    assert.equal(trigger(t, t.idev), 0);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 0, virtId: 0x99 }]);
    t.caller.fds.close(q.fd);
    assert.equal(t.ctx.closed, true);
    assert.equal(t.ctx.objects.size, 0);
  });

  test(`the captured virt_id: kept while attached through the same vIOMMU, refreshed via another pt (${p})`, () => {
    const t = attached(p, 0x99n);
    const q = veventqAlloc(t, t.viommu, { depth: 8 });
    const d2 = mockDomain(t, t.ioas);
    if (NEW.includes(p)) {
      // Destroying the vDEVICE while attached does not refresh the captured ID.
      destroy(t, t.vdev);
      assert.equal(trigger(t, t.idev), 0);
      // A replace to another nested HWPT of the same vIOMMU needs a vDEVICE again...
      const n2 = nestedAlloc(t, t.idev, t.viommu);
      assert.equal(replace(t, t.stdev, n2), 'ENOENT');
      vdevAlloc(t, t.viommu, t.idev, 0x88n);
      // ...and keeps the ID captured when the device came to this vIOMMU.
      assert.equal(replace(t, t.stdev, n2), 0);
      assert.equal(trigger(t, t.idev), 0);
      // Through a non-vIOMMU attachment the capture is refreshed.
      assert.equal(replace(t, t.stdev, t.ioas), 0);
      assert.equal(replace(t, t.stdev, t.nested), 0);
      assert.equal(trigger(t, t.idev), 0);
      assert.deepEqual(parseEvents(readFd(t, q.fd, 64)).map((e) => e.virtId), [0x99, 0x99, 0x88]);
    } else {
      // 6.15: several vDEVICEs of one device on one vIOMMU; the lowest virt_id is the one found.
      vdevAlloc(t, t.viommu, t.idev, 0x11n);
      vdevAlloc(t, t.viommu, t.idev, 0x55n);
      assert.equal(replace(t, t.stdev, t.ioas), 0);
      assert.equal(replace(t, t.stdev, t.nested), 0);
      assert.equal(trigger(t, t.idev), 0);
      assert.deepEqual(parseEvents(readFd(t, q.fd, 64)).map((e) => e.virtId), [0x11]);
    }
    // Each device reports its own virt_id.
    vdevAlloc(t, t.viommu, d2.idevId, 0x33n);
    assert.equal(replace(t, d2.stdevId, t.nested), 0);
    assert.equal(trigger(t, d2.idevId), 0);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)).map((e) => e.virtId), [0x33]);
  });
}

for (const p of PROFILES) {
  test(`VEVENTQ_ALLOC copy-back EFAULT: no fd installed, no object, the type is free again (${p})`, () => {
    const t = attached(p);
    const fds = t.caller.fds.open;
    const id = nextId(t);
    assert.equal(rawReadOnly(t, 'VEVENTQ_ALLOC', S.iommu_veventq_alloc, { viommu_id: t.viommu,
      type: MOCK.VEVENTQ_TYPE_SELFTEST, veventq_depth: 2 }), 'EFAULT');
    assert.equal(t.caller.fds.open, fds);
    assert.equal(nextId(t), id);
    assert.equal(t.ctx.objects.get(t.viommu, ObjType.VIOMMU).users, 3); // vDEVICE + nested HWPT only
    assert.equal(trigger(t, t.idev), 'EOPNOTSUPP');
    const q = veventqAlloc(t, t.viommu);
    assert.equal(q.id, id);
  });

  test(`a failed read of the lone marker keeps it queued (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 1 });
    trigger(t, t.idev);
    trigger(t, t.idev);
    readFd(t, q.fd, 12);
    assert.equal(errOf(() => readFd(t, q.fd, 8, 0n, 0x10n)), 'EFAULT');
    assert.equal(t.caller.fds.lookup(q.fd)!.poll() & POLLIN, POLLIN);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 8)), [{ flags: LOST, seq: 1 }]);
  });

  /** TRIGGER_VEVENT's fault points: the command's copy-in, the device lookup, then the record (GFP_NOWAIT). */
  const RECORD_POINT = 3;
  test(`a record that cannot be allocated: the marker is queued and the report fails with ENOMEM (${p})`, () => {
    const t = attached(p);
    const q = veventqAlloc(t, t.viommu, { depth: 4 });
    assert.equal(trigger(t, t.idev), 0);
    t.emu.failNth = RECORD_POINT;
    assert.equal(trigger(t, t.idev), 'ENOMEM');
    t.emu.failNth = 0;
    assert.equal(trigger(t, t.idev), 0);
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [
      { flags: 0, seq: 0, virtId: 0x99 }, { flags: 0, seq: 2, virtId: 0x99 }]); // the marker (seq 1) was replaced
    t.emu.failNth = RECORD_POINT;
    assert.equal(trigger(t, t.idev), 'ENOMEM');
    t.emu.failNth = 0;
    assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: LOST, seq: 3 }]);
  });
}

test('6.13: no vEVENTQ (ENOTTY) and no TRIGGER_VEVENT op (EOPNOTSUPP)', () => {
  const t = attached('6.13');
  assert.equal(code(veventqAllocTry(t, t.viommu)), 'ENOTTY');
  assert.equal(trigger(t, t.idev), 'EOPNOTSUPP');
});

test('a vEVENTQ of a tombstoned vDEVICE\'s vIOMMU: the device stops reporting after unbind (mainline)', () => {
  const t = fixture('mainline');
  const v = viommuAlloc(t, { devId: t.idev, hwptId: t.parent });
  const d2 = mockDomain(t, t.ioas);
  vdevAlloc(t, v, d2.idevId, 5n);
  const n = nestedAlloc(t, d2.idevId, v);
  assert.equal(replace(t, d2.stdevId, n), 0);
  const q = veventqAlloc(t, v);
  assert.equal(trigger(t, d2.idevId), 0);
  destroy(t, d2.stdevId);
  assert.equal(trigger(t, d2.idevId), 'ENOENT');
  assert.deepEqual(parseEvents(readFd(t, q.fd, 64)), [{ flags: 0, seq: 0, virtId: 5 }]);
});

void encode; void S;
