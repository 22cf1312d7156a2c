// Selftest ops on accesses and IOAS internals (03 §4.3, §4.5, §4.8-4.13):
// ADD_RESERVED, MD_CHECK_REFS, CREATE_ACCESS, DESTROY_ACCESS_PAGES,
// ACCESS_PAGES, ACCESS_RW, SET_TEMP_MEMORY_LIMIT, ACCESS_REPLACE_IOAS.
// Accesses are identified by the fd of their "[iommufd_test_staccess]" file.
import { fail } from '../uapi/errno.js';
import { MOCK, TEST_OP } from '../uapi/enums.js';
import type { Ucmd } from './context.js';
import type { Emulator } from './emulator.js';
import { Access } from './access.js';
import { fdCloseEvent, fdOpenEvent, type IommufdFile } from './file.js';
import { U64_MAX } from './io_pagetable.js';
import { getIoas, type Ioas } from './ioas.js';
import { registerTestOp, type TestCmd } from './selftest.js';
import { getUserPages, PAGE_SIZE, type PhysPage, type UserMemory } from './usermem.js';

const PS = BigInt(PAGE_SIZE);
/** Reserved ranges added by ADD_RESERVED belong to no device or domain. */
export const TEST_RESERVED_OWNER: object = Object.freeze({ owner: 'selftest' });

interface Item {
  readonly id: number;
  readonly iova: bigint;
  readonly length: bigint;
}

/** One selftest access and its pinned items. */
export class StaccessFile implements IommufdFile {
  readonly name = '[iommufd_test_staccess]';
  /** The kernel's staccess file has only a release method. */
  readonly has = { read: false, write: false, poll: false };
  access: Access | null = null;
  readonly items: Item[] = [];
  nextId = 0;

  constructor(readonly needsPin: boolean) {}

  /** The access's unmap callback: drop every item overlapping [iova, iova+length). */
  unmap(iova: bigint, length: bigint): void {
    const last = iova + length - 1n;
    for (let i = 0; i < this.items.length;) {
      const it = this.items[i]!;
      if (iova > it.iova + it.length - 1n || last < it.iova) {
        i++;
        continue;
      }
      this.items.splice(i, 1);
      this.access?.unpinPages(it.iova, it.length);
    }
  }

  read(): number {
    fail('EINVAL', 'the access file cannot be read');
  }
  write(): number {
    fail('EINVAL', 'the access file cannot be written');
  }
  /** Readiness as the fd's readiness byte sees it (vfsPoll answers DEFAULT_POLLMASK to poll()). */
  poll(): number {
    return 0;
  }
  /** Closing the fd unpins everything and destroys the access. */
  release(): void {
    const a = this.access;
    if (!a) return;
    fdCloseEvent(a.ctx, this, a);
    this.unmap(0n, U64_MAX);
    this.access = null;
    a.destroyByOwner();
  }
}

function staccess(ucmd: Ucmd<TestCmd>, fd: number): StaccessFile {
  const f = ucmd.caller.fds.lookup(fd);
  if (!(f instanceof StaccessFile) || !f.access) fail('EBADFD', 'id is not the fd of a selftest access');
  return f;
}

/** The SYZ flag's IOVA form, resolved against the access's current IOAS. */
function syzIova(access: Access, iova: bigint): bigint {
  const ioas: Ioas | null = access.ioas;
  if (!ioas) return 0n;
  const area = ioas.iopt.nthArea(Number(iova & 0xffffffffn));
  return area ? area.iova + ((iova >> 32n) & 0xffffffffn) : 0n;
}

// ADD_RESERVED (03 §4.3)
registerTestOp(TEST_OP.ADD_RESERVED, (ucmd) => {
  const { start, length } = ucmd.cmd.u as { start: bigint; length: bigint };
  if (length === 0n) fail('EINVAL', 'length is 0');
  const last = start + length - 1n;
  if (last > U64_MAX) fail('EOVERFLOW', 'start + length wraps past 2^64');
  const ioas = getIoas(ucmd.ctx, ucmd.cmd.id);
  ioas.iopt.reserve(start, last, TEST_RESERVED_OWNER);
});

