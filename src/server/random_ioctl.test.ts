// Bounded, seeded random ioctls (struct-aware, from the uAPI table) against the
// raw entry: whatever a caller passes, the emulator answers a value or a
// kernel errno -- never another exception -- and closing the context
// afterwards tears everything down (no pinned page left behind).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fc from 'fast-check';
import { Emulator } from '../core/emulator.js';
import { SimpleFdTable } from '../core/file.js';
import { PROT_READ, PROT_WRITE, SimMemory } from '../core/simmem.js';
import { isErrno } from '../uapi/errno.js';
import { encode } from '../uapi/layout.js';
import type { ProfileName } from '../uapi/profiles.js';
import * as S from '../uapi/structs.js';
import { MOCK, TEST_OP } from '../uapi/enums.js';
import { IO } from '../uapi/ioctls.js';
import '../core/main.js';
import { randomIoctl, type RandomIoctl } from './random_ioctl.js';

const PAGE = 4096;

function runSequence(profile: ProfileName, calls: RandomIoctl[]): void {
  const emu = new Emulator({ profile });
  const mem = new SimMemory();
  const fds = new SimpleFdTable();
  const caller = { mem, fds };
  const ctx = emu.open(mem);
  // Memory the pointers may name: a buffer (some of it filled), a read-only page, a hole.
  const buffer = mem.mmap(16 * PAGE);
  mem.write(buffer, new Uint8Array(4 * PAGE).fill(0x11));
  const ro = mem.mmap(PAGE);
  mem.mprotect(ro, PAGE, PROT_READ);
  const hole = mem.mmap(PAGE);
  mem.munmap(hole, PAGE);
  const where = { null: 0n, buffer, readonly: ro, unmapped: hole, wild: 0xdead0000n } as const;
  // Something for the IDs to name: an IOAS with a mock device on it.
  const setup = mem.mmap(PAGE);
  mem.write(setup, encode(S.iommu_ioas_alloc, { size: 12 }));
  ctx.ioctl(IO(0x81), setup, caller);
  mem.write(setup, encode(S.iommu_test_cmd, { size: S.IOMMU_TEST_CMD_SIZE, op: TEST_OP.MOCK_DOMAIN, id: 1 }, undefined, S.IOMMU_TEST_CMD_SIZE));
  ctx.ioctl(IO(0xa0), setup, caller);
  void MOCK;
  for (const c of calls) {
    const bytes = c.bytes.slice();
    for (const [off, kind] of c.ptrs) {
      const v = where[kind];
      for (let i = 0; i < 8 && off + i < bytes.length; i++) bytes[off + i] = Number((v >> BigInt(8 * i)) & 0xffn);
    }
    const arg = mem.mmap(Math.max(bytes.length, PAGE));
    mem.write(arg, bytes);
    emu.failNth = c.failnth;
    try {
      ctx.ioctl(c.request, arg, caller);
    } catch (e) {
      if (!isErrno(e)) {
        throw new Error(`emulator bug on request 0x${c.request.toString(16)} (${Buffer.from(bytes).toString('hex')}): ${(e as Error).stack}`);
      }
    } finally {
      emu.failNth = 0;
    }
    mem.munmap(arg, Math.max(bytes.length, PAGE));
  }
  // Event files handed out are closed like a process exit would; then the fd goes.
  for (const fd of [...(fds as unknown as { files: Map<number, unknown> }).files.keys()]) fds.close(fd);
  ctx.put();
  assert.equal(ctx.closed, true);
  // the buffer's pages are not pinned any more
  for (const p of mem.getPages(buffer, 16, false)) assert.equal(p.pins, 0, 'a page stayed pinned after teardown');
  void PROT_WRITE;
}

for (const profile of ['mainline', '6.12', 'viommu-v1'] as ProfileName[]) {
  test(`random struct-aware ioctl sequences (${profile}): only values or errnos, and a clean teardown`, () => {
    fc.assert(fc.property(fc.array(randomIoctl(profile), { minLength: 1, maxLength: 40 }), (calls) => runSequence(profile, calls)),
      { numRuns: 1500, seed: profile.length * 0x8008 });
  });
}
