// The IOVA address space of one IOAS: areas, reserved and allowed ranges,
// automatic IOVA allocation, attached domains and accesses (01 §6).
// INTERFACE STUB: the method signatures below are the contract other modules
// (hwpt.ts, device.ts, access) rely on; the bodies are being written.
import type { PagingDomain } from '../drivers/driver.js';

export class IoPagetable {
  /** Domains (HWPT_PAGING) currently attached to this address space. */
  readonly domains: PagingDomain[] = [];

  /** Current IOVA alignment (01 §6.1). */
  get iovaAlignment(): bigint {
    throw new Error('TODO');
  }

  /**
   * Add a domain: check its smallest page size (EINVAL), raise the alignment
   * (EADDRINUSE), reserve everything outside its aperture (owner = the domain;
   * EADDRINUSE), then map every existing area into it (pins pages; ENOMEM /
   * EFAULT). Fully unwound on failure.
   */
  addDomain(domain: PagingDomain): void {
    void domain;
    throw new Error('TODO');
  }

  /** Remove a domain: unmap all areas from it, unpin what nothing else needs, drop its reservations, recompute alignment. */
  removeDomain(domain: PagingDomain): void {
    void domain;
    throw new Error('TODO');
  }

  /** Reserve [start, last] for `owner`: EADDRINUSE if it intersects an area or an allowed range. */
  reserve(start: bigint, last: bigint, owner: object): void {
    void start; void last; void owner;
    throw new Error('TODO');
  }

  /** Drop every reserved range of `owner`. */
  unreserve(owner: object): void {
    void owner;
    throw new Error('TODO');
  }

  /** Areas (fully established) overlapping [start, last], ascending. */
  areasIn(start: bigint, last: bigint): { iova: bigint; last: bigint }[] {
    void start; void last;
    throw new Error('TODO');
  }
}
