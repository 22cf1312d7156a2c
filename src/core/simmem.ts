// In-process user memory: a sparse simulated address space with protections,
// shared/private/huge mappings, fork and exit. Used by the typed API and tests.
import { fail } from '../uapi/errno.js';
import { PFNS } from './physmem.js';
import { HPAGE_SIZE, PAGE_SHIFT, PAGE_SIZE, type PhysPage, type ProcessInfo, type UserMemory } from './usermem.js';

const PAGES_PER_HUGE = HPAGE_SIZE / PAGE_SIZE;

/** Simulated page frames, numbered from the machine's one pfn space; huge pages as aligned runs. */
export class PhysAllocator {
  alloc(): SimPage {
    return new SimPage(PFNS.userPage(), false);
  }
  /** `n` small pages on consecutive frames. */
  allocRun(n: number): SimPage[] {
    const base = PFNS.run(n);
    return Array.from({ length: n }, (_, i) => new SimPage(base + i, false));
  }
  allocHuge(): SimPage[] {
    const base = PFNS.huge();
    const run: SimPage[] = [];
    for (let i = 0; i < PAGES_PER_HUGE; i++) run.push(new SimPage(base + i, true));
    return run;
  }
}

export class SimPage implements PhysPage {
  pins = 0;
  private data: Uint8Array | null = null;
  constructor(readonly pfn: number, readonly compound: boolean) {}
  read(offset: number, length: number): Uint8Array {
    return this.data ? this.data.slice(offset, offset + length) : new Uint8Array(length);
  }
  write(offset: number, data: Uint8Array): void {
    (this.data ??= new Uint8Array(PAGE_SIZE)).set(data, offset);
  }
  copy(alloc: PhysAllocator): SimPage {
    const p = alloc.alloc();
    if (this.data) p.write(0, this.data);
    return p;
  }
}

export const PROT_READ = 1;
export const PROT_WRITE = 2;

interface Mapping {
  prot: number;
  shared: boolean;
  huge: boolean;
  /** Private writable page pinned long-term: copy-on-write no longer moves it. */
  page: SimPage | null;
}

export interface MmapOptions {
  prot?: number;
  shared?: boolean;
  hugetlb?: boolean;
  /**
   * Back the mapping now with physically contiguous small pages (as a contiguous
   * allocator would); ordinary pages are faulted in one by one and never adjacent.
   */
  contiguous?: boolean;
}

let nextPid = 1000;

export function defaultProcess(over: Partial<ProcessInfo> = {}): ProcessInfo {
  return {
    pid: nextPid++, uid: 0, capSysResource: true, capIpcLock: true, capSysRawio: true,
    memlockLimit: Infinity, lockedPages: 0, pinnedPages: 0, alive: true, ...over,
  };
}

export class SimMemory implements UserMemory {
  private readonly pages = new Map<number, Mapping>();
  private nextVa = 0x7f0000000000;

  constructor(readonly process: ProcessInfo = defaultProcess(), readonly phys = new PhysAllocator()) {}

  /** mmap(2)-like: returns the base address. `addr` fixes the placement (MAP_FIXED). */
  mmap(length: number | bigint, opts: MmapOptions = {}, addr?: bigint): bigint {
    const len = Number(length);
    const align = opts.hugetlb ? HPAGE_SIZE : PAGE_SIZE;
    const size = Math.ceil(len / align) * align;
    let base: number;
    if (addr !== undefined) {
      base = Number(addr);
      if (base % PAGE_SIZE) throw new Error(`mmap: address 0x${addr.toString(16)} is not page aligned`);
      this.munmap(addr, size);
    } else {
      base = Math.ceil(this.nextVa / align) * align;
      this.nextVa = base + size + PAGE_SIZE; // leave a guard hole
    }
    const prot = opts.prot ?? PROT_READ | PROT_WRITE;
    const first = base / PAGE_SIZE;
    for (let i = 0; i < size / PAGE_SIZE; i++) {
      this.pages.set(first + i, { prot, shared: !!opts.shared, huge: !!opts.hugetlb, page: null });
    }
    if (opts.contiguous && !opts.hugetlb) {
      const run = this.phys.allocRun(size / PAGE_SIZE);
      run.forEach((p, i) => (this.pages.get(first + i)!.page = p));
    }
    if (opts.hugetlb) {
      for (let i = 0; i < size / PAGE_SIZE; i += PAGES_PER_HUGE) {
        const run = this.phys.allocHuge();
        for (let j = 0; j < PAGES_PER_HUGE; j++) this.pages.get(first + i + j)!.page = run[j]!;
      }
    }
    return BigInt(base);
  }

