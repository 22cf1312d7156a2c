// The DMA interface of device models: a device reads and writes IOVAs; each
// 4 KiB page is translated by the IOMMU domain the device is attached to at
// that moment (drivers' `translate`, src/drivers/driver.ts) and the bytes move
// through the machine's physical memory (PHYS). A fault stops the transfer at
// the faulting page and is returned, never thrown: what it becomes (an error
// register, a completion status, an I/O page fault) is the device's business.
import type { DmaFault, DriverDevice, IommuDomain } from '../drivers/driver.js';
import { PHYS } from '../core/physmem.js';
import { PAGE_SIZE } from '../core/usermem.js';

const PS = BigInt(PAGE_SIZE);

/** The outcome of one transfer: `done` bytes moved before the fault, if any. */
export type DmaResult = { readonly ok: true } | { readonly ok: false; readonly fault: DmaFault; readonly done: number };

const OK: DmaResult = { ok: true };

export interface DmaPort {
  /** Fill `buf` from `iova`.. (page by page). */
  read(iova: bigint, buf: Uint8Array): DmaResult;
  /** Write `data` at `iova`.. (page by page; pages before a fault are written). */
  write(iova: bigint, data: Uint8Array): DmaResult;
}

/** What a port translates through, looked up on every access (attachments change under the device). */
export interface DmaAttachment {
  readonly dev: DriverDevice;
  /** The domain the device is attached to at `pasid` (undefined = RID) now; null = DMA blocked. */
  domain(pasid: number | undefined): IommuDomain | null;
}

/** Faults of a port that has nothing to translate through. */
export function blockedFault(iova: bigint, write: boolean, why: string): DmaFault {
  return { kind: 'blocked', iova, write, detail: { reason: why } };
}

/** DMA of one requester ID (and optional PASID) through its current IOMMU attachment. */
export class IommuDma implements DmaPort {
  /** Faults seen, newest last (bounded; traces and tests). */
  readonly faults: DmaFault[] = [];

  constructor(private readonly att: () => DmaAttachment | null, private readonly pasid?: number) {}

  read(iova: bigint, buf: Uint8Array): DmaResult {
    return this.xfer(iova, buf.length, false, (phys, off, n) => {
      const bytes = PHYS.read(phys, n);
      if (!bytes) return false;
      buf.set(bytes, off);
      return true;
    });
  }

  write(iova: bigint, data: Uint8Array): DmaResult {
    return this.xfer(iova, data.length, true, (phys, off, n) => PHYS.write(phys, data.subarray(off, off + n)));
  }

  private xfer(iova: bigint, length: number, write: boolean, move: (phys: number, off: number, n: number) => boolean): DmaResult {
    const att = this.att();
    let done = 0;
    while (done < length) {
      const at = (iova + BigInt(done)) & ((1n << 64n) - 1n);
      const n = Math.min(length - done, PAGE_SIZE - Number(at % PS));
      const fault = this.page(att, at, n, write, (phys) => move(phys, done, n));
      if (fault) {
        this.faults.push(fault);
        if (this.faults.length > 64) this.faults.shift();
        return { ok: false, fault, done };
      }
      done += n;
    }
    return OK;
  }

  private page(att: DmaAttachment | null, iova: bigint, n: number, write: boolean,
    move: (phys: number) => boolean): DmaFault | null {
    const domain = att?.domain(this.pasid) ?? null;
    if (!att || !domain) return blockedFault(iova, write, 'no domain attached');
    if (!domain.translate) return { kind: 'config', iova, write, detail: { reason: 'the domain cannot translate DMA' } };
    const t = domain.translate({ dev: att.dev, pasid: this.pasid, iova, length: n, write });
    if ('fault' in t) return t.fault;
    if (!move(t.phys)) return { kind: 'access', iova, write, detail: { reason: `no memory at physical 0x${t.phys.toString(16)}` } };
    return null;
  }
}

/** A port for a device that is plugged nowhere: every access is blocked. */
export const NO_DMA: DmaPort = {
  read: (iova) => ({ ok: false, fault: blockedFault(iova, false, 'device not connected'), done: 0 }),
  write: (iova) => ({ ok: false, fault: blockedFault(iova, true, 'device not connected'), done: 0 }),
};
