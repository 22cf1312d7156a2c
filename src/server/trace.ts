// The --trace printer: one subscriber of the emulator's trace bus. One line
// per ioctl (formatted from the uAPI table by src/uapi/trace.ts, with the
// failing check's reason after a failure) and one per operation the server
// notes (open, read/write of event fds, mmap, teardown).
import type { Emulator } from '../core/emulator.js';
import type { TraceEvent } from '../core/trace_bus.js';
import { formatIoctl } from '../uapi/trace.js';

function who(pid: number, tid: number | undefined): string {
  return `[${pid}${tid !== undefined && tid !== pid ? `:${tid}` : ''}]`;
}

export class TracePrinter {
  constructor(private readonly write: (line: string) => void, private readonly reasons = true) {}

  /** Start printing `emu`'s ioctls and notes; returns the function that stops it. */
  attach(emu: Emulator): () => void {
    return emu.bus.subscribe((e) => this.print(emu, e));
  }

  /** The line for `e`, or null for events this printer does not show. */
  static line(emu: Emulator, e: TraceEvent, reasons = true): string | null {
    if (e.t === 'note') return `${who(e.pid, e.tid)} ${e.text}`;
    if (e.t !== 'ioctl') return null;
    const res: number | string = e.errno ?? e.ret ?? 0;
    let line = `${who(e.pid, e.tid)} ${formatIoctl(emu.profile, e.request, e.inBytes, e.outBytes, res)}`;
    if (reasons && e.reason) line += `  (${e.reason})`;
    return line;
  }

  private print(emu: Emulator, e: TraceEvent): void {
    const l = TracePrinter.line(emu, e, this.reasons);
    if (l !== null) this.write(l);
  }
}
