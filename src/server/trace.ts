// The server's --trace hook: captures the caller's struct before and after each
// forwarded ioctl (through the caller's UserMemory) and formats the line with
// the table-driven formatter of src/uapi/trace.ts (formatIoctl).
import type { IommufdCtx } from '../core/context.js';
import type { UserMemory } from '../core/usermem.js';
import { errnoName } from '../uapi/errno.js';
import { IOMMUFD_TYPE, VFIO } from '../uapi/ioctls.js';
import type { Profile } from '../uapi/profiles.js';
import { formatIoctl } from '../uapi/trace.js';
import type { IoctlTracer } from './server.js';

interface State {
  profile: Profile;
  request: number;
  arg: bigint;
  mem: UserMemory;
  len: number;
  inBytes: Uint8Array | null;
}

/** VFIO requests whose argument is a struct (the rest pass a value). */
const VFIO_STRUCT_REQ = new Set<number>([VFIO.IOMMU_GET_INFO, VFIO.IOMMU_MAP_DMA, VFIO.IOMMU_UNMAP_DMA]);

function tryRead(mem: UserMemory, addr: bigint, len: number): Uint8Array | null {
  for (let n = len; n > 0; n = n > 8 ? Math.floor(n / 2) : 0) {
    try {
      return mem.read(addr, n);
    } catch { /* shorter */ }
  }
  return null;
}

export class Tracer implements IoctlTracer {
  constructor(private readonly write: (line: string) => void) {}

  before(ctx: IommufdCtx, request: number, arg: bigint, mem: UserMemory): unknown {
    const st: State = { profile: ctx.profile, request: request >>> 0, arg, mem, len: 0, inBytes: null };
    const nr = request & 0xff;
    if (((request >>> 8) & 0xff) !== IOMMUFD_TYPE) return st;
    if (nr >= 0x80) {
      const op = ctx.emu.table.get(nr);
      if (!op) return st;
      const head = tryRead(mem, arg, 4);
      if (!head || head.length < 4) return st;
      const size = new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true);
      st.len = Math.min(Math.max(size, 4), op.knownSize);
    } else if (VFIO_STRUCT_REQ.has(request >>> 0)) {
      st.len = 32;
    }
    if (st.len) st.inBytes = tryRead(mem, arg, st.len);
    return st;
  }

  note(pid: number, tid: number, text: string): void {
    this.write(`[${pid}${tid !== pid ? `:${tid}` : ''}] ${text}`);
  }

  after(state: unknown, result: { ret: number } | { errno: number }, pid: number, tid: number): void {
    const st = state as State | undefined;
    if (!st) return;
    const res: number | string = 'errno' in result ? (errnoName(result.errno) ?? -result.errno) : result.ret;
    const outBytes = st.inBytes ? tryRead(st.mem, st.arg, st.inBytes.length) : null;
    const line = formatIoctl(st.profile, st.request, st.inBytes, outBytes, res);
    this.write(`[${pid}${tid !== pid ? `:${tid}` : ''}] ${line}`);
  }
}