// MD_CHECK_REFS (03 §4.5)
registerTestOp(TEST_OP.MD_CHECK_REFS, (ucmd) => {
  const { length, uptr, refs } = ucmd.cmd.u as { length: bigint; uptr: bigint; refs: number };
  // check_add_overflow(uptr, length): a range ending exactly at 2^64 overflows too.
  if (length % PS || uptr % PS || uptr + length > U64_MAX) fail('EINVAL', 'length or uptr not page aligned, or uptr + length overflows (2^64 included)');
  forEachUserPage(ucmd.mem, uptr, Number(length / PS), (page) => {
    if (!page.compound && page.pins !== refs) fail('EIO', `a page's pin count is not refs`);
  });
});

/**
 * The kernel's page-by-page get_user_pages loop: `check` on each page in order, a page that
 * cannot be had fails at its turn (so a check failing on an earlier page wins over the fault).
 * The range is looked up once (one read of the process's mappings); only when that fails are
 * the pages looked up one by one to find which comes first.
 */
function forEachUserPage(mem: UserMemory, uptr: bigint, npages: number, check: (page: PhysPage, i: number) => void): void {
  if (npages === 0) return;
  let pages: PhysPage[];
  try {
    pages = getUserPages(mem, uptr, npages, false);
  } catch (e) {
    for (let i = 0; i < npages; i++) check(getUserPages(mem, uptr + BigInt(i) * PS, 1, false)[0]!, i);
    throw e;
  }
  pages.forEach(check);
}

// CREATE_ACCESS (03 §4.8)
registerTestOp(TEST_OP.CREATE_ACCESS, (ucmd) => {
  const u = ucmd.cmd.u as { out_access_fd: number; flags: number };
  if (u.flags & ~MOCK.FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES) fail('EOPNOTSUPP', 'flags has bits other than NEEDS_PIN_PAGES');
  const ctx = ucmd.ctx;
  ctx.emu.allocPoint(); // the selftest's access state
  ctx.emu.anonFilePoints();
  const file = new StaccessFile((u.flags & MOCK.FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES) !== 0);
  const access = Access.create(ctx, { needsPinPages: file.needsPin, unmap: (iova, len) => file.unmap(iova, len) }, file);
  try {
    access.attach(ucmd.cmd.id);
  } catch (e) {
    access.destroyByOwner();
    throw e;
  }
  file.access = access;
  const fd = ucmd.caller.fds.install(file);
  fdOpenEvent(ctx, fd, file, access);
  u.out_access_fd = fd;
  try {
    ucmd.respond();
  } catch (e) {
    ucmd.caller.fds.close(fd);
    throw e;
  }
});

// DESTROY_ACCESS_PAGES (03 §4.10)
registerTestOp(TEST_OP.DESTROY_ACCESS_PAGES, (ucmd) => {
  const { access_pages_id } = ucmd.cmd.u as { access_pages_id: number };
  const f = staccess(ucmd, ucmd.cmd.id);
  const i = f.items.findIndex((it) => it.id === access_pages_id);
  if (i < 0) fail('ENOENT', 'no pinned item with access_pages_id');
  const [it] = f.items.splice(i, 1);
  f.access!.unpinPages(it!.iova, it!.length);
});

/** The pages backing the caller's memory from `uptr` must be `pages` (EBADE), EFAULT if unmapped. */
function checkPages(mem: UserMemory, uptr: bigint, pages: PhysPage[]): void {
  forEachUserPage(mem, uptr - (uptr % PS), pages.length, (p, i) => {
    if (p !== pages[i]) fail('EBADE', 'the pinned pages are not the ones backing uptr');
  });
}

