// The trace bus: every decision of the core that a debugger wants to see --
// objects made and destroyed, references taken and dropped (holder -> target),
// attachments, IOAS areas and pins, invalidations, faults and vEVENTs, fds,
// every ioctl with its struct, and every failing check with its reason.
//
// Zero cost when nobody listens: each emit site is guarded by `bus.on`, a plain
// boolean, so no event object is built unless a subscriber exists. Subscribers
// (the --trace printer, the inspector, tests) run synchronously inside the
// emitting call and must not call back into the emulator's handlers.
import { errnoWatch, type ErrnoName, type IommufdError } from '../uapi/errno.js';

/** Who holds a reference: an object of the same context, or something else (a file, an mmap, the binder). */
export type HolderDesc = { readonly obj: number; readonly kind: string } | { readonly label: string };

/**
 * Reference kinds (the graph's edge kinds):
 * bind     the binder of a DEVICE (selftest object, VFIO device)
 * attach   DEVICE -> HWPT it is attached to (one per PASID)
 * attachment  the attachment's own reference on the DEVICE
 * ioas     HWPT_PAGING -> its IOAS;  access: ACCESS -> its IOAS
 * parent   HWPT_NESTED / vIOMMU -> the nesting parent HWPT_PAGING
 * viommu   HWPT_NESTED / vDEVICE / vEVENTQ / HW_QUEUE -> their vIOMMU
 * device   vDEVICE -> its DEVICE (6.17+)
 * fault    HWPT -> its FAULT queue
 * file     an fd's file -> FAULT / vEVENTQ
 * mmap     a mapping of the iommufd -> the region's owner
 * depend   HW_QUEUE -> the queue it depends on
 * owner    the creator of an in-kernel ACCESS
 * shortterm  a lookup held for the duration of one ioctl
 */
export type RefKind = 'bind' | 'attach' | 'attachment' | 'ioas' | 'access' | 'parent' | 'viommu' | 'device' | 'fault' |
  'file' | 'mmap' | 'depend' | 'owner' | 'shortterm' | 'unknown';

export type TraceEvent =
  /** A context (one open /dev/iommu) was opened or released (its last reference dropped). */
  | { t: 'ctx'; op: 'open' | 'release'; ctx: number; pid: number }
  /** Object lifecycle: alloc = ID reserved, finalize = published, abort = half-made object undone. */
  | { t: 'obj'; op: 'alloc' | 'finalize' | 'abort' | 'destroy' | 'tombstone'; ctx: number; id: number; kind: string }
  | { t: 'ref'; op: 'get' | 'put'; ctx: number; id: number; kind: string; ref: RefKind; holder: HolderDesc; users: number }
  | { t: 'attach'; op: 'attach' | 'replace' | 'detach'; ctx: number; dev: number; pasid: number; hwpt: number; old?: number }
  /** IOAS-level operations (the ioctl's effect): map, map_file, copy, unmap. */
  | { t: 'ioas'; op: 'map' | 'map_file' | 'copy' | 'unmap'; ctx: number; ioas: number; iova: bigint; length: bigint;
    src?: number; srcIova?: bigint }
  /** An area entered or left the IOAS (split: cut in two at `at`). */
  | { t: 'area'; op: 'add' | 'remove' | 'split'; ctx: number; ioas: number; iova: bigint; last: bigint; at?: bigint }
  /** Pages pinned or unpinned for an area: by the attached domains, or by an in-kernel access (lock = HW queue). */
  | { t: 'pin'; op: 'pin' | 'unpin'; ctx: number; ioas: number; iova: bigint; last: bigint; by: 'domain' | 'access';
    lock?: boolean }
  | { t: 'invalidate'; ctx: number; target: 'hwpt' | 'viommu'; id: number; dataType: number; entries: number;
    handled: number; errno?: ErrnoName }
  | { t: 'fault'; op: 'report' | 'drop' | 'respond'; ctx: number; dev: number; pasid: number; grpid: number;
    addr?: bigint; fault?: number; code?: number }
  | { t: 'vevent'; ctx: number; viommu: number; veventq: number; type: number; sequence: number; lost: boolean }
  | { t: 'fd'; op: 'open' | 'close'; ctx: number; fd?: number; file: string; obj: number }
  | { t: 'mmap'; op: 'map' | 'unmap'; ctx: number; owner: number; offset: bigint; length: bigint }
  /** A check failed (thrown; it may still be caught, e.g. an incompatible auto-domain). */
  | { t: 'fail'; ctx: number; op?: string; errno: ErrnoName; reason: string }
  /** An ioctl starts (the events until its `ioctl` event happen inside it). */
  | { t: 'begin'; ctx: number; pid: number; name?: string }
  /**
   * One ioctl, emitted when it returns: the caller's struct as passed and as
   * read back afterwards (null: unreadable / not a struct), the result.
   */
  | { t: 'ioctl'; ctx: number; pid: number; tid?: number; request: number; name?: string; typed: boolean;
    /** A VFIO group or device file's ioctl (absent: an iommufd's, or the container's). */
    file?: 'group' | 'device';
    inBytes: Uint8Array | null; outBytes: Uint8Array | null; ret?: number; errno?: ErrnoName; reason?: string }
  /** Operations outside the core seen by a front end (the server: open, read/write of event fds, mmap). */
  | { t: 'note'; pid: number; tid: number; text: string }
  /** Driver trace points (hardware models), carried as they are. */
  | { t: 'driver'; driver: string; point: string; ctx?: number; data: Record<string, unknown> };

