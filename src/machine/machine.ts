// The emulated machine: which IOMMU instances exist and which PCI functions
// sit behind them (model, BDF, IOMMU group), bound to vfio-pci from the start.
// A description is data (a preset or a JSON file, docs/MACHINE.md); building
// it into an emulator creates the IOMMU units, the device models, their BAR
// placement and their VFIO registration.
import * as fs from 'node:fs';
import type { Emulator } from '../core/emulator.js';
import { vfioOf, type VfioSubsystem } from '../core/vfio.js';
import type { VfioPciDevice } from '../core/vfio_pci.js';
import type { DriverDevice } from '../drivers/driver.js';
import { VtdUnit } from '../drivers/intel_vtd/vtd.js';
import { iommuDriver } from '../drivers/table.js';
import type { PciDeviceModel } from '../devices/device.js';
import { DEVICE_MODELS, modelOptions } from '../devices/models.js';
import { describeSmmu, resolveSids, resolveSmmuOptions, SMMU_OPTIONS } from './smmu.js';

export interface IommuDesc {
  /** Instance name ("dmar0"). */
  readonly name: string;
  /** Kind of IOMMU (IOMMU_TYPES). */
  readonly type: string;
  /** Per type (`iommufd-emu devices --models`); arm-smmuv3: ID registers, stages, granules... (smmu.ts). */
  readonly options?: Readonly<Record<string, unknown>>;
}

export interface DeviceDesc {
  /** Device model (DEVICE_MODELS). */
  readonly model: string;
  /** PCI address, "SSSS:BB:DD.F" (hex). */
  readonly bdf: string;
  /** IOMMU group number (default: the lowest unused, from 1). */
  readonly group?: number;
  /** IOMMU instance name (default: the first). */
  readonly iommu?: string;
  /** Model options (see `iommufd-emu devices --models`). */
  readonly options?: Readonly<Record<string, number>>;
  /** StreamIDs behind an arm-smmuv3 (default: the requester ID, bus << 8 | devfn); the first is the one DMA uses. */
  readonly sids?: readonly number[];
  /** Firmware (IORT) CANWBS for a device behind an arm-smmuv3: its accesses are coherent (default true). */
  readonly canwbs?: boolean;
}

export interface MachineDesc {
  readonly description?: string;
  readonly iommus: readonly IommuDesc[];
  readonly devices: readonly DeviceDesc[];
}

/** A device's IOMMU-specific fields, resolved (only those its IOMMU type has). */
export interface DeviceIommuFields {
  readonly sids?: readonly number[];
  readonly canwbs?: boolean;
}

/** An IOMMU kind: checks an instance's description, makes the instance, probes devices behind it. */
export interface IommuType {
  readonly description: string;
  /** What `options` may hold (for --models); none when absent. */
  readonly options?: Readonly<Record<string, { readonly help: string }>>;
  /** Check an instance's `options`; the result is kept in the Machine and given to create(). */
  resolve(name: string, options: unknown): Readonly<Record<string, unknown>>;
  /** Check a device's IOMMU-specific fields against its instance's resolved options. */
  resolveDevice(iommu: IommuDesc, d: DeviceDesc, bdf: string): DeviceIommuFields;
  /** One line of what an instance is (iommufd-emu devices). */
  describe(iommu: IommuDesc): string;
  create(emu: Emulator, iommu: IommuDesc): { probe(d: ResolvedDevice): DriverDevice };
}

function noFields(type: string, name: string, options: unknown, d?: DeviceDesc, bdf?: string): void {
  if (options !== undefined && (typeof options !== 'object' || options === null || Object.keys(options).length)) {
    throw new Error(`machine: IOMMU '${name}': type ${type} takes no options`);
  }
  for (const k of ['sids', 'canwbs'] as const) {
    if (d?.[k] !== undefined) throw new Error(`machine: device ${bdf}: "${k}" is for devices behind an arm-smmuv3, not ${type} '${name}'`);
  }
}

