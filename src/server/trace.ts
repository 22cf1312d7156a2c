// The --trace printer: one subscriber of the emulator's trace bus. One line
// per ioctl (formatted from the uAPI table by src/uapi/trace.ts, with the
// failing check's reason after a failure), one per operation the server
// notes (open, read/write of event fds, mmap, teardown), and, for the
// categories asked for (`--trace=smmu`), one per driver trace point.
import { driverEventText } from '../core/driver_trace.js';
import { DEVICE_MODELS } from '../devices/models.js';
import { SMMU_DRIVER } from '../drivers/arm-smmuv3/trace.js';
import type { Emulator } from '../core/emulator.js';
import type { TraceEvent } from '../core/trace_bus.js';
import { formatIoctl } from '../uapi/trace.js';

/** `--trace=` categories: the drivers whose events are printed besides the ioctls and notes. */
export const TRACE_CATEGORIES: Readonly<Record<string, { readonly help: string; readonly drivers: readonly string[] }>> = {
  smmu: {
    help: 'the emulated SMMUv3: STE/CD decode, each walk level, IOTLB and config cache, commands, events, faults',
    drivers: [SMMU_DRIVER],
  },
  devices: { help: 'device models: register writes, doorbells, DMA errors, interrupts', drivers: Object.keys(DEVICE_MODELS) },
};

export interface TraceSpec {
  /** true: stderr; a string: append to that file. */
  readonly to: true | string;
  readonly categories: readonly string[];
}

/**
 * `--trace[=SPEC]`: no value = ioctls to stderr; SPEC = comma-separated
 * categories (TRACE_CATEGORIES) and at most one file name (`./smmu` for a file
 * called smmu).
 */
export function parseTraceSpec(v: boolean | string | undefined): TraceSpec | null {
  if (!v) return null;
  if (v === true) return { to: true, categories: [] };
  let to: true | string = true;
  const categories: string[] = [];
  for (const item of v.split(',')) {
    if (!item) continue;
    if (item in TRACE_CATEGORIES) {
      if (!categories.includes(item)) categories.push(item);
    } else if (to === true) {
      to = item;
    } else {
      throw new Error(`--trace: '${item}' is neither a category (${Object.keys(TRACE_CATEGORIES).join(', ')}) nor the only file (already '${to}')`);
    }
  }
  return { to, categories };
}

function who(pid: number, tid: number | undefined): string {
  return `[${pid}${tid !== undefined && tid !== pid ? `:${tid}` : ''}]`;
}

export class TracePrinter {
  /** The drivers whose events are printed. */
  private readonly drivers: readonly string[];

  /** `categories`: the driver events to print too (TRACE_CATEGORIES). */
  constructor(private readonly write: (line: string) => void, private readonly reasons = true, categories: readonly string[] = []) {
    this.drivers = categories.flatMap((c) => {
      const cat = TRACE_CATEGORIES[c];
      if (!cat) throw new Error(`trace: unknown category '${c}' (known: ${Object.keys(TRACE_CATEGORIES).join(', ')})`);
      return cat.drivers;
    });
  }

  /** Start printing `emu`'s ioctls and notes; returns the function that stops it. */
  attach(emu: Emulator): () => void {
    // Drivers build their trace records only while some listener wants them: ask for these only.
    return emu.bus.subscribe((e) => this.print(emu, e), { drivers: this.drivers });
  }

  /** The line for `e`, or null for events this printer does not show. */
  static line(emu: Emulator, e: TraceEvent, reasons = true): string | null {
    if (e.t === 'note') return `${who(e.pid, e.tid)} ${e.text}`;
    if (e.t === 'driver') return `    ${driverEventText(e)}`;
    if (e.t !== 'ioctl') return null;
    const res: number | string = e.errno ?? e.ret ?? 0;
    let line = `${who(e.pid, e.tid)} ${formatIoctl(emu.profile, e.request, e.inBytes, e.outBytes, res, e.file)}`;
    if (reasons && e.reason) line += `  (${e.reason})`;
    return line;
  }

  private print(emu: Emulator, e: TraceEvent): void {
    const l = TracePrinter.line(emu, e, this.reasons);
    if (l !== null) this.write(l);
  }
}
