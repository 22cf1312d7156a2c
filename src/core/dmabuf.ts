// dma-buf as iommufd imports it (6.19+): a buffer an exporter hands out as an fd, which
// IOAS_MAP_FILE maps by physical address (no pinning, no accounting). The exporter can
// invalidate the mappings at any time ("revoke"): iommufd then unmaps every area of every
// attachment from every domain, and those areas stay empty for good (a new MAP_FILE makes
// a new attachment). What an attachment can be used for: domains only (in-kernel accesses
// get EINVAL; an area of one cannot be split, EOPNOTSUPP).
//
// The exporter modelled here is the selftest's (IOMMU_TEST_OP_DMABUF_GET/REVOKE): zeroed
// kernel memory, physically contiguous, refusing new attachments (ENODEV) while revoked.
import { fail } from '../uapi/errno.js';
import type { Emulator } from './emulator.js';
import { POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM, type IommufdFile } from './file.js';
import type { DmabufExport, Pages } from './pages.js';
import { PFNS } from './physmem.js';
import { PAGE_SIZE, type PhysPage, type UserMemory } from './usermem.js';

const O_ACCMODE = 3;
const O_WRONLY = 1;

/** A page of exporter memory (kernel memory: its content lives here). */
class ExportPage implements PhysPage {
  readonly compound = false;
  pins = 0;
  private data: Uint8Array | null = null;
  constructor(readonly pfn: number) {}
  read(offset: number, length: number): Uint8Array {
    return this.data ? this.data.slice(offset, offset + length) : new Uint8Array(length);
  }
  write(offset: number, data: Uint8Array): void {
    (this.data ??= new Uint8Array(PAGE_SIZE)).set(data, offset);
  }
}

/** Importers of dma-bufs: every IOAS of the emulator (kernel: each attachment's revoke notification). */
export interface DmabufImporters {
  /** Unmap the live attachments of `dmabuf` everywhere, adding them to `hit`. */
  dmabufUnmap(dmabuf: object, hit: Set<Pages>): void;
}

export class DmaBuf implements IommufdFile, DmabufExport {
  readonly name = 'dmabuf';
  /** The exporter's state: new attachments get ENODEV while set. */
  revoked = false;
  private readonly pages: PhysPage[];

  /** `length` bytes (a multiple of PAGE_SIZE, at most 512 pages: one physically contiguous run). */
  /** `flags`: the file's open flags (dma_buf_fd's open_flags: O_RDONLY unless asked). */
  constructor(readonly emu: Emulator, readonly size: bigint, private readonly importers: () => Iterable<DmabufImporters>,
    private readonly flags = 0) {
    const n = Number(size) / PAGE_SIZE;
    if (!Number.isInteger(n) || n < 1 || n > 512) throw new Error(`dmabuf: bad size ${size}`);
    const base = PFNS.huge();
    this.pages = Array.from({ length: n }, (_, i) => new ExportPage(base + i));
  }

  attachPages(): PhysPage[] {
    if (this.revoked) fail('ENODEV', 'dma-buf: the exporter revoked it');
    return this.pages;
  }

  /**
   * The exporter's move notification (dma_buf_invalidate_mappings): every importer drops
   * its mappings of this buffer, whatever the exporter's new state (an un-revoke also
   * invalidates what was mapped: the attachments made before it stay empty).
   */
  invalidate(): void {
    const hit = new Set<Pages>();
    for (const imp of this.importers()) imp.dmabufUnmap(this, hit);
    for (const p of hit) p.markRevoked();
  }

  // The dma-buf file: no read or write methods; poll is ready (no fences are ever attached).
  // The VFS checks the access mode first (EBADF), then finds no method (EINVAL).
  read(_mem: UserMemory, _buf: bigint, _count: number, _pos: bigint): number {
    if ((this.flags & O_ACCMODE) === O_WRONLY) fail('EBADF', 'dma-buf: not open for reading');
    return fail('EINVAL', 'dma-buf: no read method');
  }
  write(_mem: UserMemory, _buf: bigint, _count: number, _pos: bigint): number {
    if ((this.flags & O_ACCMODE) === 0) fail('EBADF', 'dma-buf: not open for writing');
    return fail('EINVAL', 'dma-buf: no write method');
  }
  poll(): number {
    return POLLIN | POLLRDNORM | POLLOUT | POLLWRNORM;
  }
  release(): void {
    // Attachments keep the buffer; its memory goes with the last of them (garbage collected).
  }
}
