// HW queues (02 §9): guest queue memory pinned and locked through an internal
// access on the nesting parent's IOAS, handed to the vIOMMU driver.
import type { HwQueueCore } from '../drivers/driver.js';
import { fail } from '../uapi/errno.js';
import type { Decoded } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import { Access } from './access.js';
import type { Ucmd } from './context.js';
import type { Ioas } from './ioas.js';
import { IommufdObject, ObjType, refget, refput } from './object.js';
import { PAGE_SIZE } from './usermem.js';
import type { Viommu } from './viommu.js';

const PS = BigInt(PAGE_SIZE);
const U64_MAX = (1n << 64n) - 1n;

export class HwQueue extends IommufdObject implements HwQueueCore {
  readonly type = ObjType.HW_QUEUE;
  access: Access | null = null;
  /** The pinned, locked span [pinStart, pinStart + pinLength). */
  pinStart = 0n;
  pinLength = 0n;
  private pinned = false;
  private holdsViommu = false;
  private driverInit = false;
  private readonly depends: HwQueue[] = [];

  constructor(readonly viommu: Viommu, readonly queueType: number, readonly index: number,
    readonly baseIova: bigint, readonly length: bigint) {
    super();
  }

  dependOn(other: HwQueueCore): void {
    const q = other as HwQueue;
    refget(q, this, 'depend');
    this.depends.push(q);
  }

  holdViommu(): void {
    refget(this.viommu, this, 'viommu');
    this.holdsViommu = true;
  }

  markPinned(): void {
    this.pinned = true;
  }

  markDriverInit(): void {
    this.driverInit = true;
  }

  destroy(): void {
    if (this.driverInit) {
      this.driverInit = false;
      this.viommu.ops.hwQueueDestroy?.(this);
    }
    for (const q of this.depends.splice(0)) refput(q, this, 'depend');
    if (this.access) {
      if (this.pinned) this.access.unpinPages(this.pinStart, this.pinLength, { lock: true });
      this.pinned = false;
      this.access.destroyByOwner();
      this.access = null;
    }
    if (this.holdsViommu) {
      this.holdsViommu = false;
      refput(this.viommu, this, 'viommu');
    }
  }
}

/** IOMMU_HW_QUEUE_ALLOC (02 §9.1). */
export function iommufdHwQueueAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_hw_queue_alloc>>): void {
  const { cmd, ctx } = ucmd;
  if (cmd.flags || cmd.type === 0) fail('EOPNOTSUPP', 'flags must be 0 and type not 0');
  if (cmd.length === 0n) fail('EINVAL', 'length is 0');
  if (cmd.nesting_parent_iova + cmd.length - 1n > U64_MAX) fail('EOVERFLOW', 'nesting_parent_iova + length wraps past 2^64');
  const viommu = ctx.get<Viommu>(cmd.viommu_id, ObjType.VIOMMU);
  const ops = viommu.ops;
  const init = ops.hwQueueInit;
  if (!ops.hwQueueSupported?.(cmd.type) || !init) fail('EOPNOTSUPP', 'the vIOMMU does not support this HW queue type');

  ctx.createObj(new HwQueue(viommu, cmd.type, cmd.index, cmd.nesting_parent_iova, cmd.length), (q) => {
    // The page-aligned span of the queue memory; its end rounding up past 2^64 is a page-count overflow.
    // offset-in-page + length + PAGE_SIZE - 1 must fit in 64 bits (else ERANGE).
    const start = cmd.nesting_parent_iova & ~(PS - 1n);
    const span = cmd.nesting_parent_iova - start + cmd.length + PS - 1n;
    if (span > U64_MAX) fail('ERANGE', `the queue's page span does not fit 64 bits`);
    const end = start + (span / PS) * PS;
    // The page array is kvcalloc'ed before anything is pinned, and kvmalloc refuses more than
    // INT_MAX bytes: a queue of over ~1 TiB is ENOMEM whatever is mapped there.
    if ((span / PS) * 8n > 0x7fffffffn) fail('ENOMEM', 'the page array of the queue would exceed INT_MAX bytes (kvcalloc)');
    q.access = Access.createInternal(ctx, q);
    q.access.attachIoas(viommu.hwpt.ioas as Ioas);
    const pages = q.access.pinPages(start, end - start, false, { lock: true });
    q.pinStart = start;
    q.pinLength = end - start;
    q.markPinned();
    for (let i = 1; i < pages.length; i++) if (pages[i]!.pfn !== pages[0]!.pfn + i) fail('EFAULT', 'the queue memory is not physically contiguous');
    q.holdViommu();
    const physBase = pages[0]!.pfn * PAGE_SIZE + Number(cmd.nesting_parent_iova % PS);
    init(q, cmd.index, physBase, cmd.length);
    q.markDriverInit();
    cmd.out_hw_queue_id = q.id;
    ucmd.respond();
  });
}