const VTD_DESCRIPTION = 'Intel VT-d, Skylake-SP unit in legacy mode (second-stage tables, 48-bit, no PASID/nesting)';

export const IOMMU_TYPES: Readonly<Record<string, IommuType>> = {
  'intel-vtd': {
    description: VTD_DESCRIPTION,
    resolve: (name, options) => {
      noFields('intel-vtd', name, options);
      return {};
    },
    resolveDevice: (iommu, d, bdf) => {
      noFields('intel-vtd', iommu.name, undefined, d, bdf);
      return {};
    },
    describe: () => VTD_DESCRIPTION,
    create: (emu, iommu) => {
      const unit = new VtdUnit(iommu.name);
      const drv = iommuDriver(emu, 'intel-iommu');
      return { probe: (d) => drv.probeDevice(unit, d.bdf) };
    },
  },
  'arm-smmuv3': {
    description: 'emulated ARM SMMUv3 (stage 1 + 2, vIOMMU/nesting by default); a function\'s StreamID is its PCI requester ID unless "sids" says',
    options: SMMU_OPTIONS,
    resolve: (name, options) => {
      const { options: o } = resolveSmmuOptions(name, options);
      const { name: _n, ...rest } = o;
      return rest;
    },
    resolveDevice: (iommu, d, bdf) => {
      const { features } = resolveSmmuOptions(iommu.name, iommu.options);
      if (d.canwbs !== undefined && typeof d.canwbs !== 'boolean') throw new Error(`machine: device ${bdf}: "canwbs" must be true or false`);
      return { sids: resolveSids(iommu.name, bdf, d.sids, requesterId(bdf), features), canwbs: d.canwbs ?? true };
    },
    describe: (iommu) => {
      const { cfg, features } = resolveSmmuOptions(iommu.name, iommu.options);
      return describeSmmu(features, cfg);
    },
    create: (emu, iommu) => {
      const drv = iommuDriver(emu, 'arm-smmu-v3');
      const smmu = drv.addSmmu({ ...iommu.options, name: iommu.name });
      return { probe: (d) => drv.addMaster(smmu, { sids: d.sids!, canwbs: d.canwbs }) };
    },
  },
};

const VTD0: IommuDesc = { name: 'dmar0', type: 'intel-vtd' };

/** The BDF and group of the default preset's IOAT (VFIO_SELFTESTS_BDF). */
export const DEFAULT_BDF = '0000:00:03.0';

export const PRESETS: Readonly<Record<string, MachineDesc>> = {
  ioat: {
    description: 'one IOAT DMA engine behind VT-d (the default)',
    iommus: [VTD0],
    devices: [{ model: 'ioat', bdf: DEFAULT_BDF, group: 3 }],
  },
  'ioat-x2': {
    description: 'two IOAT DMA engines in separate groups behind one VT-d unit',
    iommus: [VTD0],
    devices: [{ model: 'ioat', bdf: DEFAULT_BDF, group: 3 }, { model: 'ioat', bdf: '0000:00:04.0', group: 4 }],
  },
  'ioat-smmu': {
    description: 'one IOAT DMA engine behind an emulated ARM SMMUv3 (vIOMMU and nested translation available)',
    iommus: [{ name: 'smmu0', type: 'arm-smmuv3' }],
    devices: [{ model: 'ioat', bdf: DEFAULT_BDF, group: 3 }],
  },
  'ioat-x2-smmu': {
    description: 'two IOAT DMA engines behind one emulated ARM SMMUv3 (StreamIDs 0x18 and 0x20; nesting, 4K/16K/64K, RIL)',
    iommus: [{ name: 'smmu0', type: 'arm-smmuv3' }],
    devices: [{ model: 'ioat', bdf: DEFAULT_BDF, group: 3, sids: [0x18] }, { model: 'ioat', bdf: '0000:00:04.0', group: 4, sids: [0x20] }],
  },
  none: { description: 'no devices (iommufd only)', iommus: [], devices: [] },
};
export const DEFAULT_PRESET = 'ioat';

const BDF_RE = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$/;

