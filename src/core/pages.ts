// Pages objects (the kernel's iopt_pages): the memory one MAP / MAP_FILE
// describes, shared by every area cut from it (IOAS_COPY, VFIO v1 splits).
//
// Pinning is lazy: nothing is pinned, or even looked at, until a domain or an
// in-kernel access needs the pages. A pinned page carries exactly one long-term
// pin per pages object however many users (area fills, access pins) need it;
// users are counted per page inside the pages object and the pin is dropped
// with the last one. Pinned pages are charged to the owner's memlock budget
// (per user or per process, 05 §4) when pinned and uncharged when unpinned.
import { XaShape } from './fault_inject.js';
import { fail } from '../uapi/errno.js';
import type { Emulator } from './emulator.js';
import { PHYS } from './physmem.js';
import { getUserPages, PAGE_SHIFT, PAGE_SIZE, type FileBacking, type PhysPage, type ProcessInfo, type UserMemory } from './usermem.js';

const PS = BigInt(PAGE_SIZE);

export enum AccountMode {
  /** Created by a CAP_IPC_LOCK caller: never charged. */
  NONE = 0,
  /** Charged to the owner's uid (IOMMU_OPTION_RLIMIT_MODE 0). */
  USER = 1,
  /** Charged to the owner process (RLIMIT_MODE 1). */
  MM = 2,
}

/** A file source, with the process its pins are charged to (IOAS_CHANGE_PROCESS may change it). */
interface FileSource {
  readonly file: FileBacking;
  owner: ProcessInfo;
}

/**
 * What an importer sees of a dma-buf (core/dmabuf.ts): its size, and for an attachment
 * the physical pages the exporter hands out (kernel memory, never pinned or charged).
 */
export interface DmabufExport {
  readonly size: bigint;
  /** The exporter's pages for a new attachment: ENODEV once revoked, EOPNOTSUPP for a foreign exporter. */
  attachPages(): PhysPage[];
}

/** A dma-buf attachment: the buffer, its pages as mapped at attach time, and the importer's revoked state. */
interface DmabufSource {
  readonly dmabuf: DmabufExport;
  readonly pages: PhysPage[];
  readonly owner: ProcessInfo;
  revoked: boolean;
}

interface Slot {
  page: PhysPage;
  users: number;
}

/** Pages the memlock limit (bytes) allows. */
function limitPages(limit: number): number {
  return limit === Infinity ? Infinity : Math.floor(limit / PAGE_SIZE);
}

// There is a pages object per MAP, and there may be millions of them, so a
// pages object keeps few fields: no Emulator reference (the callers that pin
// pass theirs), no length (its areas bound every index used), one source field,
// and Pages.bits: the first page's start byte in the low PAGE_SHIFT bits, then
// the flags and the accounting mode.
const START_BYTE_MASK = PAGE_SIZE - 1;
const WRITABLE = 1 << PAGE_SHIFT;
/** The source is a FileSource (else a UserMemory). */
const FILE = WRITABLE << 1;
/** The source is a DmabufSource. */
const DMABUF = FILE << 1;
const ACCOUNT_SHIFT = PAGE_SHIFT + 3;

/** Who pins: the pfn_reader filling a domain, or an in-kernel access. */
export type PinHow = 'reader' | 'access';

/**
 * temp_kmalloc() without a backup buffer: iommufd's own point (ENOMEM), then a kmalloc that
 * may fail quietly (NORETRY) and is retried with one page, whose failure is ENOMEM.
 */
function tempKmalloc(emu: Emulator): void {
  emu.iommufdPoint('ENOMEM');
  if (emu.faults.slab()) emu.allocPoint();
}

