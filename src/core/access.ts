// In-kernel accesses (the kernel's iommufd_access): emulated devices and
// internal users (HW-queue pinning) that read, write or pin IOAS memory by
// IOVA without a domain. An access is an object (type ACCESS) that takes an
// ID but that user space can never destroy: its creator holds a reference.
import { fail } from '../uapi/errno.js';
import type { IommufdCtx } from './context.js';
import { U64_MAX, type IoptAccess } from './io_pagetable.js';
import { getIoas, type Ioas } from './ioas.js';
import { IommufdObject, ObjType, refget, refput } from './object.js';
import { PAGE_SIZE, type PhysPage, type UserMemory } from './usermem.js';

const PS = BigInt(PAGE_SIZE);

export interface AccessOps {
  /** The access pins pages (forces the IOAS alignment to PAGE_SIZE while attached). */
  readonly needsPinPages: boolean;
  /**
   * The IOAS is unmapping [iova, iova+length): unpin every pin inside it
   * (IOAS_UNMAP retries until the area is free, EDEADLK after 100 tries).
   */
  unmap?(iova: bigint, length: bigint): void;
}

export interface PinOptions {
  /** Also lock the areas: IOAS_UNMAP of them gives EBUSY until unpinned (HW queues). */
  readonly lock?: boolean;
}

export interface RwOptions {
  /** Never use the caller's address space directly (selftest SLOW_PATH). */
  readonly slowPath?: boolean;
  /** The process doing the access (the fast path copies through its memory when it is the source). */
  readonly caller?: UserMemory | null;
}

export class Access extends IommufdObject implements IoptAccess {
  readonly type = ObjType.ACCESS;
  /** The IOAS new pins and reads go to (null while detached or switching). */
  ioas: Ioas | null = null;
  /** The IOAS existing pins came from (stays set during a switch). */
  private ioasUnpin: Ioas | null = null;
  readonly iovaAlignment: bigint;
  private holdsCtx = false;
  private gone = false;

  private constructor(readonly ctx: IommufdCtx, readonly ops: AccessOps | null, readonly internal: boolean) {
    super();
    this.iovaAlignment = internal || ops?.needsPinPages ? PS : 1n;
  }

  /**
   * A driver access (emulated device): consumes the next object ID, published
   * at once, with one reference held by the creator; keeps the context open
   * until destroyed. ENOMEM.
   */
  static create(ctx: IommufdCtx, ops: AccessOps, owner: object | null = null): Access {
    const a = ctx.allocObj(new Access(ctx, ops, false));
    refget(a, owner, 'owner');
    ctx.ref();
    a.holdsCtx = true;
    ctx.objects.finalize(a);
    return a;
  }

  /** An iommufd-internal access (HW queue memory): PAGE_SIZE alignment, no unmap callback, no context reference. */
  static createInternal(ctx: IommufdCtx, owner: object | null = null): Access {
    const a = ctx.allocObj(new Access(ctx, null, true));
    refget(a, owner, 'owner');
    ctx.objects.finalize(a);
    return a;
  }

  /** Attach to IOAS `ioasId` (ENOENT; EADDRINUSE if its areas cannot take the access's alignment). */
  attach(ioasId: number): void {
    if (this.ioas) fail('EINVAL', 'the access is already attached');
    this.changeIoas(getIoas(this.ctx, ioasId));
  }

  /** Attach to an IOAS the caller already holds (internal users). */
  attachIoas(ioas: Ioas): void {
    if (this.ioas) fail('EINVAL', 'the access is already attached');
    this.changeIoas(ioas);
  }

  /** Move to another IOAS: ENOENT if not attached or no such IOAS; pins on the old one are dropped. */
  replace(ioasId: number): void {
    if (!this.ioas) fail('ENOENT', 'the access is not attached');
    this.changeIoas(getIoas(this.ctx, ioasId));
  }

  /** Alias of replace() under the kernel's name. */
  replaceIoas(ioasId: number): void {
    this.replace(ioasId);
  }

  detach(): void {
    this.changeIoas(null);
  }

  private changeIoas(next: Ioas | null): void {
    const cur = this.ioas;
    if (cur !== this.ioasUnpin) fail('EBUSY', 'the access is still switching IOAS (old pins not dropped)');
    if (cur === next) return;
    this.ioas = null;
    if (next) {
      try {
        next.iopt.addAccess(this);
      } catch (e) {
        this.ioas = cur;
        throw e;
      }
      refget(next, this, 'access');
    }
    if (cur) {
      this.ops?.unmap?.(0n, U64_MAX);
      cur.iopt.removeAccess(this);
      refput(cur, this, 'access');
    }
    this.ioas = next;
    this.ioasUnpin = next;
  }

  /** Called by the IOAS unmap walk. */
  notifyUnmap(iova: bigint, length: bigint): void {
    this.ops?.unmap?.(iova, length);
  }

  /**
   * Pin [iova, iova+length): EINVAL (length 0, access not pinning-capable,
   * unmap in progress), EOVERFLOW, ENOENT (detached / not fully mapped), EPERM
   * (write on a read-only mapping), EFAULT / ENOMEM from pinning. One PhysPage
   * per page touched, in IOVA order.
   */
  pinPages(iova: bigint, length: bigint, write: boolean, opts: PinOptions = {}): PhysPage[] {
    if (this.iovaAlignment !== PS) fail('EINVAL', 'the access was not created to pin pages');
    if (length === 0n) fail('EINVAL', 'length is 0');
    const last = iova + length - 1n;
    if (last > U64_MAX) fail('EOVERFLOW', 'iova + length wraps past 2^64');
    if (!this.ioas) fail('ENOENT', 'the access is not attached to an IOAS');
    return this.ioas.iopt.accessPin(iova, last, write, !!opts.lock);
  }

  /** Undo a pinPages of exactly the same range (and lock option). */
  unpinPages(iova: bigint, length: bigint, opts: PinOptions = {}): void {
    if (length === 0n) return;
    const last = iova + length - 1n;
    if (last > U64_MAX || !this.ioasUnpin) return;
    this.ioasUnpin.iopt.accessUnpin(iova, last, !!opts.lock);
  }

  /**
   * CPU read (into `data`) or write (from `data`) of IOAS memory at `iova`:
   * EINVAL (empty), EOVERFLOW, ENOENT (detached or hole), EPERM, EFAULT.
   * `data` may be a length: a fresh buffer is read into and returned.
   */
  rw(iova: bigint, data: Uint8Array | number, write: boolean, opts: RwOptions = {}): Uint8Array {
    const buf = typeof data === 'number' ? new Uint8Array(data) : data;
    if (buf.length === 0) fail('EINVAL', 'length is 0');
    if (iova + BigInt(buf.length) - 1n > U64_MAX) fail('EOVERFLOW', 'iova + length wraps past 2^64');
    if (!this.ioas) fail('ENOENT', 'the access is not attached to an IOAS');
    this.ioas.iopt.accessRw(iova, buf, write, opts.caller ?? null, !!opts.slowPath);
    return buf;
  }

  /** The creator drops its reference: the access is detached and destroyed. */
  destroyByOwner(): void {
    if (this.gone) return;
    this.ctx.objects.removeOwned(this, 1);
  }

  destroy(): void {
    if (this.gone) return;
    this.gone = true;
    if (this.ioas || this.ioasUnpin) {
      this.ioasUnpin = this.ioas;
      this.changeIoas(null);
    }
    if (this.holdsCtx) {
      this.holdsCtx = false;
      this.ctx.put();
    }
  }
}
