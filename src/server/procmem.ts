// User memory of a real client process, reached through /proc/<pid>/mem, and
// the server's physical-page model (spec 05 §4): shared memory is identified by
// the memfd the shim turned it into (object, page index), private memory by
// (pid, page VA). Each identity gets a stable synthetic pfn; hugetlb memory gets
// 512-aligned contiguous runs marked compound.
import * as fs from 'node:fs';
import { fail } from '../uapi/errno.js';
import { PFNS, type PfnSpace } from '../core/physmem.js';
import { HPAGE_SIZE, PAGE_SIZE, type FileBacking, type PhysPage, type ProcessInfo, type UserMemory } from '../core/usermem.js';

const PAGES_PER_HUGE = HPAGE_SIZE / PAGE_SIZE;
const TMPFS_MAGIC = 0x01021994;
const HUGETLBFS_MAGIC = 0x958458f6;
/** fs positions are JS numbers: exact up to 2^53, beyond every user address. */
const POS_MAX = 1n << 53n;
const PAGE = BigInt(PAGE_SIZE);
const HPAGE = BigInt(HPAGE_SIZE);

/** Synthetic page frame numbers, never reused: the machine's one pfn space. */
export type PfnAllocator = PfnSpace;

/** A page of private memory: (pid, VA). Content lives in the process while it is alive. */
class PrivatePage implements PhysPage {
  pins = 0;
  /** Last content seen, used once the process is gone or the page left its mapping. */
  private snapshot: Uint8Array | null = null;
  /** Unmapped or replaced while pinned: the pin keeps this page, the VA now has another. */
  private detached = false;
  constructor(readonly pfn: number, readonly compound: boolean, private readonly mem: ProcMemory, private readonly va: bigint) {}
  /** The process is about to unmap or replace the page: keep its content (as the pin keeps the page). */
  detach(): void {
    if (this.detached) return;
    try {
      this.snapshot = this.mem.read(this.va, PAGE_SIZE);
    } catch { /* unreadable: keep what we had */ }
    this.detached = true;
  }
  read(offset: number, length: number): Uint8Array {
    if (this.mem.process.alive && !this.detached) {
      try {
        const d = this.mem.read(this.va + BigInt(offset), length);
        return d;
      } catch { /* fall through */ }
    }
    return this.snapshot ? this.snapshot.slice(offset, offset + length) : new Uint8Array(length);
  }
  write(offset: number, data: Uint8Array): void {
    if (this.mem.process.alive && !this.detached) {
      try {
        this.mem.write(this.va + BigInt(offset), data);
        return;
      } catch { /* fall through */ }
    }
    (this.snapshot ??= new Uint8Array(PAGE_SIZE)).set(data, offset);
  }
}

/** A page of a shared object (memfd): content in the file the server keeps open. */
class SharedPage implements PhysPage {
  pins = 0;
  constructor(readonly pfn: number, readonly compound: boolean, private readonly obj: SharedObject, private readonly index: number) {}
  read(offset: number, length: number): Uint8Array {
    return this.obj.readAt(BigInt(this.index) * PAGE + BigInt(offset), length);
  }
  write(offset: number, data: Uint8Array): void {
    this.obj.writeAt(BigInt(this.index) * PAGE + BigInt(offset), data);
  }
}

/** A memfd (or other shared file) the server holds open: data outlives every mapping. */
export class SharedObject implements FileBacking {
  private readonly pages = new Map<number, SharedPage>();
  /** Mappings (process regions) using it. */
  mappings = 0;
  closed = false;
  constructor(readonly key: string, readonly fd: number, readonly huge: boolean, readonly pinnable: boolean,
    private readonly pfns: PfnAllocator, private readonly registry: PageRegistry) {}

  get size(): bigint {
    try {
      return BigInt(fs.fstatSync(this.fd).size);
    } catch {
      return 0n;
    }
  }

  page(index: number): SharedPage {
    let p = this.pages.get(index);
    if (p) return p;
    if (this.huge) {
      const first = index - (index % PAGES_PER_HUGE);
      const base = this.pfns.huge();
      for (let i = 0; i < PAGES_PER_HUGE; i++) this.pages.set(first + i, new SharedPage(base + i, true, this, first + i));
      p = this.pages.get(index)!;
    } else {
      p = new SharedPage(this.pfns.userPage(), false, this, index);
      this.pages.set(index, p);
    }
    return p;
  }