export class Pages {
  /** Pinned page slots by index; allocated on first pin. */
  private slots: Map<number, Slot> | null = null;
  /** The kernel's pinned_pfns xarray (pages held for in-kernel accesses): its shape, users per index. */
  private pinnedXa: { shape: XaShape; users: Map<number, number> } | null = null;
  /**
   * The user memory or the file the pages come from (the FILE bit tells
   * which). User memory pages are charged to the memory's own process, so only
   * a file source needs to carry an owner.
   */
  private readonly source: UserMemory | FileSource | DmabufSource;
  /**
   * Page number of the first page: user VA / PAGE_SIZE or file offset / PAGE_SIZE.
   * A number, not a bigint: it is below 2^52, and a (boxed) number is smaller.
   */
  private readonly basePage: number;
  /** Start byte, WRITABLE, FILE and AccountMode (layout above). */
  private bits: number;

  private constructor(
    source: UserMemory | FileSource | DmabufSource,
    isFile: boolean,
    /** Byte address (user VA or file offset) of the mapping's first byte. */
    start: bigint,
    writable: boolean,
  ) {
    this.source = source;
    this.basePage = Number(start / PS);
    const startByte = Number(start % PS);
    const dma = 'dmabuf' in source;
    const owner = isFile || dma ? (source as FileSource | DmabufSource).owner : (source as UserMemory).process;
    // A dma-buf does not use pinned-page accounting.
    const mode = owner.capIpcLock || dma ? AccountMode.NONE : AccountMode.USER;
    this.bits = startByte | (writable ? WRITABLE : 0) | (isFile ? FILE : 0) | (dma ? DMABUF : 0) | (mode << ACCOUNT_SHIFT);
  }

  /** Offset of the mapping's first byte inside the first page. */
  get startByte(): number {
    return this.bits & START_BYTE_MASK;
  }

  get writable(): boolean {
    return (this.bits & WRITABLE) !== 0;
  }

  get accountMode(): AccountMode {
    return this.bits >>> ACCOUNT_SHIFT;
  }
  set accountMode(mode: AccountMode) {
    this.bits = (this.bits & ((1 << ACCOUNT_SHIFT) - 1)) | (mode << ACCOUNT_SHIFT);
  }

  /** Accounting target: the process (MM) or its uid (USER). */
  get owner(): ProcessInfo {
    return this.bits & (FILE | DMABUF) ? (this.source as FileSource).owner : (this.source as UserMemory).process;
  }
  set owner(owner: ProcessInfo) {
    // IOAS_CHANGE_PROCESS refuses user memory pages (EINVAL) before moving any.
    if (!(this.bits & FILE)) throw new Error('pages: user memory pages cannot change owner');
    (this.source as FileSource).owner = owner;
  }

  /** Page-aligned user VA or file offset of the first page. */
  get base(): bigint {
    return BigInt(this.basePage) * PS;
  }

  /** User memory the pages come from (null for a file). */
  get mem(): UserMemory | null {
    return this.bits & (FILE | DMABUF) ? null : (this.source as UserMemory);
  }

  /** File the pages come from (null for user memory). */
  get file(): FileBacking | null {
    return this.bits & FILE ? (this.source as FileSource).file : null;
  }

  /**
   * Describe `length` bytes of user memory at `uptr` (nothing is read yet):
   * EOVERFLOW when uptr + length wraps, EINVAL for an empty or absurd length (in the profile's order).
   */
  static user(emu: Emulator, mem: UserMemory, uptr: bigint, length: bigint, writable: boolean): Pages {
    // 6.12's iopt_alloc_pages checks the length first; iopt_alloc_user_pages (the file-mapping
    // series) checks uptr + length before handing the length to iopt_alloc_pages.
    const wraps = uptr + length > (1n << 64n) - 1n;
    if (wraps && emu.profile.userRangeBeforeLength) fail('EOVERFLOW', 'uptr + length wraps past 2^64 (before the length check)');
    Pages.checkLength(length);
    if (wraps) fail('EOVERFLOW', 'uptr + length wraps past 2^64 (after the length check)');
    emu.allocPoint();
    return new Pages(mem, false, uptr, writable);
  }

