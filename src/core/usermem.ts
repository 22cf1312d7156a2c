// User memory: the analogue of copy_from_user/copy_to_user and of page pinning.
// Handlers never see JS objects for user pointers; they see addresses and go
// through a UserMemory. The in-process implementation is SimMemory (simmem.ts);
// the server's reads another process's memory.
import { fail } from '../uapi/errno.js';

/** The host base page size the emulator models. */
export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;
/** Transparent/hugetlb huge page size (x86-64). */
export const HPAGE_SIZE = 2 * 1024 * 1024;

/**
 * A physical page: identity (pfn), a global long-term pin count, and content.
 * Shared memory seen by several processes resolves to the same PhysPage object.
 */
export interface PhysPage {
  /** Page frame number; physical address = pfn * PAGE_SIZE. */
  readonly pfn: number;
  /** Part of a huge (compound) page: MD_CHECK_REFS skips it. */
  readonly compound: boolean;
  /** Long-term pins held by iommufd pages objects, across every context. */
  pins: number;
  read(offset: number, length: number): Uint8Array;
  write(offset: number, data: Uint8Array): void;
}

/** The process on whose behalf memory is pinned and charged. */
export interface ProcessInfo {
  readonly pid: number;
  readonly uid: number;
  /** Effective capabilities of the calling thread, as of the current call (capable() is asked then). */
  readonly capSysResource: boolean;
  readonly capIpcLock: boolean;
  readonly capSysRawio: boolean;
  /** RLIMIT_MEMLOCK in bytes (Infinity for unlimited), read when a pin is charged to the process. */
  memlockLimit: number;
  /** Pages charged to this process (per-process accounting mode): VmLck of its /proc status. */
  lockedPages: number;
  /** Pages pinned on this process's behalf in any accounting mode (mm->pinned_vm): VmPin. */
  pinnedPages: number;
  /** False once the process exited: pinning from it then fails with EFAULT. */
  alive: boolean;
}

export interface UserMemory {
  readonly process: ProcessInfo;
  /** copy_from_user: EFAULT (IommufdError) if any byte is unmapped or unreadable. */
  read(addr: bigint, length: number): Uint8Array;
  /** copy_to_user: EFAULT if any byte is unmapped or not writable. */
  write(addr: bigint, data: Uint8Array): void;
  /**
   * The physical pages backing `npages` pages from page-aligned `addr`, as they
   * are now (the caller takes the pins). EFAULT on a hole, or when `write` is
   * asked of read-only memory. A private writable mapping that is pinned is
   * made stable (no later copy-on-write moves it).
   */
  getPages(addr: bigint, npages: number, write: boolean): PhysPage[];
  /** The file behind the caller's fd `fd` (IOAS_MAP_FILE): EBADF when it is not an open file. */
  getFile?(fd: number): FileBacking;
}

/** A file that IOAS_MAP_FILE can pin (memfd / hugetlbfs). */
export interface FileBacking {
  /** Only shmem/hugetlbfs-backed files can be pinned; others fail with EINVAL at pin time. */
  readonly pinnable: boolean;
  readonly size: bigint;
  /** Pages [index, index+npages) of the file; EFAULT beyond its end. */
  getPages(index: number, npages: number): PhysPage[];
}

/** One past the highest user address of x86-64 with 4-level paging (TASK_SIZE_MAX). */
export const USER_ADDR_END = (1n << 47n) - BigInt(PAGE_SIZE);
const U64_MAX = (1n << 64n) - 1n;

/**
 * get_user_pages / pin_user_pages as mm/gup.c checks the range first: a range
 * that wraps past 2^64 is EOVERFLOW, one beyond the user address space EFAULT;
 * then the pages as they are now.
 */
export function getUserPages(mem: UserMemory, addr: bigint, npages: number, write: boolean): PhysPage[] {
  const start = addr - (addr % BigInt(PAGE_SIZE));
  const end = start + BigInt(npages) * BigInt(PAGE_SIZE);
  if (end > U64_MAX) fail('EOVERFLOW', 'get_user_pages: range wraps around the address space');
  if (end > USER_ADDR_END) fail('EFAULT', 'get_user_pages: range beyond the user address space');
  return mem.getPages(start, npages, write);
}

/** Per-user locked-page counts (accounting mode 0), shared by all contexts of an emulator. */
export class UserAccounting {
  private readonly locked = new Map<number, number>();
  get(uid: number): number {
    return this.locked.get(uid) ?? 0;
  }
  add(uid: number, n: number): void {
    const v = this.get(uid) + n;
    if (v === 0) this.locked.delete(uid);
    else this.locked.set(uid, v);
  }
}

/** `len` bytes at `addr`, or as many as can be read (halving), or null: traces never fault the caller. */
export function tryRead(mem: UserMemory, addr: bigint, len: number): Uint8Array | null {
  for (let n = len; n > 0; n = n > 8 ? Math.floor(n / 2) : 0) {
    try {
      return mem.read(addr, n);
    } catch { /* shorter */ }
  }
  return null;
}
