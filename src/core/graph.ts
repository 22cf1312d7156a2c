// The object graph, readable at any time: the emulator's contexts, each one's
// objects (users, short-term users, holders, kind-specific fields), the edges
// between them (references by kind, attachments by PASID), its IOASes' address
// spaces (areas with pins, reserved and allowed ranges) -- what the inspector
// draws and what a test or a debugger can ask for. Read-only: nothing here
// changes state.
import { enumText } from '../uapi/trace.js';
import type { Emulator } from './emulator.js';
import type { IommufdCtx } from './context.js';
import { Access } from './access.js';
import { Device } from './device.js';
import { Veventq } from './eventq.js';
import { FaultObj } from './fault.js';
import { HwptNested, HwptPaging, type Hwpt } from './hwpt.js';
import { HwQueue } from './hw_queue.js';
import { Ioas } from './ioas.js';
import { holderDesc, holdersText, IommufdObject, ObjectTable, ObjType } from './object.js';
import { PAGE_SIZE } from './usermem.js';
import { Viommu, Vdevice } from './viommu.js';
import type { HolderDesc, RefKind } from './trace_bus.js';
import { IOMMU_READ, IOMMU_WRITE } from '../drivers/driver.js';

/** Areas listed per IOAS in one graph (the total is always given). */
export const AREA_LIMIT = 256;
/** Pinned pages listed per area (runs of them; the count is exact up to this). */
const PIN_LIMIT = 4096;

export type FieldValue = string | number | boolean | null;

export interface HolderView {
  readonly holder: HolderDesc;
  readonly kind: RefKind;
}

export interface ObjectNode {
  readonly id: number;
  /** ObjType name: IOAS, HWPT_PAGING, HWPT_NESTED, DEVICE, VIOMMU, VDEVICE, ... */
  readonly kind: string;
  readonly users: number;
  readonly shortUsers: number;
  /** Visible to lookups (false while being created). */
  readonly published: boolean;
  /** An ID kept reserved after its object was force-destroyed. */
  readonly tombstone: boolean;
  /** Kind-specific state, for display ("parent": 5, "virt_id": "0x42", ...). */
  readonly fields: Record<string, FieldValue>;
  /** The holder of each user beyond the table's own. */
  readonly holders: HolderView[];
  /** What IOMMU_DESTROY of it would answer now: null = it would be destroyed. */
  readonly destroy: { readonly errno: string; readonly reason: string } | null;
}

export interface GraphEdge {
  /** An object ID, or the key of an external holder ("x1"). */
  readonly from: number | string;
  readonly to: number;
  readonly kind: RefKind;
  /** A user reference (false: a relation without one, e.g. a pre-6.17 vDEVICE's device). */
  readonly ref: boolean;
  readonly label?: string;
}

/** Something outside the object table that holds a reference: an fd's file, an mmap. */
export interface ExternalNode {
  readonly key: string;
  readonly label: string;
}

export interface AreaView {
  readonly iova: bigint;
  readonly last: bigint;
  readonly prot: string;
  /** Stored in the attached domains (its pages pinned for them). */
  readonly filled: boolean;
  /** Still being established by MAP/COPY. */
  readonly busy: boolean;
  readonly pages: number;
  /** Pages of the area currently pinned (by domains or accesses). */
  readonly pinned: number;
  /** Runs of pinned pages: [first page of the area, count]. */
  readonly pinnedRuns: readonly [number, number][];
  readonly accessPins: number;
  readonly locks: number;
  /** "user 0x7f..." or "file +0x..." */
  readonly source: string;
}

export interface IoasView {
  readonly id: number;
  readonly alignment: bigint;
  readonly hugePages: boolean;
  readonly areaCount: number;
  /** The first AREA_LIMIT areas, ascending. */
  readonly areas: AreaView[];
  readonly reserved: { readonly start: bigint; readonly last: bigint; readonly owner: string }[];
  readonly allowed: readonly [bigint, bigint][];
  /** What IOAS_IOVA_RANGES would report. */
  readonly usable: readonly [bigint, bigint][];
  readonly hwpts: number[];
  readonly accesses: number;
}

export interface ContextGraph {
  readonly ctx: number;
  readonly pid: number;
  readonly closed: boolean;
  /** References keeping the context alive. */
  readonly references: number;
  readonly objects: ObjectNode[];
  readonly externals: ExternalNode[];
  readonly edges: GraphEdge[];
  readonly ioas: IoasView[];
}

export interface EmulatorGraph {
  readonly profile: string;
  readonly contexts: ContextGraph[];
}

/** The whole emulator: every open context, in opening order. */
export function emulatorGraph(emu: Emulator): EmulatorGraph {
  return { profile: emu.profile.name, contexts: [...emu.contexts].map(contextGraph) };
}

const hex = (v: bigint | number): string => `0x${v.toString(16)}`;