/** The PCI requester ID of a BDF: bus << 8 | device << 3 | function. */
export function requesterId(bdf: string): number {
  const m = BDF_RE.exec(bdf)!;
  return (parseInt(m[2]!, 16) << 8) | (parseInt(m[3]!, 16) << 3) | parseInt(m[4]!, 16);
}

/** A device of a resolved description: defaults filled in, IOMMU fields only where its IOMMU type has them. */
export type ResolvedDevice = Required<Omit<DeviceDesc, 'sids' | 'canwbs'>> & DeviceIommuFields;

/** A resolved description: every default filled in, every reference checked. */
export interface Machine {
  readonly description: string;
  readonly iommus: readonly Required<IommuDesc>[];
  readonly devices: readonly ResolvedDevice[];
}

/** Check a description; errors name the bad value. */
export function resolveMachine(desc: MachineDesc): Machine {
  if (!desc || typeof desc !== 'object') throw new Error('machine: a description is an object with "iommus" and "devices"');
  const iommus = desc.iommus ?? [];
  const devices = desc.devices ?? [];
  if (!Array.isArray(iommus) || !Array.isArray(devices)) throw new Error('machine: "iommus" and "devices" must be arrays');
  const resolved = new Map<string, Required<IommuDesc>>();
  for (const i of iommus) {
    if (!i || typeof i.name !== 'string' || !i.name) throw new Error('machine: every IOMMU needs a "name"');
    if (resolved.has(i.name)) throw new Error(`machine: IOMMU name '${i.name}' used twice`);
    const type = IOMMU_TYPES[i.type];
    if (!type) throw new Error(`machine: IOMMU '${i.name}': unknown type '${i.type}' (known: ${Object.keys(IOMMU_TYPES).join(', ')})`);
    resolved.set(i.name, { name: i.name, type: i.type, options: type.resolve(i.name, i.options) });
  }
  const names = new Set(resolved.keys());
  /** StreamIDs taken, per IOMMU instance. */
  const taken = new Map<string, Map<number, string>>();
  if (devices.length && !iommus.length) throw new Error('machine: devices need an IOMMU');
  const bdfs = new Set<string>();
  const usedGroups = new Set<number>(devices.map((d) => d.group).filter((g): g is number => g !== undefined));
  let nextGroup = 1;
  const out: ResolvedDevice[] = [];
  for (const d of devices) {
    const model = DEVICE_MODELS[d?.model];
    if (!model) throw new Error(`machine: unknown device model '${d?.model}' (known: ${Object.keys(DEVICE_MODELS).join(', ')})`);
    const bdf = String(d.bdf ?? '').toLowerCase();
    if (!BDF_RE.test(bdf)) throw new Error(`machine: device BDF '${d.bdf}' is not of the form SSSS:BB:DD.F`);
    if (bdfs.has(bdf)) throw new Error(`machine: BDF ${bdf} used twice`);
    bdfs.add(bdf);
    let group = d.group;
    if (group === undefined) {
      while (usedGroups.has(nextGroup)) nextGroup++;
      group = nextGroup;
      usedGroups.add(group);
    }
    if (!Number.isInteger(group) || group < 0 || group > 0xfffff) throw new Error(`machine: device ${bdf}: group '${group}' must be an integer 0..1048575`);
    if (out.some((o) => o.group === group)) {
      throw new Error(`machine: group ${group} holds more than one device; multi-device groups are not modelled`);
    }
    const iommu = d.iommu ?? iommus[0]!.name;
    if (!names.has(iommu)) throw new Error(`machine: device ${bdf}: unknown IOMMU '${iommu}'`);
    const unit = resolved.get(iommu)!;
    const fields = IOMMU_TYPES[unit.type]!.resolveDevice(unit, d, bdf);
    const used = taken.get(iommu) ?? new Map<number, string>();
    taken.set(iommu, used);
    for (const sid of fields.sids ?? []) {
      const other = used.get(sid);
      if (other) throw new Error(`machine: StreamID 0x${sid.toString(16)} of ${iommu} given to both ${other} and ${bdf}`);
      used.set(sid, bdf);
    }
    out.push({ model: d.model, bdf, group, iommu, options: modelOptions(model, d.options ?? {}), ...fields });
  }
  return { description: desc.description ?? '', iommus: [...resolved.values()], devices: out };
}

