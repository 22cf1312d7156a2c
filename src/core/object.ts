// The object table: IDs, users (long-term references), publication, abort,
// destroy and tombstones -- the analogue of the kernel's main.c object core.
import { XaShape } from './fault_inject.js';
import { BTree } from './btree.js';
import { fail } from '../uapi/errno.js';
import { describeHolder, type HolderDesc, type RefKind, type TraceBus } from './trace_bus.js';

export enum ObjType {
  ANY = 0,
  DEVICE = 1,
  HWPT_PAGING = 2,
  HWPT_NESTED = 3,
  IOAS = 4,
  ACCESS = 5,
  FAULT = 6,
  VIOMMU = 7,
  VDEVICE = 8,
  VEVENTQ = 9,
  HW_QUEUE = 10,
  SELFTEST = 11,
}

export const ID_MAX = 0x7fffffff;

/** One long-term reference: who holds it and why (refget's holder and kind). */
export interface HolderRecord {
  readonly holder: object | null;
  readonly kind: RefKind;
}

export abstract class IommufdObject {
  id = 0;
  /** Long-term users: 1 for the table's own reference plus one per holder. */
  users = 1;
  published = false;
  /** Short-term users: lookups held by the ioctl in progress (always 0 between calls). */
  shortUsers = 0;
  /** The holder of each user beyond the table's own, in the order taken (null: none). */
  holders: HolderRecord[] | null = null;
  /** The table the object's ID lives in (set when reserved): how its events reach the trace bus. */
  table: ObjectTable | null = null;
  abstract readonly type: ObjType;
  /** Drop the references this object holds on others and release its resources. */
  abstract destroy(): void;
}

/** A reserved ID whose object was force-destroyed (vDEVICE after device unbind). */
class Tombstone extends IommufdObject {
  readonly type = ObjType.ANY;
  destroy(): void {}
}

/** What a table needs of its context: a number for events, and the emulator's bus. */
export interface TableOwner {
  readonly seq: number;
  readonly emu: { readonly bus: TraceBus };
}

export class ObjectTable {
  private readonly objs = new Map<number, IommufdObject>();
  private readonly freeIds = new BTree<number, undefined>();
  private nextId = 1;
  /** The shape of the kernel's objects xarray (its node allocations are fault points). */
  readonly xa = new XaShape();

  /** The trace bus of the owning emulator (null for a bare table). */
  readonly bus: TraceBus | null;

  /** `owner` is the context (absent for a bare table in tests: no events). */
  constructor(readonly owner: TableOwner | null = null) {
    this.bus = owner ? owner.emu.bus : null;
  }

  /** The context number events carry. */
  get ctxSeq(): number {
    return this.owner?.seq ?? 0;
  }

  private event(op: 'alloc' | 'finalize' | 'abort' | 'destroy' | 'tombstone', obj: IommufdObject): void {
    this.bus!.emit({ t: 'obj', op, ctx: this.ctxSeq, id: obj.id, kind: ObjType[obj.type] });
  }

  get size(): number {
    return this.objs.size;
  }

  /** The ID the next alloc() takes (the lowest free one), or undefined when none is left. */
  peekId(): number | undefined {
    const lowest = this.freeIds.minKey();
    if (lowest !== undefined) return lowest;
    return this.nextId > ID_MAX ? undefined : this.nextId;
  }

  /** Reserve the lowest free ID for `obj` (not yet visible to lookups). */
  alloc<T extends IommufdObject>(obj: T): T {
    let id: number;
    const lowest = this.freeIds.minKey();
    if (lowest !== undefined) {
      id = lowest;
      this.freeIds.delete(lowest);
    } else {
      if (this.nextId > ID_MAX) fail('ENOSPC', 'object IDs exhausted');
      id = this.nextId++;
    }
    this.xa.store(id);
    obj.id = id;
    obj.table = this;
    this.objs.set(id, obj);
    if (this.bus?.on) this.event('alloc', obj);
    return obj;
  }

  /** Make a reserved object visible to lookups. */
  finalize(obj: IommufdObject): void {
    obj.published = true;
    if (this.bus?.on) this.event('finalize', obj);
  }

  private release(id: number): void {
    this.objs.delete(id);
    this.xa.erase(id);
    if (id === this.nextId - 1) {
      this.nextId--;
      // Keep the invariant "every id < nextId is used or free": fold free tail ids back.
      while (this.nextId > 1 && this.freeIds.has(this.nextId - 1)) this.freeIds.delete(--this.nextId);
    } else {
      this.freeIds.set(id, undefined);
    }
  }

  /** Undo a half-made object: run its destructor and free the ID. */
  abort(obj: IommufdObject): void {
    if (this.objs.get(obj.id) !== obj) return;
    this.release(obj.id);
    if (this.bus?.on) this.event('abort', obj);
    obj.destroy();
  }

  /** Look up a published object by ID and type (ANY matches all). Missing, unpublished, wrong type, tombstone: ENOENT. */
  get(id: number, type: ObjType): IommufdObject {
    const obj = this.objs.get(id);
    if (!obj || !obj.published || obj instanceof Tombstone || (type !== ObjType.ANY && obj.type !== type)) {
      fail('ENOENT', lookupMiss(obj, id, type));
    }
    return obj;
  }

  /** Like get() but returns undefined instead of failing. */
  find(id: number, type: ObjType): IommufdObject | undefined {
    const obj = this.objs.get(id);
    if (!obj || !obj.published || obj instanceof Tombstone || (type !== ObjType.ANY && obj.type !== type)) return undefined;
    return obj;
  }