export type TraceListener = (e: TraceEvent) => void;

export interface SubscribeOptions {
  /**
   * The `driver` events (hardware trace points: many per DMA) the listener
   * wants: all (true, the default), none (false), or those of the named
   * drivers. Drivers build a record only while some listener wants it.
   */
  readonly drivers?: boolean | readonly string[];
}

export class TraceBus {
  /** True while anyone listens: every emit site checks it first. */
  on = false;
  /** True while some listener wants some driver's events (then ask wants()). */
  driversOn = false;
  /** Bumped at every subscribe/unsubscribe: drivers cache wants() against it. */
  generation = 0;
  private listeners: { fn: TraceListener; drivers: boolean | ReadonlySet<string> }[] = [];

  /** Add a listener; returns the function that removes it. */
  subscribe(fn: TraceListener, opts: SubscribeOptions = {}): () => void {
    const d = opts.drivers ?? true;
    const entry = { fn, drivers: typeof d === 'boolean' ? d : new Set(d) };
    this.listeners = [...this.listeners, entry];
    this.update();
    return () => {
      this.listeners = this.listeners.filter((l) => l !== entry);
      this.update();
    };
  }

  private update(): void {
    this.on = this.listeners.length > 0;
    this.driversOn = this.listeners.some((l) => l.drivers === true || (l.drivers !== false && l.drivers.size > 0));
    this.generation++;
  }

  /** Whether some listener wants `driver`'s events. */
  wants(driver: string): boolean {
    return this.listeners.some((l) => l.drivers === true || (l.drivers !== false && l.drivers.has(driver)));
  }

  emit(e: TraceEvent): void {
    for (const l of this.listeners) {
      if (e.t !== 'driver' || l.drivers === true || (l.drivers !== false && l.drivers.has(e.driver))) l.fn(e);
    }
  }

  /**
   * Run `fn` with failing checks reported as `fail` events of `ctx` (and the
   * ioctl `op`). Only called when `on`.
   */
  watchFailures<T>(ctx: number, op: string | undefined, fn: () => T): T {
    const prev = errnoWatch.fn;
    errnoWatch.fn = (e: IommufdError) => this.emit({ t: 'fail', ctx, op, errno: e.code, reason: e.reason ?? '' });
    try {
      return fn();
    } finally {
      errnoWatch.fn = prev;
    }
  }
}

/** A holder as the graph and the events show it. */
export function describeHolder(holder: unknown, objId: (h: object) => { id: number; kind: string } | null): HolderDesc {
  if (holder && typeof holder === 'object') {
    const o = objId(holder);
    if (o) return { obj: o.id, kind: o.kind };
    const h = holder as { name?: unknown; label?: unknown };
    if (typeof h.label === 'string') return { label: h.label };
    if (typeof h.name === 'string') return { label: h.name };
  }
  return { label: 'unknown' };
}