function kindOf(o: IommufdObject): string {
  return ObjectTable.isTombstone(o) ? 'TOMBSTONE' : ObjType[o.type]!;
}

/** One context's objects, edges and address spaces. */
export function contextGraph(ctx: IommufdCtx): ContextGraph {
  const all = ctx.objects.all();
  const domainOwner = new Map<object, Hwpt>();
  for (const o of all) if (o instanceof HwptPaging || o instanceof HwptNested) if (o.domain) domainOwner.set(o.domain, o);
  const externals = new Map<object, ExternalNode>();
  const edges: GraphEdge[] = [];
  const objects: ObjectNode[] = [];
  for (const o of all) {
    const tomb = ObjectTable.isTombstone(o);
    const holders: HolderView[] = (o.holders ?? []).map((r) => ({ holder: holderDesc(r.holder, r.kind), kind: r.kind }));
    for (const r of o.holders ?? []) {
      // Attachments come from the devices' attachment maps (with their PASIDs), below.
      if (r.kind === 'attach' || r.holder === null) continue;
      if (r.holder instanceof IommufdObject) {
        edges.push({ from: r.holder.id, to: o.id, kind: r.kind, ref: true });
      } else {
        let x = externals.get(r.holder);
        if (!x) {
          const d = holderDesc(r.holder, r.kind);
          externals.set(r.holder, (x = { key: `x${externals.size + 1}`, label: 'label' in d ? d.label : r.kind }));
        }
        edges.push({ from: x.key, to: o.id, kind: r.kind, ref: true });
      }
    }
    if (o instanceof Device) {
      for (const [pasid, a] of o.attachments) {
        edges.push({ from: o.id, to: a.hwpt.id, kind: 'attach', ref: true, label: pasid ? `pasid ${pasid}` : undefined });
      }
    }
    if (o instanceof Vdevice && !(o.idev.holders ?? []).some((r) => r.holder === o)) {
      edges.push({ from: o.id, to: o.idev.id, kind: 'device', ref: false });
    }
    objects.push({
      id: o.id,
      kind: kindOf(o),
      users: o.users,
      shortUsers: o.shortUsers,
      published: o.published,
      tombstone: tomb,
      fields: tomb ? {} : fieldsOf(ctx, o),
      holders,
      destroy: !o.published || tomb ? { errno: 'ENOENT', reason: tomb ? 'a tombstone' : 'not published yet' }
        : o.users !== 1 ? { errno: 'EBUSY', reason: holdersText(o) } : null,
    });
  }
  return {
    ctx: ctx.seq,
    pid: ctx.owner.process.pid,
    closed: ctx.closed,
    references: ctx.references,
    objects,
    externals: [...externals.values()],
    edges,
    ioas: all.filter((o): o is Ioas => o instanceof Ioas).map((i) => ioasView(i, domainOwner)),
  };
}

function ownerText(owner: object, domainOwner: Map<object, Hwpt>): string {
  if (owner instanceof IommufdObject) return `${ObjType[owner.type]} ${owner.id}`;
  const h = domainOwner.get(owner);
  if (h) return `aperture of ${ObjType[h.type]} ${h.id}`;
  const o = owner as { owner?: unknown };
  return typeof o.owner === 'string' ? o.owner : 'reserved';
}

function protText(prot: number): string {
  return `${prot & IOMMU_READ ? 'r' : '-'}${prot & IOMMU_WRITE ? 'w' : '-'}`;
}

function ioasView(ioas: Ioas, domainOwner: Map<object, Hwpt>): IoasView {
  const iopt = ioas.iopt;
  const areas: AreaView[] = iopt.firstAreas(AREA_LIMIT).map((a) => {
    const first = a.firstIndex;
    const last = a.lastIndex;
    const idx = a.pages.pinnedIndices(first, last, PIN_LIMIT);
    const runs: [number, number][] = [];
    for (const i of idx) {
      const top = runs[runs.length - 1];
      if (top && top[0] + top[1] === i - first) top[1]++;
      else runs.push([i - first, 1]);
    }
    const src = a.pages.isFile ? `file +${hex(a.pages.base + a.startByte)}` : `user ${hex(a.pages.base + a.startByte)}`;
    return {
      iova: a.iova, last: a.last, prot: protText(a.prot), filled: a.filled, busy: a.busy, pages: last - first + 1,
      pinned: idx.length, pinnedRuns: runs, accessPins: iopt.numAccesses(a), locks: iopt.numLocks(a), source: src,
    };
  });
  return {
    id: ioas.id,
    alignment: iopt.iovaAlignment,
    hugePages: !iopt.hugePagesDisabled,
    areaCount: iopt.areaCount,
    areas,
    reserved: iopt.reservedWithOwners().map((r) => ({ start: r.start, last: r.last, owner: ownerText(r.owner, domainOwner) })),
    allowed: iopt.allowedRanges(),
    usable: iopt.usableRanges(),
    hwpts: (ioas.hwptList as IommufdObject[]).map((h) => h.id),
    accesses: iopt.accesses.size,
  };
}

