// Text of drivers' and devices' trace events (`driver` events of the trace
// bus): shared by the --trace printer, the inspector page and the drivers'
// own formatters. No imports: the inspector page bundles it.

const hex = (v: unknown): string =>
  typeof v === 'bigint' ? `0x${v.toString(16)}` : typeof v === 'number' && Number.isInteger(v) && v > 9 ? `0x${v.toString(16)}` : String(v);

/** `key=value` pairs (integers above 9 in hex, objects as JSON); undefined fields and `skip` left out. */
export function formatFields(data: Readonly<Record<string, unknown>>, skip: readonly string[] = []): string {
  return Object.entries(data)
    .filter(([k, v]) => !skip.includes(k) && v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'object' && v !== null ? JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? hex(x) : x)) : hex(v)}`)
    .join(' ');
}

/**
 * One line for a driver event: a device's own text, after its address
 * (`0000:00:03.0 ioat: DMACOUNT 1: ...`), or the driver, the point and its
 * fields (`arm-smmu-v3 walk smmu=smmu0 stage=1 level=0 ...`).
 */
export function driverEventText(e: { readonly driver: string; readonly point: string; readonly data: Readonly<Record<string, unknown>> }): string {
  if (typeof e.data.text === 'string') return `${e.data.bdf ? `${String(e.data.bdf)} ` : ''}${e.data.text}`;
  const f = formatFields(e.data);
  return `${e.driver} ${e.point}${f ? ` ${f}` : ''}`;
}