  getPages(index: number, npages: number): PhysPage[] {
    const size = this.size;
    if (BigInt(index + npages) * PAGE > size + PAGE - 1n) fail('EFAULT');
    const out: PhysPage[] = [];
    for (let i = 0; i < npages; i++) out.push(this.page(index + i));
    return out;
  }

  readAt(pos: bigint, length: number): Uint8Array {
    this.registry.flushInline();
    const buf = new Uint8Array(length);
    if (this.closed) return buf;
    try {
      let done = 0;
      while (done < length) {
        const n = fs.readSync(this.fd, buf, done, length - done, Number(pos) + done);
        if (n <= 0) break;
        done += n;
      }
    } catch { /* unreadable: zeros */ }
    return buf;
  }

  writeAt(pos: bigint, data: Uint8Array): void {
    this.registry.flushInline();
    if (this.closed) return;
    // hugetlbfs has no write(2): go through a live process mapping it.
    if (this.huge) {
      if (this.registry.writeViaMapping(this, pos, data)) return;
      return;
    }
    try {
      let done = 0;
      while (done < data.length) done += fs.writeSync(this.fd, data, done, data.length - done, Number(pos) + done);
    } catch { /* ignore */ }
  }

  /** Still needed: mapped somewhere, or a page pinned. */
  get busy(): boolean {
    if (this.mappings > 0) return true;
    for (const p of this.pages.values()) if (p.pins > 0) return true;
    return false;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      fs.closeSync(this.fd);
    } catch { /* ignore */ }
  }
}

interface Region {
  start: bigint;
  end: bigint;
  obj: SharedObject;
  /** File offset of `start`. */
  off: bigint;
}

interface Vma {
  start: bigint;
  end: bigint;
  /** start and end as numbers (exact below 2^53, beyond every address served) */
  s: number;
  e: number;
  perms: string;
  /** hugetlb memory (a compound page per 2 MiB) */
  huge: boolean;
}

/**
 * PROCMAP_QUERY on a /proc/<pid>/maps fd (the server addon's vmas(), native/fastpath.c):
 * the VMAs from the one covering `start` (or the next above it) up to `end`, 4 numbers
 * each in `out` (start, end, flags: 1 read, 2 write, 4 exec, 8 shared; page size).
 * Returns their count, or -errno (-ENOTTY: a kernel before 6.11).
 */
export type VmaQuery = (fd: number, start: number, end: number, out: Float64Array) => number;
const ENOTTY = 25;

/** Every shared object and private page identity the server knows. */
export class PageRegistry {
  readonly pfns = PFNS;
  private readonly objects = new Map<string, SharedObject>();
  readonly procs = new Set<ProcMemory>();
  /** The process whose ioctl struct is being served from its inline copy (at most one call runs at a time). */
  inline: ProcMemory | null = null;
  /**
   * VMA lookups by address (set when the server addon loads). Without it every
   * page lookup reads and parses the whole of /proc/<pid>/maps, which was 28% of
   * the server's time in the 6.12 selftest run (bench/RESULTS.md).
   */
  vmaQuery: VmaQuery | null = null;
  /** Reused by every vmaQuery call. */
  readonly vmaOut = new Float64Array(4 * 64);

  /**
   * Any memory access that the inline copy does not serve goes to the real
   * memory: bytes written to the copy so far are stored there first and the
   * copy is dropped for the rest of the call, so every path sees one memory.
   */
  flushInline(): void {
    this.inline?.flushInline();
  }