/** The state worth showing for each kind (IDs of related objects, counts, modes). */
function fieldsOf(ctx: IommufdCtx, o: IommufdObject): Record<string, FieldValue> {
  const profile = ctx.profile;
  if (o instanceof Ioas) {
    return {
      areas: o.iopt.areaCount, alignment: hex(o.iopt.iovaAlignment), huge_pages: !o.iopt.hugePagesDisabled,
      domains: o.iopt.domains.length, accesses: o.iopt.accesses.size, vfio_compat: ctx.vfioIoas === o,
    };
  }
  if (o instanceof HwptPaging) {
    return {
      ioas: o.ioas.id, auto_domain: o.autoDomain, nest_parent: o.nestParent, pasid: o.pasidCompat,
      enforce_cache_coherency: o.enforceCacheCoherency, dirty_tracking: o.domain?.dirtyOps ?? false,
      fault: o.fault?.id ?? null, driver: o.domain?.driver.name ?? null, devices: attachedDevices(o),
    };
  }
  if (o instanceof HwptNested) {
    return {
      parent: o.parent.id, viommu: o.viommu?.id ?? null, pasid: o.pasidCompat, fault: o.fault?.id ?? null,
      driver: o.domain?.driver.name ?? null, devices: attachedDevices(o),
    };
  }
  if (o instanceof Device) {
    const att = [...o.attachments].sort((a, b) => a[0] - b[0]).map(([p, a]) => `${p ? `pasid ${p}` : 'rid'} -> ${a.hwpt.id}`);
    return {
      driver: o.dev.driver.name, attached: att.join(', ') || null, vdevice: o.vdev?.id ?? null,
      max_pasids: o.dev.maxPasids, iopf: o.iopfEnabled, partial_faults: o.partialFaults.length, unbinding: o.unbinding,
    };
  }
  if (o instanceof Viommu) {
    const vdevs = [...o.vdevs].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([v, d]) => `${hex(v)} -> ${d.id}`);
    const v1 = [...o.v1VdevIds].map(([v, d]) => `${hex(v)} -> ${d.id}`);
    return {
      type: enumText('iommu_viommu_type', o.viommuType, profile), parent: o.hwpt.id, device: o.driverDev.driver.name,
      vdevices: vdevs.join(', ') || null, veventqs: [...o.veventqs.values()].map((q) => q.id).join(', ') || null,
      ...(v1.length ? { v1_vdev_ids: v1.join(', ') } : {}),
    };
  }
  if (o instanceof Vdevice) return { viommu: o.viommu.id, device: o.idev.id, virt_id: hex(o.virtId) };
  if (o instanceof Veventq) {
    return {
      viommu: o.viommu.id, type: enumText('iommu_veventq_type', o.eventType, profile), depth: o.depth,
      pending: o.numEvents, lost_marker: o.records.includes(o.lost), next_sequence: o.sequence, fd_open: o.file !== null,
    };
  }
  if (o instanceof FaultObj) return { pending_groups: o.deliver.length, awaiting_response: o.response.size, fd_open: o.file !== null };
  if (o instanceof HwQueue) {
    return {
      viommu: o.viommu.id, type: enumText('iommu_hw_queue_type', o.queueType, profile), index: o.index,
      base_iova: hex(o.baseIova), length: hex(o.length), pinned: o.pinLength ? `${hex(o.pinStart)} +${hex(o.pinLength)}` : null,
      access: o.access?.id ?? null,
    };
  }
  if (o instanceof Access) return { ioas: o.ioas?.id ?? null, internal: o.internal, pins_pages: o.iovaAlignment === BigInt(PAGE_SIZE) };
  const idev = (o as { idev?: unknown }).idev; // the selftest object of a mock device
  if (idev instanceof Device) return { device: idev.id, driver: idev.dev.driver.name };
  return {};
}

function attachedDevices(h: Hwpt): number {
  return (h.holders ?? []).filter((r) => r.kind === 'attach').length;
}

/**
 * Bookkeeping problems of a context's references: every live object must have
 * exactly one holder record per user beyond the table's own, and no lookup
 * may outlive its call. Empty when all is well.
 */
export function referenceProblems(ctx: IommufdCtx): string[] {
  const out: string[] = [];
  for (const o of ctx.objects.all()) {
    if (ObjectTable.isTombstone(o)) continue;
    const n = o.holders?.length ?? 0;
    if (o.users !== 1 + n) out.push(`${kindOf(o)} ${o.id}: ${o.users} users, ${n} holder records`);
    if (o.shortUsers !== 0) out.push(`${kindOf(o)} ${o.id}: ${o.shortUsers} short-term users between calls`);
  }
  return out;
}