  /** IOMMU_DESTROY: only when the table holds the sole reference. */
  destroyUser(id: number, type = ObjType.ANY): void {
    const obj = this.get(id, type);
    if (obj.users !== 1) fail('EBUSY', `${ObjType[obj.type]} ${id} is in use: ${holdersText(obj)}`);
    this.release(id);
    obj.users = 0;
    if (this.bus?.on) this.event('destroy', obj);
    obj.destroy();
  }

  /**
   * Kernel-initiated removal (device unbind, driver-owned objects): the caller
   * holds `extraUsers` references besides the table's.
   */
  removeOwned(obj: IommufdObject, extraUsers = 0): void {
    if (obj.users !== 1 + extraUsers) throw new Error(`removeOwned: object ${obj.id} still has ${obj.users} users`);
    this.release(obj.id);
    obj.users = 0;
    obj.holders = null; // the caller's references go with it
    if (this.bus?.on) this.event('destroy', obj);
    obj.destroy();
  }

  /** Destroy `obj` now and keep its ID reserved until the context closes. */
  tombstone(obj: IommufdObject): void {
    const t = new Tombstone();
    t.id = obj.id;
    t.published = true;
    this.objs.set(obj.id, t);
    obj.users = 0;
    if (this.bus?.on) this.event('tombstone', obj);
    obj.destroy();
  }

  /** True if any ID (object, half-made object or tombstone) is in use. */
  get empty(): boolean {
    return this.objs.size === 0;
  }

  /** True for an ID kept reserved after its object was force-destroyed. */
  static isTombstone(obj: IommufdObject): boolean {
    return obj instanceof Tombstone;
  }

  /** All objects in ascending ID order (a snapshot). */
  all(): IommufdObject[] {
    return [...this.objs.values()].sort((a, b) => a.id - b.id);
  }

  /**
   * Context release: passes in ascending ID order destroying every object only
   * the table holds, until none is left; then tombstones are dropped.
   */
  destroyAll(): void {
    for (;;) {
      const live = this.all().filter((o) => !(o instanceof Tombstone));
      if (live.length === 0) break;
      let progressed = false;
      for (const obj of live) {
        if (this.objs.get(obj.id) !== obj || obj.users !== 1) continue;
        this.release(obj.id);
        obj.users = 0;
        if (this.bus?.on) this.event('destroy', obj);
        obj.destroy();
        progressed = true;
      }
      if (!progressed) {
        throw new Error(`context teardown stuck: ${live.map((o) => `${ObjType[o.type]}#${o.id}(users=${o.users})`).join(', ')}`);
      }
    }
    this.objs.clear();
    this.freeIds.clear();
    this.nextId = 1;
  }
}

/** Why a lookup of `id` as `type` found nothing (ENOENT's reason). */
function lookupMiss(obj: IommufdObject | undefined, id: number, type: ObjType): string {
  const want = type === ObjType.ANY ? 'object' : ObjType[type];
  if (!obj) return `no ${want} ${id}`;
  if (obj instanceof Tombstone) return `${want} ${id} was destroyed with its device (a tombstone keeps the ID)`;
  if (!obj.published) return `${ObjType[obj.type]} ${id} is still being created`;
  return `object ${id} is a ${ObjType[obj.type]}, not a ${want}`;
}

/** How events and the graph name a holder. */
export function holderDesc(holder: object | null, kind: RefKind): HolderDesc {
  if (holder === null) return { label: kind };
  return describeHolder(holder, (h) => (h instanceof IommufdObject ? { id: h.id, kind: ObjType[h.type] } : null));
}

/** "DEVICE 3 (attach), [iommufd-pgfault] (file)": the holders of `obj`, for EBUSY reasons. */
export function holdersText(obj: IommufdObject): string {
  const hs = obj.holders ?? [];
  if (hs.length === 0) return `${obj.users - 1} other users`;
  return 'held by ' + hs.map((r) => {
    const d = holderDesc(r.holder, r.kind);
    return 'obj' in d ? `${d.kind} ${d.obj} (${r.kind})` : d.label === r.kind ? r.kind : `${d.label} (${r.kind})`;
  }).join(', ');
}

function refEvent(op: 'get' | 'put', obj: IommufdObject, holder: object | null, kind: RefKind, bus: TraceBus): void {
  bus.emit({
    t: 'ref', op, ctx: obj.table!.ctxSeq, id: obj.id, kind: ObjType[obj.type], ref: kind, holder: holderDesc(holder, kind),
    users: obj.users,
  });
}

/**
 * Take a long-term user reference on `obj` for `holder` (the object, file or
 * mapping that keeps it; null when there is nothing to name), of kind `kind`.
 */
export function refget(obj: IommufdObject, holder: object | null = null, kind: RefKind = 'unknown'): void {
  obj.users++;
  (obj.holders ??= []).push({ holder, kind });
  const bus = obj.table?.bus;
  if (bus?.on) refEvent('get', obj, holder, kind, bus);
}

/** Drop the reference `holder` took with refget (matched by holder and kind). */
export function refput(obj: IommufdObject, holder: object | null = null, kind: RefKind = 'unknown'): void {
  if (obj.users <= 0) throw new Error(`refput underflow on object ${obj.id}`);
  obj.users--;
  const hs = obj.holders;
  if (hs) {
    // The exact record; a caller that did not name its holder drops one of its kind (the count stays right).
    let i = hs.findIndex((r) => r.holder === holder && r.kind === kind);
    if (i < 0) i = hs.findIndex((r) => r.kind === kind);
    if (i < 0) i = hs.findIndex((r) => r.holder === holder);
    hs.splice(i < 0 ? 0 : i, 1);
    if (hs.length === 0) obj.holders = null;
  }
  const bus = obj.table?.bus;
  if (bus?.on) refEvent('put', obj, holder, kind, bus);
}
