// copy_struct_from_user's zeroed-tail check (check_zeroed_user): a caller's
// struct longer than the kernel's must end in zeros. The kernel reads the tail
// one aligned word at a time and stops at the first non-zero one, so E2BIG
// and EFAULT depend on which comes first; the raw entry must agree, on every
// ioctl. (The same cases run through the shim against the real kernel's
// answers in src/server/server.test.ts.)
import assert from 'node:assert/strict';
import test from 'node:test';
import { isErrno, type ErrnoName } from '../uapi/errno.js';
import { IO } from '../uapi/ioctls.js';
import { Emulator } from './emulator.js';
import { SimpleFdTable } from './file.js';
import { PROT_READ, PROT_WRITE, SimMemory } from './simmem.js';
import { PAGE_SIZE } from './usermem.js';
import './main.js';

const PG = BigInt(PAGE_SIZE);

/** (name, nr, kernel struct size): a few ioctls of different sizes. */
const IOCTLS: [string, number, number][] = [
  ['DESTROY', 0x80, 8], ['IOAS_ALLOC', 0x81, 12], ['OPTION', 0x87, 24], ['IOAS_MAP', 0x85, 40], ['TEST_CMD', 0xa0, 72],
];

interface Layout {
  /** Where the struct starts, as an offset back from the end of the readable page. */
  back: number;
  /** The caller's size (beyond the kernel's). */
  size: (known: number) => number;
  /** Bytes to set (offsets from the struct's start), value 0xff. */
  nonzero: (known: number) => number[];
}

function run(nr: number, known: number, l: Layout): ErrnoName | 'ok' | 'other' {
  const emu = new Emulator({ profile: 'mainline' });
  const mem = new SimMemory();
  const caller = { mem, fds: new SimpleFdTable() };
  const ctx = emu.open(mem);
  // [readable page][unreadable page]
  const base = mem.mmap(2 * PAGE_SIZE);
  mem.mprotect(base + PG, PAGE_SIZE, 0);
  const arg = base + PG - BigInt(l.back);
  const size = l.size(known);
  const head = new Uint8Array(4);
  new DataView(head.buffer).setUint32(0, size, true);
  mem.write(arg, head);
  for (const off of l.nonzero(known)) mem.write(arg + BigInt(off), Uint8Array.of(0xff));
  mem.mprotect(base, PAGE_SIZE, PROT_READ | PROT_WRITE);
  try {
    ctx.ioctl(IO(nr), arg, caller);
    return 'ok';
  } catch (e) {
    if (isErrno(e)) return e.code === 'E2BIG' || e.code === 'EFAULT' ? e.code : 'other';
    throw e;
  }
}

test('a non-zero tail byte before an unreadable page is E2BIG; an all-zero tail running into it is EFAULT (every ioctl)', () => {
  for (const [name, nr, known] of IOCTLS) {
    // struct fully readable, tail runs 64 bytes into the unreadable page
    const into: Layout = { back: known + 16, size: (k) => k + 80, nonzero: () => [] };
    assert.equal(run(nr, known, into), 'EFAULT', `${name}: zero tail into a hole`);
    assert.equal(run(nr, known, { ...into, nonzero: (k) => [k + 3] }), 'E2BIG', `${name}: non-zero first`);
    assert.equal(run(nr, known, { ...into, nonzero: (k) => [k + 15] }), 'E2BIG', `${name}: non-zero in the last readable byte`);
  }
});

test('the tail check masks the bytes of its first and last words that are not tail', () => {
  for (const [name, nr, known] of IOCTLS) {
    // The tail starts 4 bytes before the hole, in the middle of an aligned
    // word whose first half is the struct's own (a non-zero field): masked,
    // so the next word (unreadable) decides: EFAULT, not E2BIG.
    const unaligned: Layout = { back: known + 4, size: (k) => k + 32, nonzero: (k) => [k - 1] };
    assert.equal(run(nr, known, unaligned), 'EFAULT', `${name}: struct bytes in the tail's first word`);
  }
  for (const [name, nr, known] of IOCTLS) {
    // A tail of 3 bytes in a readable page, followed by non-zero bytes of the same word: those are not tail.
    const short: Layout = { back: known + 64, size: (k) => k + 3, nonzero: (k) => [k + 3, k + 4, k + 7] };
    assert.notEqual(run(nr, known, short), 'E2BIG', `${name}: bytes past the tail in its last word`);
    assert.equal(run(nr, known, { ...short, nonzero: (k) => [k + 2] }), 'E2BIG', `${name}: the tail's last byte`);
  }
});

test('a long zero tail that stays readable passes, however long', () => {
  const emu = new Emulator({ profile: 'mainline' });
  const mem = new SimMemory();
  const caller = { mem, fds: new SimpleFdTable() };
  const ctx = emu.open(mem);
  const len = 300 * PAGE_SIZE; // more than one read chunk
  const arg = mem.mmap(len);
  const head = new Uint8Array(4);
  new DataView(head.buffer).setUint32(0, len, true);
  mem.write(arg, head);
  assert.equal(ctx.ioctl(IO(0x81), arg, caller), 0);
  mem.write(arg + BigInt(len - 1), Uint8Array.of(1));
  assert.throws(() => ctx.ioctl(IO(0x81), arg, caller), (e) => isErrno(e, 'E2BIG'));
});