  /** Describe `length` bytes of `file` from byte `start`. */
  static file(emu: Emulator, file: FileBacking, start: bigint, length: bigint, writable: boolean, owner: ProcessInfo): Pages {
    Pages.checkLength(length);
    emu.allocPoint();
    return new Pages({ file, owner }, true, start, writable);
  }

  /** iopt_alloc_pages: the length is checked (EINVAL) before the address range (EOVERFLOW). */
  private static checkLength(length: bigint): void {
    if (length === 0n || length > (1n << 64n) - 1n - PS) fail('EINVAL', 'length is 0 or too large');
  }

  /** The dma-buf this object is an attachment of (null for user memory and files). */
  get dmabuf(): DmabufExport | null {
    return this.bits & DMABUF ? (this.source as DmabufSource).dmabuf : null;
  }

  /**
   * A dma-buf attachment whose mappings were invalidated by the exporter: nothing is
   * mapped from it any more, and nothing ever will be (a new MAP_FILE makes a new one).
   */
  get revoked(): boolean {
    return this.bits & DMABUF ? (this.source as DmabufSource).revoked : false;
  }

  /** The exporter invalidated the mappings (the importer unmaps them first, io_pagetable.ts). */
  markRevoked(): void {
    (this.source as DmabufSource).revoked = true;
  }

  /**
   * An attachment of `dmabuf` describing `length` bytes from byte `start` (IOAS_MAP_FILE of a
   * dma-buf fd): EINVAL past its end; ENODEV/EOPNOTSUPP from the exporter.
   */
  static dmabuf(emu: Emulator, dmabuf: DmabufExport, start: bigint, length: bigint, writable: boolean,
    owner: ProcessInfo): Pages {
    if (dmabuf.size <= start + length - 1n || length / PS >= 1n << 32n) fail('EINVAL', 'MAP_FILE: beyond the dma-buf');
    Pages.checkLength(length);
    emu.allocPoint(); // iopt_pages
    emu.allocPoint(); // the attachment
    const pages = dmabuf.attachPages();
    return new Pages({ dmabuf, pages, owner, revoked: false }, false, start, writable);
  }


  get isFile(): boolean {
    return (this.bits & FILE) !== 0;
  }

  /** Number of pages this object currently pins (and has charged). */
  get npinned(): number {
    return this.slots?.size ?? 0;
  }

  /** The runs [a, b] of indices in [first, last] nobody pins yet, ascending. */
  private unpinnedRuns(first: number, last: number): [number, number][] {
    const slots = this.slots;
    const runs: [number, number][] = [];
    for (let i = first; i <= last; i++) {
      if (slots?.has(i)) continue;
      let j = i;
      while (j < last && !slots?.has(j + 1)) j++;
      runs.push([i, j]);
      i = j;
    }
    return runs;
  }

  /** The page pinned at `index`, if any. */
  pinned(index: number): PhysPage | undefined {
    return this.slots?.get(index)?.page;
  }

  /** Read the current backing of pages [index, index+n) from the source, without pinning. */
  private fetch(index: number, n: number, forWrite: boolean): PhysPage[] {
    if (this.bits & DMABUF) {
      const src = this.source as DmabufSource;
      if (src.revoked) throw new Error('pages: fetch from a revoked dma-buf attachment');
      return src.pages.slice(this.basePage + index, this.basePage + index + n);
    }
    const mem = this.mem;
    if (mem) {
      if (!mem.process.alive) fail('EFAULT', 'source process is gone');
      return getUserPages(mem, BigInt(this.basePage + index) * PS, n, forWrite);
    }
    const file = this.file!;
    if (!file.pinnable) fail('EINVAL', 'file cannot be pinned');
    // memfd_pin_folios: the last byte of the last page must lie before i_size (a partial
    // last page, or pages past a truncation, are refused).
    if (BigInt(this.basePage + index + n) * PS > file.size) fail('EINVAL', 'file pin past the end of the file');
    return file.getPages(this.basePage + index, n);
  }

