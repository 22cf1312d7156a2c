// vEVENTQ: per-vIOMMU event queues and their fds (02 §8), the analogue of the
// vEVENTQ half of the kernel's eventq.c.
import { V } from '../uapi/profiles.js';
import { fail } from '../uapi/errno.js';
import { VEVENTQ_FLAG_LOST_EVENTS } from '../uapi/enums.js';
import { encode, type Decoded } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { Ucmd } from './context.js';
import { fdCloseEvent, installFile, POLLIN, POLLRDNORM, type IommufdFile } from './file.js';
import { IommufdObject, ObjType, refget, refput } from './object.js';
import type { UserMemory } from './usermem.js';
import type { Viommu } from './viommu.js';

const HEADER_SIZE = 8;
const SEQ_MASK = 0x7fffffff;

interface VeventRecord {
  flags: number;
  sequence: number;
  payload: Uint8Array | null;
}

export class Veventq extends IommufdObject {
  readonly type = ObjType.VEVENTQ;
  readonly records: VeventRecord[] = [];
  /** Normal (non-marker) records queued. */
  numEvents = 0;
  /** Next sequence number. */
  sequence = 0;
  /** The one lost-events marker; it only ever sits at the tail. */
  readonly lost: VeventRecord = { flags: VEVENTQ_FLAG_LOST_EVENTS, sequence: 0, payload: null };
  file: VeventqFile | null = null;

  constructor(readonly viommu: Viommu, readonly eventType: number, readonly depth: number) {
    super();
  }

  private enqueue(r: VeventRecord): void {
    if (this.records[this.records.length - 1] === this.lost) this.records.pop();
    this.records.push(r);
    r.sequence = this.sequence;
    this.sequence = (this.sequence + 1) & SEQ_MASK;
    const ctx = this.viommu.ctx;
    if (ctx.emu.bus.on) {
      ctx.emu.bus.emit({
        t: 'vevent', ctx: ctx.seq, viommu: this.viommu.id, veventq: this.id, type: this.eventType, sequence: r.sequence,
        lost: r === this.lost,
      });
    }
    this.file?.onReadiness?.();
  }

  /** A driver reports an event of this queue's type (02 §8.2). */
  report(payload: Uint8Array): void {
    // 7.3 allocates the record (GFP_NOWAIT) before it looks at the depth, so a full queue has
    // the point too; older kernels check the depth first.
    const allocFirst = this.viommu.ctx.profile.version >= V.V7_3;
    if (!allocFirst && this.numEvents >= this.depth) {
      this.enqueue(this.lost);
      return;
    }
    // The record's allocation: on failure the marker is queued and the report fails with ENOMEM.
    try {
      this.viommu.ctx.emu.allocPoint('nowait');
    } catch (e) {
      this.enqueue(this.lost);
      throw e;
    }
    if (this.numEvents >= this.depth) {
      this.enqueue(this.lost);
      return;
    }
    this.numEvents++;
    this.enqueue({ flags: 0, sequence: 0, payload: payload.slice() });
  }

  /** read(2) on the queue's fd. */
  read(mem: UserMemory, buf: bigint, count: number, pos: bigint): number {
    if (pos !== 0n) fail('ESPIPE', 'vEVENTQ reads are at position 0 only');
    const strict = this.viommu.ctx.profile.veventqReadEinval;
    if (strict && count < HEADER_SIZE) fail('EINVAL', 'vEVENTQ read: count below one header');
    let done = 0;
    while (this.records.length > 0) {
      const r = this.records[0]!;
      const len = HEADER_SIZE + (r.payload?.length ?? 0);
      if (done + len > count) {
        if (strict && done === 0) fail('EINVAL', 'vEVENTQ read: the first event does not fit the count');
        break;
      }
      const bytes = new Uint8Array(len);
      bytes.set(encode(S.iommufd_vevent_header, { flags: r.flags, sequence: r.sequence }));
      if (r.payload) bytes.set(r.payload, HEADER_SIZE);
      try {
        mem.write(buf + BigInt(done), bytes);
      } catch (e) {
        if (done === 0) throw e;
        break;
      }
      this.records.shift();
      if (r !== this.lost) this.numEvents--;
      done += len;
    }
    return done;
  }

  destroy(): void {
    this.records.length = 0;
    this.numEvents = 0;
    this.viommu.veventqs.delete(this.eventType);
    refput(this.viommu, this, 'viommu');
  }
}

/** "[iommufd-viommu-event]": holds a user reference on the vEVENTQ and a context reference. */
class VeventqFile implements IommufdFile {
  readonly name = '[iommufd-viommu-event]';
  readonly has = { read: true, write: false, poll: true };
  onReadiness?: () => void;
  private released = false;
  constructor(readonly q: Veventq) {
    refget(q, this, 'file');
    q.viommu.ctx.ref();
    q.file = this;
  }
  read(mem: UserMemory, buf: bigint, count: number, pos: bigint): number {
    return this.q.read(mem, buf, count, pos);
  }
  write(): number {
    return fail('EINVAL', 'the vEVENTQ file has no write'); // the kernel's vEVENTQ file has no write method
  }
  poll(): number {
    return this.q.records.length > 0 ? POLLIN | POLLRDNORM : 0;
  }
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.q.file === this) this.q.file = null;
    fdCloseEvent(this.q.viommu.ctx, this, this.q);
    refput(this.q, this, 'file');
    this.q.viommu.ctx.put();
  }
}

/** IOMMU_VEVENTQ_ALLOC (02 §8.1). */
export function iommufdVeventqAlloc(ucmd: Ucmd<Decoded<typeof S.iommu_veventq_alloc>>): void {
  const cmd = ucmd.cmd;
  const ctx = ucmd.ctx;
  if (cmd.flags || cmd.__reserved || cmd.type === 0) fail('EOPNOTSUPP', 'VEVENTQ_ALLOC: flags, __reserved or type DEFAULT');
  if (cmd.veventq_depth === 0) fail('EINVAL', 'VEVENTQ_ALLOC: zero depth');
  const max = ucmd.ctx.profile.veventqMaxDepth;
  if (max && cmd.veventq_depth > max) fail('EINVAL', 'VEVENTQ_ALLOC: depth above 1<<19');
  const viommu = ctx.get<Viommu>(cmd.viommu_id, ObjType.VIOMMU);
  if (viommu.veventqs.has(cmd.type)) fail('EEXIST', 'the vIOMMU already has a vEVENTQ of this type');
  ctx.createObj(new Veventq(viommu, cmd.type, cmd.veventq_depth), (q) => {
    refget(viommu, q, 'viommu');
    viommu.veventqs.set(cmd.type, q);
    installFile(ucmd, new VeventqFile(q), (fd) => {
      cmd.out_veventq_id = q.id;
      cmd.out_veventq_fd = fd;
      ucmd.respond();
    }, q);
  });
}