// ACCESS_PAGES (03 §4.9)
registerTestOp(TEST_OP.ACCESS_PAGES, (ucmd) => {
  const u = ucmd.cmd.u as { flags: number; out_access_pages_id: number; iova: bigint; length: bigint; uptr: bigint };
  if (u.length > BigInt(MOCK.ACCESS_LENGTH_MAX)) fail('ENOMEM', `length above the selftest's 16 MiB limit`);
  if (u.flags & ~(MOCK.FLAGS_ACCESS_WRITE | MOCK.FLAGS_ACCESS_SYZ)) fail('EOPNOTSUPP', 'flags has bits other than WRITE|SYZ');
  const f = staccess(ucmd, ucmd.cmd.id);
  if (!f.needsPin) fail('EOPNOTSUPP', 'the access was not created with NEEDS_PIN_PAGES');
  const access = f.access!;
  let iova = u.iova;
  if (u.flags & MOCK.FLAGS_ACCESS_SYZ) iova = syzIova(access, iova);
  ucmd.emu.allocPoint();
  const pages = access.pinPages(iova, u.length, (u.flags & MOCK.FLAGS_ACCESS_WRITE) !== 0);
  try {
    if (u.uptr) checkPages(ucmd.mem, u.uptr - (iova % PS), pages);
    ucmd.emu.allocPoint();
  } catch (e) {
    access.unpinPages(iova, u.length);
    throw e;
  }
  const item: Item = { id: f.nextId++, iova, length: u.length };
  f.items.push(item);
  u.out_access_pages_id = item.id;
  try {
    ucmd.respond();
  } catch (e) {
    f.items.splice(f.items.indexOf(item), 1);
    access.unpinPages(iova, u.length);
    throw e;
  }
});

/**
 * kvzalloc(): one kmalloc up to a page; above, a kmalloc that may fail quietly (NORETRY)
 * and falls back to vmalloc (its area and page-array allocations).
 */
function kvzalloc(emu: Emulator, len: number): void {
  if (len <= PAGE_SIZE) emu.allocPoint();
  else if (emu.faults.slab()) {
    emu.allocPoint(); // vmap_area
    emu.allocPoint(); // vm_struct and page array
  }
}

// ACCESS_RW (03 §4.11)
registerTestOp(TEST_OP.ACCESS_RW, (ucmd) => {
  const u = ucmd.cmd.u as { iova: bigint; length: bigint; uptr: bigint; flags: number };
  if (u.length > BigInt(MOCK.ACCESS_LENGTH_MAX)) fail('ENOMEM', `length above the selftest's 16 MiB limit`);
  if (u.flags & ~(MOCK.ACCESS_RW_WRITE | MOCK.ACCESS_RW_SLOW_PATH | MOCK.FLAGS_ACCESS_SYZ)) fail('EOPNOTSUPP', 'flags has bits other than WRITE|SLOW_PATH|SYZ');
  const f = staccess(ucmd, ucmd.cmd.id);
  const access = f.access!;
  const len = Number(u.length);
  kvzalloc(ucmd.emu, len);
  const write = (u.flags & MOCK.ACCESS_RW_WRITE) !== 0;
  let data: Uint8Array = new Uint8Array(len);
  if (write) {
    ucmd.emu.copyPoint();
    data = ucmd.mem.read(u.uptr, len);
  }
  let iova = u.iova;
  if (u.flags & MOCK.FLAGS_ACCESS_SYZ) iova = syzIova(access, iova);
  access.rw(iova, data, write, { slowPath: (u.flags & MOCK.ACCESS_RW_SLOW_PATH) !== 0, caller: ucmd.mem });
  if (!write) {
    ucmd.emu.copyPoint();
    ucmd.mem.write(u.uptr, data);
  }
});

// SET_TEMP_MEMORY_LIMIT (03 §4.13)
registerTestOp(TEST_OP.SET_TEMP_MEMORY_LIMIT, (ucmd) => {
  const { limit } = ucmd.cmd.u as { limit: number };
  if (limit < 12) fail('EINVAL', 'limit below 12 pages');
  ucmd.emu.tempMemoryLimit = limit;
});

// ACCESS_REPLACE_IOAS (03 §4.12)
registerTestOp(TEST_OP.ACCESS_REPLACE_IOAS, (ucmd) => {
  const { ioas_id } = ucmd.cmd.u as { ioas_id: number };
  const f = staccess(ucmd, ucmd.cmd.id);
  f.access!.replace(ioas_id);
});