  munmap(addr: bigint, length: number | bigint): void {
    const first = Number(addr) / PAGE_SIZE;
    const n = Math.ceil(Number(length) / PAGE_SIZE);
    for (let i = 0; i < n; i++) this.pages.delete(first + i);
  }

  mprotect(addr: bigint, length: number | bigint, prot: number): void {
    const first = Number(addr) / PAGE_SIZE;
    const n = Math.ceil(Number(length) / PAGE_SIZE);
    for (let i = 0; i < n; i++) {
      const m = this.pages.get(first + i);
      if (m) m.prot = prot;
    }
  }

  /** fork(2): shared mappings share pages, private ones are copied. */
  fork(): SimMemory {
    const child = new SimMemory(defaultProcess({
      uid: this.process.uid, capSysResource: this.process.capSysResource, capIpcLock: this.process.capIpcLock,
      capSysRawio: this.process.capSysRawio, memlockLimit: this.process.memlockLimit,
    }), this.phys);
    child.nextVa = this.nextVa;
    for (const [idx, m] of this.pages) {
      const page = m.page && !m.shared ? m.page.copy(this.phys) : m.page;
      child.pages.set(idx, { ...m, page });
    }
    return child;
  }

  /** The process exits: its address space goes away. */
  exit(): void {
    this.pages.clear();
    this.process.alive = false;
  }

  private mapping(idx: number, need: number): Mapping {
    const m = this.pages.get(idx);
    if (!m || (m.prot & need) !== need) fail('EFAULT', 'user memory not mapped with the needed protection');
    return m;
  }

  private page(m: Mapping): SimPage {
    return (m.page ??= this.phys.alloc());
  }

  private access(addr: bigint, length: number, need: number, fn: (p: SimPage, off: number, done: number, n: number) => void): void {
    if (length === 0) return;
    if (addr < 0n || addr + BigInt(length) > 1n << 64n) fail('EFAULT', 'user address range wraps past 2^64');
    let a = Number(addr);
    let done = 0;
    // Check the whole range first so a fault leaves nothing half-written.
    for (let idx = Math.floor(a / PAGE_SIZE); idx <= Math.floor((a + length - 1) / PAGE_SIZE); idx++) this.mapping(idx, need);
    while (done < length) {
      const off = a % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, length - done);
      fn(this.page(this.mapping(Math.floor(a / PAGE_SIZE), need)), off, done, n);
      a += n;
      done += n;
    }
  }

  read(addr: bigint, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.access(addr, length, PROT_READ, (p, off, done, n) => out.set(p.read(off, n), done));
    return out;
  }

  write(addr: bigint, data: Uint8Array): void {
    this.access(addr, data.length, PROT_WRITE, (p, off, done, n) => p.write(off, data.subarray(done, done + n)));
  }

  getPages(addr: bigint, npages: number, write: boolean): PhysPage[] {
    if (!this.process.alive) fail('EFAULT', 'the process is gone');
    const first = Number(addr >> BigInt(PAGE_SHIFT));
    const out: PhysPage[] = [];
    for (let i = 0; i < npages; i++) out.push(this.page(this.mapping(first + i, write ? PROT_READ | PROT_WRITE : PROT_READ)));
    return out;
  }

  /** Convenience for tests: write a little-endian struct buffer at a fresh allocation. */
  alloc(length: number): bigint {
    return this.mmap(Math.max(length, 1));
  }
}