  /**
   * Add one user to every page of [first, last], pinning (and charging) the
   * ones not pinned yet. Returns the pages. On error nothing changed:
   * EFAULT (bad or gone source memory), EINVAL (unpinnable file), ENOMEM (memlock limit).
   * `emu` is the pinning IOAS's emulator (fault injection, per-user accounting).
   */
  pin(emu: Emulator, first: number, last: number, how: PinHow = 'reader'): PhysPage[] {
    const holes = this.unpinnedRuns(first, last);
    if (how === 'reader') this.readerPoints(emu, first, last, holes);
    else this.accessPoints(emu, first, last, holes);
    const slots = (this.slots ??= new Map());
    const n = last - first + 1;
    const out: PhysPage[] = new Array(n);
    // Fetch every missing run first; nothing is committed until all succeeded.
    const fresh: [number, PhysPage[]][] = [];
    let missing = 0;
    for (let i = first; i <= last;) {
      const s = slots.get(i);
      if (s) {
        out[i - first] = s.page;
        i++;
        continue;
      }
      let j = i;
      while (j < last && !slots.has(j + 1)) j++;
      const pages = this.fetch(i, j - i + 1, this.writable);
      fresh.push([i, pages]);
      missing += pages.length;
      i = j + 1;
    }
    // Exporter memory (a dma-buf) is neither pinned nor charged.
    const dma = (this.bits & DMABUF) !== 0;
    if (!dma) chargeLocked(emu, this.owner, this.accountMode, missing);
    for (let i = first; i <= last; i++) {
      const s = slots.get(i);
      if (s) s.users++;
    }
    for (const [start, pages] of fresh) {
      for (let k = 0; k < pages.length; k++) {
        const page = pages[k]!;
        slots.set(start + k, { page, users: 1 });
        if (!dma && page.pins++ === 0) PHYS.add(page);
        out[start + k - first] = page;
      }
    }
    if (how === 'access') this.accessPinned(first, last);
    return out;
  }

  /**
   * The fault points of the kernel's pfn_reader filling a domain (iopt_area_fill_domain(s)):
   * its batch buffer, then for the pages no one pins yet the user-pin buffer, each pin call
   * (the buffer holds TEMP_MEMORY_LIMIT bytes of page pointers, the selftest can shrink it),
   * and the pinned-page accounting. Each temporary buffer is a temp_kmalloc(): iommufd's own
   * point (ENOMEM), then a kmalloc that may fail quietly (retried with one page).
   */
  private readerPoints(emu: Emulator, first: number, last: number, holes: readonly [number, number][], account = true): void {
    const limit = emu.tempMemoryLimit;
    tempKmalloc(emu);
    if (holes.length === 0 || this.bits & DMABUF) return;
    tempKmalloc(emu);
    const chunk = Math.max(1, Math.floor(Math.min((last - first + 1) * 8, limit) / 8));
    for (const [a, b] of holes) {
      for (let n = b - a + 1; n > 0; n -= chunk) emu.iommufdPoint('EFAULT'); // pfn_reader_user_pin()
    }
    if (account) emu.iommufdPoint('ENOMEM'); // the pinned-page accounting update
  }

  /**
   * The fault points of iopt_area_add_access() (iopt_pages_fill_xarray()): the access's
   * node, one pin call per range nobody pins yet (the caller's page array holds them all),
   * every range stored into the pinned-pfn xarray (iommufd's point halfway, EINVAL; the
   * xarray's nodes), then the accounting.
   */
  private accessPoints(emu: Emulator, first: number, last: number, holes: readonly [number, number][]): void {
    emu.allocPoint(); // the iopt_pages_access
    const xa = (this.pinnedXa ??= { shape: new XaShape(), users: new Map() });
    for (let h = 0; h < holes.length; h++) emu.iommufdPoint('EFAULT'); // pfn_reader_user_pin()
    // Spans not in the xarray yet (pinned by a domain, or just pinned) go into it; on a
    // failure the stores are undone.
    const stored: number[] = [];
    try {
      for (let i = first; i <= last; i++) {
        if (xa.users.has(i)) continue;
        let j = i;
        while (j < last && !xa.users.has(j + 1)) j++;
        const half = i + Math.floor((j - i + 1) / 2);
        for (let k = i; k <= j; k++) {
          if (k === half) emu.iommufdPoint('EINVAL');
          emu.faults.xaStore(xa.shape, k);
          stored.push(k);
        }
        i = j;
      }
      if (holes.length) emu.iommufdPoint('ENOMEM'); // the pinned-page accounting update
    } catch (e) {
      for (const k of stored) xa.shape.erase(k);
      throw e;
    }
  }