  /** Open `/proc/<pid>/fd/<fd>` and return the shared object it is (deduplicated by device+inode). */
  openShared(pid: number, fd: number, huge: boolean): SharedObject {
    const path = `/proc/${pid}/fd/${fd}`;
    let f: number;
    try {
      f = fs.openSync(path, 'r+');
    } catch {
      try {
        f = fs.openSync(path, 'r');
      } catch {
        fail('EBADF');
      }
    }
    const st = fs.fstatSync(f, { bigint: true });
    const key = `${st.dev}:${st.ino}`;
    const known = this.objects.get(key);
    if (known && !known.closed) {
      fs.closeSync(f);
      return known;
    }
    let link = '';
    try {
      link = fs.readlinkSync(path);
    } catch { /* ignore */ }
    // Only shmem (memfd, tmpfs) and hugetlbfs files can be pinned by IOAS_MAP_FILE.
    let fsType = 0;
    try {
      fsType = fs.statfsSync(path).type;
    } catch { /* unknown */ }
    const hugetlbfs = fsType === HUGETLBFS_MAGIC || link.includes('hugetlb');
    const pinnable = link.startsWith('/memfd:') || fsType === TMPFS_MAGIC || hugetlbfs;
    const obj = new SharedObject(key, f, huge || hugetlbfs, pinnable, this.pfns, this);
    this.objects.set(key, obj);
    return obj;
  }

  /** Close shared objects nobody maps and nothing pins. */
  collect(): void {
    for (const [k, o] of this.objects) {
      if (!o.busy) {
        o.close();
        this.objects.delete(k);
      }
    }
  }

  writeViaMapping(obj: SharedObject, pos: bigint, data: Uint8Array): boolean {
    for (const pm of this.procs) {
      if (!pm.process.alive) continue;
      const va = pm.vaOf(obj, pos, data.length);
      if (va === null) continue;
      try {
        pm.write(va, data);
        return true;
      } catch { /* try next */ }
    }
    return false;
  }
}

function parseMaps(text: string): Vma[] {
  const out: Vma[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (!m) continue;
    const path = m[4] ?? '';
    out.push({
      start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), s: parseInt(m[1]!, 16), e: parseInt(m[2]!, 16),
      perms: m[3]!, huge: path.includes('anon_hugepage') || path.includes('hugetlb'),
    });
  }
  return out;
}

