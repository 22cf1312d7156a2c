// The generic ioctl protocol (01 §1.2-1.3): request decoding, the size rule,
// the zero-tail rule and profile-gated tables, on the raw entry.
import assert from 'node:assert/strict';
import test from 'node:test';
import { isErrno, type ErrnoName } from '../uapi/errno.js';
import { IO } from '../uapi/ioctls.js';
import { encode } from '../uapi/layout.js';
import type { ProfileName } from '../uapi/profiles.js';
import * as S from '../uapi/structs.js';
import { Emulator } from './emulator.js';
import { SimpleFdTable } from './file.js';
import { SimMemory } from './simmem.js';
import './main.js';

function setup(profile: ProfileName = 'mainline') {
  const emu = new Emulator({ profile });
  const mem = new SimMemory();
  const caller = { mem, fds: new SimpleFdTable() };
  const ctx = emu.open(mem);
  const raw = (nr: number, bytes: Uint8Array): { r: number; out: Uint8Array } => {
    const addr = mem.alloc(bytes.length + 64);
    mem.write(addr, bytes);
    const r = ctx.ioctl(IO(nr), addr, caller);
    return { r, out: mem.read(addr, bytes.length) };
  };
  const errno = (nr: number, bytes: Uint8Array): ErrnoName | 0 => {
    try {
      raw(nr, bytes);
      return 0;
    } catch (e) {
      if (isErrno(e)) return e.code;
      throw e;
    }
  };
  return { emu, mem, caller, ctx, raw, errno };
}

function withSize(bytes: Uint8Array, size: number, junk = 0): Uint8Array {
  const b = new Uint8Array(Math.max(size, 4));
  b.set(bytes.subarray(0, Math.min(bytes.length, size)));
  new DataView(b.buffer).setUint32(0, size, true);
  if (size > bytes.length) b.fill(junk, bytes.length);
  return b;
}

test('a NULL argument gives EFAULT before anything else', () => {
  const { ctx, caller } = setup();
  assert.throws(() => ctx.ioctl(IO(0x80), 0n, caller), (e) => isErrno(e, 'EFAULT'));
});

test('a request with wrong type or direction bits gives ENOTTY', () => {
  const { ctx, caller, mem } = setup();
  const addr = mem.alloc(8);
  mem.write(addr, encode(S.iommu_destroy, { size: 8, id: 1 }));
  assert.throws(() => ctx.ioctl(0x3c80, addr, caller), (e) => isErrno(e, 'ENOTTY'));
  assert.throws(() => ctx.ioctl(0xc0083b80, addr, caller), (e) => isErrno(e, 'ENOTTY'));
  // An empty slot between the last command and the test command.
  assert.throws(() => ctx.ioctl(IO(0x9f), addr, caller), (e) => isErrno(e, 'ENOTTY'));
});

test('size below the last mandatory member gives EINVAL; above it needs a zero tail', () => {
  const { errno } = setup();
  const destroy = encode(S.iommu_destroy, { size: 8, id: 77 });
  assert.equal(errno(0x80, withSize(destroy, 7)), 'EINVAL');
  assert.equal(errno(0x80, withSize(destroy, 8)), 'ENOENT');
  assert.equal(errno(0x80, withSize(destroy, 16, 0)), 'ENOENT');
  assert.equal(errno(0x80, withSize(destroy, 16, 0xaa)), 'E2BIG');
});

test('an unreadable zero tail gives EFAULT', () => {
  const { ctx, caller, mem } = setup();
  const page = mem.mmap(4096);
  const addr = page + 4096n - 8n;
  mem.write(addr, withSize(encode(S.iommu_destroy, { size: 8, id: 1 }), 8));
  mem.write(addr, new Uint8Array([16, 0, 0, 0]));
  assert.throws(() => ctx.ioctl(IO(0x80), addr, caller), (e) => isErrno(e, 'EFAULT'));
});

test('IOAS_ALLOC copies back only as many bytes as the caller declared', () => {
  const { raw } = setup();
  const bytes = withSize(encode(S.iommu_ioas_alloc, { size: 12 }), 12);
  const { out } = raw(0x81, bytes);
  assert.equal(new DataView(out.buffer).getUint32(8, true), 1);
  const big = withSize(encode(S.iommu_ioas_alloc, { size: 12 }), 20, 0);
  const r2 = raw(0x81, big);
  assert.equal(new DataView(r2.out.buffer).getUint32(8, true), 2);
  assert.deepEqual([...r2.out.subarray(12)], new Array(8).fill(0));
});

test('ioctls newer than the profile are ENOTTY', () => {
  const cases: [ProfileName, number, ErrnoName | 'present'][] = [
    ['6.12', 0x8f, 'ENOTTY'], // IOAS_MAP_FILE
    ['6.12', 0x90, 'ENOTTY'], // VIOMMU_ALLOC
    ['6.13', 0x93, 'ENOTTY'], // VEVENTQ_ALLOC
    ['6.15', 0x94, 'ENOTTY'], // HW_QUEUE_ALLOC
    ['6.13', 0x90, 'present'],
    ['mainline', 0x94, 'present'],
  ];
  for (const [profile, nr, want] of cases) {
    const { errno } = setup(profile);
    // size 4 is below every struct's minimum: EINVAL proves the slot exists.
    const got = errno(nr, withSize(new Uint8Array(4), 4));
    assert.equal(got, want === 'present' ? 'EINVAL' : want, `${profile} nr 0x${nr.toString(16)}`);
  }
});

test('the viommu-v1 profile has the seed numbering', () => {
  const { errno } = setup('viommu-v1');
  // 0x8f is VIOMMU_ALLOC (24 bytes, min 24) there, not IOAS_MAP_FILE (min 40).
  assert.equal(errno(0x8f, withSize(new Uint8Array(24), 24)), 'ENOENT');
  assert.equal(errno(0x93, withSize(new Uint8Array(4), 4)), 'ENOTTY');
});

test('a closed context refuses ioctls with EBADF', () => {
  const { ctx, caller, mem } = setup();
  ctx.put();
  const addr = mem.alloc(8);
  mem.write(addr, encode(S.iommu_destroy, { size: 8, id: 1 }));
  assert.throws(() => ctx.ioctl(IO(0x80), addr, caller), (e) => isErrno(e, 'EBADF'));
});