  /** An access now holds [first, last]: they are in the pinned-pfn xarray. */
  private accessPinned(first: number, last: number): void {
    const xa = this.pinnedXa!;
    for (let i = first; i <= last; i++) {
      xa.users.set(i, (xa.users.get(i) ?? 0) + 1);
      xa.shape.store(i);
    }
  }

  /** An access's pin of [first, last] is gone: indices no access holds leave the pinned-pfn xarray. */
  accessUnpinned(first: number, last: number): void {
    const xa = this.pinnedXa;
    if (!xa) return;
    for (let i = first; i <= last; i++) {
      const u = (xa.users.get(i) ?? 0) - 1;
      if (u > 0) xa.users.set(i, u);
      else {
        xa.users.delete(i);
        xa.shape.erase(i);
      }
    }
  }

  /** Add one user to pages that are already pinned (never fails). */
  addUsers(first: number, last: number): void {
    for (let i = first; i <= last; i++) {
      const s = this.slots?.get(i);
      if (!s) throw new Error(`pages: addUsers on unpinned index ${i}`);
      s.users++;
    }
  }

  /** Drop one user from every page of [first, last]; the last user unpins and uncharges. */
  unpin(emu: Emulator, first: number, last: number): void {
    const slots = this.slots;
    if (!slots) throw new Error('pages: unpin of nothing pinned');
    // Unpinning goes through a pfn batch with a stack backup (batch_init_backup()): its
    // kmalloc is a point whose failure is absorbed; only when something is unpinned.
    for (let i = first; i <= last; i++) {
      if (slots.get(i)?.users === 1) {
        emu.faults.slab();
        break;
      }
    }
    let freed = 0;
    for (let i = first; i <= last; i++) {
      const s = slots.get(i);
      if (!s) throw new Error(`pages: unpin of unpinned index ${i}`);
      if (--s.users === 0) {
        slots.delete(i);
        if (!(this.bits & DMABUF) && --s.page.pins === 0) PHYS.remove(s.page);
        freed++;
      }
    }
    if (!(this.bits & DMABUF)) unchargeLocked(emu, this.owner, this.accountMode, freed);
    if (slots.size === 0) this.slots = null;
  }

  /** Indices in [first, last] that are pinned, ascending, at most `limit` of them (inspection). */
  pinnedIndices(first: number, last: number, limit: number): number[] {
    const slots = this.slots;
    const out: number[] = [];
    if (!slots) return out;
    if (slots.size < last - first + 1) {
      for (const i of slots.keys()) if (i >= first && i <= last) out.push(i);
      out.sort((a, b) => a - b);
      return out.slice(0, limit);
    }
    for (let i = first; i <= last && out.length < limit; i++) if (slots.has(i)) out.push(i);
    return out;
  }

  /** Users of page `index` (tests and invariants). */
  usersOf(index: number): number {
    return this.slots?.get(index)?.users ?? 0;
  }

