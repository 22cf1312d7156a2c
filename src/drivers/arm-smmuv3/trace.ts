// Trace points of the emulated SMMUv3: one record per decision (STE decode, CD
// decode, each walk level, cache hit/miss/insert/evict/invalidate, each
// command, each event). They go to the emulator's trace bus as `driver`
// events (driver 'arm-smmu-v3', point = the decision, data = the fields and
// the instance name), so `--trace=smmu`, the inspector and tests see them per
// emulator. Zero cost when off: every call site tests `tracer.on` (the bus's
// driversOn, a plain boolean) before building a record.
import { formatFields } from '../../core/driver_trace.js';
import type { TraceBus, TraceEvent } from '../../core/trace_bus.js';

export const SMMU_DRIVER = 'arm-smmu-v3';

export type SmmuTracePoint =
  | 'ste' | 'cd' | 'walk' | 'fault' | 'iotlb' | 'cfgcache' | 'cmd' | 'event' | 'translate' | 'attach';

/** A trace point as tests and printers read it: the point, the instance, the fields. */
export interface SmmuTraceRecord {
  readonly point: SmmuTracePoint;
  /** SMMU instance name. */
  readonly smmu: string;
  readonly [field: string]: unknown;
}

/** Where one SMMU instance's trace points go. */
export class SmmuTracer {
  private gen = -1;
  private wanted = false;

  /** `bus` null: a hardware model outside any emulator (never traced). */
  constructor(readonly smmu: string, private readonly bus: TraceBus | null) {}

  /** True while some listener of the emulator's bus wants this driver's events (cached per bus generation). */
  get on(): boolean {
    const b = this.bus;
    if (b === null || !b.driversOn) return false;
    if (b.generation !== this.gen) {
      this.gen = b.generation;
      this.wanted = b.wants(SMMU_DRIVER);
    }
    return this.wanted;
  }

  emit(point: SmmuTracePoint, data: Record<string, unknown>): void {
    this.bus?.emit({ t: 'driver', driver: SMMU_DRIVER, point, data: { smmu: this.smmu, ...data } });
  }
}

/** The SMMU record of a bus event, or null for any other event. */
export function smmuRecordOf(e: TraceEvent): SmmuTraceRecord | null {
  if (e.t !== 'driver' || e.driver !== SMMU_DRIVER) return null;
  return { ...e.data, point: e.point as SmmuTracePoint, smmu: String(e.data.smmu) };
}

/** Subscribe to the SMMU records of one emulator's bus; returns the unsubscribe function. */
export function onSmmuTrace(bus: TraceBus, fn: (r: SmmuTraceRecord) => void): () => void {
  return bus.subscribe((e) => {
    const r = smmuRecordOf(e);
    if (r) fn(r);
  });
}

/** One line per record, e.g. `smmu0 walk stage=1 level=2 va=0x... descAddr=0x... desc=0x...`. */
export function formatSmmuTrace(r: SmmuTraceRecord): string {
  return `${r.smmu} ${r.point} ${formatFields(r, ['point', 'smmu'])}`;
}