/** Index of the first VMA ending above `va` (VMAs are sorted and disjoint). */
function vmaIndex(vmas: Vma[], va: number): number {
  let lo = 0;
  let hi = vmas.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (vmas[mid]!.e <= va) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * [start, end) (below 2^53) is mapped without holes, readable (perm 0) or
 * writable (perm 1) throughout. Returns the VMA holding all of it, true when
 * it spans several, false when not covered.
 */
function covered(vmas: Vma[], start: number, end: number, perm: 0 | 1): Vma | boolean {
  let i = vmaIndex(vmas, start);
  const first = vmas[i];
  let va = start;
  while (va < end) {
    const v = vmas[i++];
    if (!v || v.s > va || v.perms[perm] === '-') return false;
    va = v.e;
  }
  return first && first.e >= end ? first : true;
}

/**
 * The first bytes of an ioctl's struct as the shim read them from its own
 * memory (process_vm_readv, which honours protections) just before the call:
 * reads inside it are served from the copy, writes inside it (checked against
 * the VMAs like any write) are collected and returned with the reply, which
 * the shim applies to its memory before ioctl() returns.
 */
export interface InlineWindow {
  /** Address of data[0] (a number: user addresses are far below 2^53). */
  start: number;
  /** The copy: data[0, length) (the buffer is reused by the next call). */
  data: Uint8Array;
  length: number;
  /** Written span [lo, hi) of data (lo >= hi: nothing written). */
  lo: number;
  hi: number;
}

/** UserMemory of a live client process (one process image: a new one after exec). */
export class ProcMemory implements UserMemory {
  private fd: number;
  private readonly regions: Region[] = [];
  private readonly privatePages = new Map<bigint, PrivatePage>();
  private vmaCache: Vma[] | null = null;
  /** The VMA that last held a whole checked access (of vmaCache). */
  private lastVma: Vma | null = null;
  private mapsFd = -1;
  private gen = 0;
  private win: InlineWindow | null = null;
  private winBuf = new Uint8Array(256);

  constructor(readonly process: ProcessInfo, private readonly registry: PageRegistry) {
    this.fd = fs.openSync(`/proc/${process.pid}/mem`, 'r+');
    // Both files stay bound to this process image: after exit, exec or pid
    // reuse they read as empty instead of describing somebody else.
    try {
      this.mapsFd = fs.openSync(`/proc/${process.pid}/maps`, 'r');
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
    registry.procs.add(this);
  }

  get pid(): number {
    return this.process.pid;
  }

  /** The shim's mapping generation (bumped by its mmap/munmap/mprotect/mremap). */
  setGeneration(gen: number): void {
    if (gen !== this.gen) {
      this.gen = gen;
      this.setVmas(null);
    }
  }

  private setVmas(vmas: Vma[] | null): void {
    this.vmaCache = vmas;
    this.lastVma = null;
  }

  /**
   * /proc/<pid>/mem ignores protections (it may write read-only and read
   * PROT_NONE memory); copy_{from,to}_user do not. Check [addr, addr+length)
   * against the VMAs: cached while the shim reports no mapping change, re-read
   * on a miss.
   */
  private checkAccess(addr: bigint, length: number, perm: 0 | 1): void {
    const start = Number(addr); // the callers checked addr + length <= 2^53
    const end = start + length;
    const last = this.lastVma;
    if (last && last.s <= start && end <= last.e && last.perms[perm] !== '-') return;
    for (let attempt = 0; attempt < 2; attempt++) {
      const fresh = this.vmaCache === null;
      if (fresh) this.setVmas(this.maps());
      const c = covered(this.vmaCache!, start, end, perm);
      if (c) {
        if (c !== true) this.lastVma = c;
        return;
      }
      if (fresh) break;
      this.setVmas(null);
    }
    fail('EFAULT');
  }

  // ---- the inline copy of the current ioctl's struct ----------------------------

  /** Serve [addr, addr+length) from a copy of src[from, from+length) (the shim's) until endInline(). */
  beginInline(addr: bigint, src: Uint8Array, from: number, length: number): void {
    this.registry.flushInline();
    const start = Number(addr);
    if (length === 0 || start + length > Number(POS_MAX)) return;
    if (this.winBuf.length < length) this.winBuf = new Uint8Array(length);
    const data = this.winBuf; // read() hands out fresh slices of it
    data.set(src.subarray(from, from + length));
    this.win = { start, data, length, lo: length, hi: 0 };
    this.registry.inline = this;
  }

  /** End of the call: the copy, with the span the call wrote to it ([lo, hi)), or null. */
  endInline(): InlineWindow | null {
    const w = this.win;
    if (!w) return null;
    this.win = null;
    if (this.registry.inline === this) this.registry.inline = null;
    return w.lo < w.hi ? w : null;
  }

  /** Store what was written to the copy in the real memory; reads and writes go there from now on. */
  flushInline(): void {
    const w = this.win;
    if (!w) return;
    this.win = null;
    if (this.registry.inline === this) this.registry.inline = null;
    if (w.lo < w.hi) this.pwrite(BigInt(w.start + w.lo), w.data.subarray(w.lo, w.hi));
  }

  /** Offset of [addr, addr+length) in the inline copy, or -1 (and any copy flushed) if it is not inside. */
  private inWindow(addr: bigint, length: number): number {
    const w = this.win;
    if (w) {
      const at = Number(addr) - w.start; // exact: addresses inside are far below 2^53
      if (at >= 0 && at + length <= w.length) return at;
    }
    if (this.registry.inline) this.registry.flushInline();
    return -1;
  }

  read(addr: bigint, length: number): Uint8Array {
    if (length === 0) return new Uint8Array(0);
    const at = this.inWindow(addr, length);
    if (at >= 0) return this.win!.data.slice(at, at + length);
    const buf = new Uint8Array(length);
    if (addr < 0n || addr + BigInt(length) > POS_MAX || this.fd < 0) fail('EFAULT');
    this.checkAccess(addr, length, 0);
    let done = 0;
    try {
      while (done < length) {
        const n = fs.readSync(this.fd, buf, done, length - done, Number(addr) + done);
        if (n <= 0) break;
        done += n;
      }
    } catch {
      /* EIO: unmapped */
    }
    if (done !== length) fail('EFAULT');
    return buf;
  }

  write(addr: bigint, data: Uint8Array): void {
    if (data.length === 0) return;
    const at = this.inWindow(addr, data.length);
    if (at >= 0) {
      this.checkAccess(addr, data.length, 1);
      const w = this.win!;
      if (w.lo < w.hi && (at > w.hi || at + data.length < w.lo)) {
        // Apart from what was written so far: store that now, so the reply
        // carries written bytes only (never a stale copy of the gap between).
        this.pwrite(BigInt(w.start + w.lo), w.data.subarray(w.lo, w.hi));
        w.lo = w.length;
        w.hi = 0;
      }
      w.data.set(data, at);
      if (at < w.lo) w.lo = at;
      if (at + data.length > w.hi) w.hi = at + data.length;
      return;
    }
    if (addr < 0n || addr + BigInt(data.length) > POS_MAX || this.fd < 0) fail('EFAULT');
    try {
      this.checkAccess(addr, data.length, 1);
    } catch (e) {
      // copy_to_user stores the bytes before the first unwritable one, then fails.
      const n = this.writablePrefix(addr, data.length);
      if (n > 0) this.pwrite(addr, data.subarray(0, n));
      throw e;
    }
    if (!this.pwrite(addr, data)) fail('EFAULT');
  }

  /** How many bytes from addr are writable (by the VMAs just read). */
  private writablePrefix(addr: bigint, length: number): number {
    const vmas = this.vmaCache ?? this.maps();
    let va = Number(addr);
    const end = va + length;
    let i = vmaIndex(vmas, va);
    while (va < end) {
      const v = vmas[i++];
      if (!v || v.s > va || v.perms[1] === '-') break;
      va = v.e;
    }
    return Math.min(va, end) - Number(addr);
  }

  /** Write through /proc/<pid>/mem (access already checked); false if not every byte was stored. */
  private pwrite(addr: bigint, data: Uint8Array): boolean {
    if (this.fd < 0) return false;
    let done = 0;
    try {
      while (done < data.length) {
        const n = fs.writeSync(this.fd, data, done, data.length - done, Number(addr) + done);
        if (n <= 0) break;
        done += n;
      }
    } catch {
      /* unmapped */
    }
    return done === data.length;
  }

  private maps(): Vma[] {
    if (this.mapsFd < 0) return [];
    const chunks: Buffer[] = [];
    let pos = 0;
    try {
      for (;;) {
        const b = Buffer.allocUnsafe(65536);
        const n = fs.readSync(this.mapsFd, b, 0, b.length, pos);
        if (n <= 0) break;
        chunks.push(b.subarray(0, n));
        pos += n;
      }
    } catch {
      return [];
    }
    return parseMaps(Buffer.concat(chunks).toString('utf8'));
  }

  /**
   * The VMAs now from the one holding [start, end)'s first byte (or the next
   * above it) up to end: by PROCMAP_QUERY where there is one (only the VMAs
   * asked about), else the whole maps file (which then also refreshes the
   * access-check cache). Empty: the process image is gone (zombie or reaped).
   */
  private vmasNow(start: number, end: number): Vma[] {
    const q = this.registry.vmaQuery;
    if (q && this.mapsFd >= 0) {
      const out = this.registry.vmaOut;
      const vmas: Vma[] = [];
      for (let at = start; at < end;) {
        const n = q(this.mapsFd, at, end, out);
        if (n === -ENOTTY) {
          this.registry.vmaQuery = null; // an older kernel: the text it is, from now on
          return this.vmasNow(start, end);
        }
        if (n <= 0) break;
        for (let i = 0; i < n; i++) {
          const s = out[4 * i]!, e = out[4 * i + 1]!, f = out[4 * i + 2]!;
          vmas.push({
            start: BigInt(s), end: BigInt(e), s, e,
            perms: (f & 1 ? 'r' : '-') + (f & 2 ? 'w' : '-') + (f & 4 ? 'x' : '-') + (f & 8 ? 's' : 'p'),
            huge: out[4 * i + 3]! > PAGE_SIZE,
          });
        }
        at = out[4 * (n - 1) + 1]!;
        if (n < out.length / 4) break;
      }
      return vmas;
    }
    const vmas = this.maps();
    this.setVmas(vmas);
    return vmas;
  }

  getPages(addr: bigint, npages: number, write: boolean): PhysPage[] {
    if (!this.process.alive || addr + BigInt(npages) * PAGE > POS_MAX) fail('EFAULT');
    const vmas = this.vmasNow(Number(addr), Number(addr) + npages * PAGE_SIZE);
    if (vmas.length === 0) fail('EFAULT'); // gone (zombie or reaped), or nothing mapped there
    const out: PhysPage[] = [];
    let vi = 0;
    for (let i = 0; i < npages; i++) {
      const va = addr + BigInt(i) * PAGE;
      while (vi < vmas.length && vmas[vi]!.end <= va) vi++;
      const v = vmas[vi];
      if (!v || v.start > va) fail('EFAULT');
      if (v.perms[0] !== 'r' || (write && v.perms[1] !== 'w')) fail('EFAULT');
      const r = this.regionAt(va);
      if (r) {
        out.push(r.obj.page(Number((va - r.start + r.off) / PAGE)));
        continue;
      }
      out.push(this.privatePage(va, v.huge));
    }
    return out;
  }

  private privatePage(va: bigint, huge: boolean): PrivatePage {
    let p = this.privatePages.get(va);
    if (p) return p;
    if (huge) {
      const base = va - (va % HPAGE);
      const pfn = this.registry.pfns.huge();
      for (let i = 0; i < PAGES_PER_HUGE; i++) {
        const a = base + BigInt(i) * PAGE;
        if (!this.privatePages.has(a)) this.privatePages.set(a, new PrivatePage(pfn + i, true, this, a));
      }
      return this.privatePages.get(va)!;
    }
    p = new PrivatePage(this.registry.pfns.userPage(), false, this, va);
    this.privatePages.set(va, p);
    return p;
  }

  getFile(fd: number): FileBacking {
    if (fd < 0) fail('EBADF');
    const obj = this.registry.openShared(this.pid, fd, false);
    obj.mappings++; // held for the IOAS's lifetime (never collected)
    return obj;
  }

  // ---- shared regions (the shim's memfd-backed MAP_SHARED mappings) ----------

  private regionAt(va: bigint): Region | undefined {
    for (const r of this.regions) if (r.start <= va && va < r.end) return r;
    return undefined;
  }

  vaOf(obj: SharedObject, pos: bigint, length: number): bigint | null {
    for (const r of this.regions) {
      if (r.obj !== obj) continue;
      const va = r.start + (pos - r.off);
      if (va >= r.start && va + BigInt(length) <= r.end) return va;
    }
    return null;
  }

  addRegion(start: bigint, length: bigint, obj: SharedObject, off = 0n): void {
    this.removeRange(start, length);
    this.regions.push({ start, end: start + length, obj, off });
    obj.mappings++;
  }

  /** munmap: drop (or trim) regions overlapping [start, start+length). */
  removeRange(start: bigint, length: bigint): void {
    const end = start + length;
    for (let i = this.regions.length - 1; i >= 0; i--) {
      const r = this.regions[i]!;
      if (r.end <= start || r.start >= end) continue;
      this.regions.splice(i, 1);
      r.obj.mappings--;
      if (r.start < start) this.regions.push({ ...r, end: start }), r.obj.mappings++;
      if (r.end > end) this.regions.push({ ...r, start: end, off: r.off + (end - r.start) }), r.obj.mappings++;
    }
    // Private pages leave the VA: a pinned one lives on with its content (kernel pins hold the
    // page, not the mapping), and whatever is mapped there next is a new page.
    for (const [va, p] of [...this.privatePages]) {
      if (va < start || va >= end) continue;
      if (p.pins > 0) p.detach();
      this.privatePages.delete(va);
    }
  }

  /** The process image is gone (exit or exec): pinned pages stay, the rest is dropped. */
  exit(): void {
    this.flushInline();
    this.process.alive = false;
    for (const r of this.regions) r.obj.mappings--;
    this.regions.length = 0;
    for (const [va, p] of this.privatePages) if (p.pins === 0) this.privatePages.delete(va);
    this.registry.procs.delete(this);
    for (const fd of [this.fd, this.mapsFd]) {
      try {
        if (fd >= 0) fs.closeSync(fd);
      } catch { /* ignore */ }
    }
    this.fd = -1;
    this.mapsFd = -1;
    this.registry.collect();
  }
}