  /**
   * CPU access to `data.length` bytes at byte `offset` of the object (offset 0
   * = first byte of the first page). Pinned pages are used as they are; others
   * are looked up in the source now (EFAULT when gone). `caller` is the process
   * doing the access: when it is the source process and `slowPath` is off, the
   * bytes are copied through its address space directly (as copy_to/from_user).
   */
  rw(emu: Emulator, offset: bigint, data: Uint8Array, write: boolean, caller: UserMemory | null, slowPath: boolean): void {
    if (write && !this.writable) fail('EPERM', 'write to pages mapped read-only');
    if (this.bits & DMABUF) fail('EINVAL', 'access rw: dma-buf memory');
    const mem = this.mem;
    if (mem && !slowPath && caller && caller.process === mem.process) {
      emu.copyPoint(); // the fast path copies from/to the source VA
      const va = this.base + offset;
      if (write) mem.write(va, data);
      else data.set(mem.read(va, data.length));
      return;
    }
    // One page (iopt_pages_rw_page): the page mapped at the VA now, whatever is pinned —
    // but only while the source mm lives (mmget_not_zero); once it is gone, or for several
    // pages: the pinned pages where there are some (pfn_reader), else the current ones.
    const single = !!mem && mem.process.alive && data.length > 0 &&
      (offset / PS) === ((offset + BigInt(data.length) - 1n) / PS);
    if (single) emu.iommufdPoint('EINVAL'); // iopt_pages_rw_page()
    else if (data.length > 0) {
      // iopt_pages_rw_slow(): a pfn_reader over the range (its pins are dropped batch by batch).
      const first = Number(offset / PS);
      const last = Number((offset + BigInt(data.length) - 1n) / PS);
      this.readerPoints(emu, first, last, this.unpinnedRuns(first, last), false);
    }
    // Several pages (iopt_pages_rw_slow): the pfn reader fills its whole batch, pinning what is not
    // pinned yet, before batch_rw copies a byte, so a page that cannot be had fails the call with
    // nothing copied. (Its batch holds thousands of pages, more than a selftest access may ask for.)
    const pages: PhysPage[] = [];
    for (let done = 0; done < data.length;) {
      const byte = offset + BigInt(done);
      const index = Number(byte / PS);
      pages.push((single ? undefined : this.pinned(index)) ?? this.fetch(index, 1, write)[0]!);
      done += Math.min(PAGE_SIZE - Number(byte % PS), data.length - done);
    }
    let done = 0;
    for (const page of pages) {
      const off = Number((offset + BigInt(done)) % PS);
      const n = Math.min(PAGE_SIZE - off, data.length - done);
      if (write) page.write(off, data.subarray(done, done + n));
      else data.set(page.read(off, n), done);
      done += n;
    }
  }
}

/**
 * Charge `n` pinned pages to `owner` under `mode`: ENOMEM over RLIMIT_MEMLOCK, nothing changed.
 * The limit is the owner's at this moment (task_rlimit of the source task); CAP_IPC_LOCK
 * only matters when the pages object was created (mode NONE). Every mode counts the pages
 * in the owner's pinned total (VmPin).
 */
export function chargeLocked(emu: Emulator, owner: ProcessInfo, mode: AccountMode, n: number): void {
  if (n === 0) return;
  switch (mode) {
    case AccountMode.NONE:
      break;
    case AccountMode.USER: {
      const cur = emu.userAccounting.get(owner.uid);
      if (cur + n > limitPages(owner.memlockLimit)) fail('ENOMEM', 'RLIMIT_MEMLOCK (per-user accounting)');
      emu.userAccounting.add(owner.uid, n);
      break;
    }
    case AccountMode.MM:
      if (owner.lockedPages + n > limitPages(owner.memlockLimit)) fail('ENOMEM', 'RLIMIT_MEMLOCK (per-process accounting)');
      owner.lockedPages += n;
      break;
  }
  owner.pinnedPages += n;
}

export function unchargeLocked(emu: Emulator, owner: ProcessInfo, mode: AccountMode, n: number): void {
  if (n === 0) return;
  if (mode === AccountMode.USER) emu.userAccounting.add(owner.uid, -n);
  else if (mode === AccountMode.MM) owner.lockedPages -= n;
  owner.pinnedPages -= n;
}
