// Trace points of the emulated SMMUv3: one record per decision (STE decode, CD
// decode, each walk level, cache hit/miss/insert/evict/invalidate, each
// command, each event). Zero cost when off: call sites test `smmuTraceOn`
// (an ES live binding) before building the record. `--trace=smmu` and the
// inspector subscribe here.

export type SmmuTracePoint =
  | 'ste' | 'cd' | 'walk' | 'fault' | 'iotlb' | 'cfgcache' | 'cmd' | 'event' | 'translate' | 'attach';

export interface SmmuTraceRecord {
  readonly point: SmmuTracePoint;
  /** SMMU instance name. */
  readonly smmu: string;
  readonly [field: string]: unknown;
}

export type SmmuTraceListener = (r: SmmuTraceRecord) => void;

const listeners: SmmuTraceListener[] = [];

/** True while anyone listens: call sites check it before building a record. */
export let smmuTraceOn = false;

/** Subscribe; returns the unsubscribe function. */
export function onSmmuTrace(fn: SmmuTraceListener): () => void {
  listeners.push(fn);
  smmuTraceOn = true;
  return () => {
    const i = listeners.indexOf(fn);
    if (i >= 0) listeners.splice(i, 1);
    smmuTraceOn = listeners.length > 0;
  };
}

export function smmuTrace(r: SmmuTraceRecord): void {
  for (const l of listeners) l(r);
}

const hex = (v: unknown): string =>
  typeof v === 'bigint' ? `0x${v.toString(16)}` : typeof v === 'number' && Number.isInteger(v) && v > 9 ? `0x${v.toString(16)}` : String(v);

/** One line per record, e.g. `smmu0 walk stage=1 level=2 addr=0x... desc=0x...`. */
export function formatSmmuTrace(r: SmmuTraceRecord): string {
  const parts = Object.entries(r)
    .filter(([k]) => k !== 'point' && k !== 'smmu')
    .map(([k, v]) => `${k}=${typeof v === 'object' && v !== null ? JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? hex(x) : x)) : hex(v)}`);
  return `${r.smmu} ${r.point} ${parts.join(' ')}`;
}
