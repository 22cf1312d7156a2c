// The device models a machine description can name: one entry per model,
// with the options it takes and the BARs the platform must place for it. A
// new model (DSA, an NVMe queue pair, virtio) is one module plus one entry.
import type { PciDeviceModel } from './device.js';
import { IOAT_BAR0_SIZE, IoatDevice } from './ioat.js';
import type { BarDef } from './pci/function.js';

export interface ModelOption {
  readonly help: string;
  readonly min: number;
  readonly max: number;
  readonly default: number;
}

export interface DeviceModelDef {
  readonly name: string;
  readonly description: string;
  readonly options: Readonly<Record<string, ModelOption>>;
  /** The BARs to place (sizes are fixed per model). */
  readonly bars: readonly BarDef[];
  create(barAddrs: readonly bigint[], opts: Readonly<Record<string, number>>): PciDeviceModel;
}

export const DEVICE_MODELS: Readonly<Record<string, DeviceModelDef>> = {
  ioat: {
    name: 'ioat',
    description: 'Intel I/OAT DMA engine v3.3 (Skylake-SP CBDMA, 8086:2021): one memcpy channel, MSI-X',
    options: {
      xfercap: { help: 'log2 of the largest copy per descriptor (XFERCAP)', min: 1, max: 31, default: 14 },
      msix_vectors: { help: 'MSI-X table size', min: 1, max: 64, default: 1 },
    },
    bars: [{ index: 0, size: IOAT_BAR0_SIZE, is64: true }],
    create: (addrs, o) => new IoatDevice(addrs, { xfercap: o.xfercap, msixVectors: o.msix_vectors }),
  },
};

/** Resolve a model's options: unknown names and out-of-range values are errors naming them. */
export function modelOptions(def: DeviceModelDef, given: Readonly<Record<string, unknown>> = {}): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(given)) {
    if (!(k in def.options)) throw new Error(`model ${def.name}: unknown option '${k}' (known: ${Object.keys(def.options).join(', ') || 'none'})`);
  }
  for (const [k, o] of Object.entries(def.options)) {
    const v = given[k] ?? o.default;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < o.min || v > o.max) {
      throw new Error(`model ${def.name}: option ${k}=${String(v)} must be an integer in ${o.min}..${o.max}`);
    }
    out[k] = v;
  }
  return out;
}