/** `--machine PRESET|FILE`: a preset name, or a path to a JSON description. */
export function loadMachine(arg: string = DEFAULT_PRESET): Machine {
  const preset = PRESETS[arg];
  if (preset) return resolveMachine(preset);
  let text: string;
  try {
    text = fs.readFileSync(arg, 'utf8');
  } catch (e) {
    throw new Error(`machine: '${arg}' is neither a preset (${Object.keys(PRESETS).join(', ')}) nor a readable file: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`machine: ${arg}: not JSON: ${(e as Error).message}`);
  }
  return resolveMachine(json as MachineDesc);
}

/** Where the platform places 64-bit BARs (above 4 GiB, as a Skylake-SP host bridge does). */
const MMIO64_BASE = 0x380000000000n;

export interface BuiltDevice {
  readonly desc: ResolvedDevice;
  readonly pci: PciDeviceModel;
  readonly iommuDev: DriverDevice;
  readonly vfio: VfioPciDevice;
}

export interface BuiltMachine {
  readonly machine: Machine;
  readonly vfio: VfioSubsystem;
  readonly devices: readonly BuiltDevice[];
}

/** Create the machine's IOMMUs and devices in `emu` and bind the devices to vfio-pci. */
export function buildMachine(emu: Emulator, machine: Machine): BuiltMachine {
  const vfio = vfioOf(emu);
  if (vfio.devices.length) throw new Error('machine: this emulator already has devices');
  const units = new Map(machine.iommus.map((i) => [i.name, IOMMU_TYPES[i.type]!.create(emu, i)]));
  let mmio = MMIO64_BASE;
  const devices: BuiltDevice[] = [];
  for (const d of machine.devices) {
    const model = DEVICE_MODELS[d.model]!;
    const addrs: bigint[] = [];
    for (const b of model.bars) {
      const size = BigInt(b.size);
      mmio = (mmio + size - 1n) / size * size;
      addrs[b.index] = mmio;
      mmio += size;
    }
    const pci = model.create(addrs, d.options);
    // Device decisions go to the emulator's trace bus (the --trace printer, the inspector).
    pci.trace = (text) => {
      if (emu.bus.driversOn && emu.bus.wants(d.model)) emu.bus.emit({ t: 'driver', driver: d.model, point: 'device', data: { bdf: d.bdf, text } });
    };
    const iommuDev = units.get(d.iommu)!.probe(d);
    devices.push({ desc: d, pci, iommuDev, vfio: vfio.register(d.bdf, pci, iommuDev, d.group) });
  }
  return { machine, vfio, devices };
}

/** A human-readable table of the machine (iommufd-emu devices). */
export function describeMachine(m: Machine): string {
  const lines: string[] = [];
  if (m.description) lines.push(m.description);
  for (const i of m.iommus) lines.push(`iommu ${i.name}: ${i.type} — ${IOMMU_TYPES[i.type]!.describe(i)}`);
  if (!m.devices.length) lines.push('no devices');
  m.devices.forEach((d, k) => {
    const model = DEVICE_MODELS[d.model]!;
    const opts = Object.entries(d.options).map(([a, b]) => `${a}=${b}`).join(' ');
    const sids = d.sids ? `  StreamID${d.sids.length > 1 ? 's' : ''} ${d.sids.map((x) => `0x${x.toString(16)}`).join(',')}` : '';
    lines.push(`${d.bdf}  ${d.model}  group ${d.group}  /dev/vfio/devices/vfio${k}  behind ${d.iommu}${sids}  ${opts}`);
    lines.push(`    ${model.description}`);
  });
  if (m.devices.length) lines.push(`VFIO_SELFTESTS_BDF=${m.devices[0]!.bdf}`);
  return lines.join('\n');
}
