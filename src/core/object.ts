// The object table: IDs, users (long-term references), publication, abort,
// destroy and tombstones -- the analogue of the kernel's main.c object core.
import { BTree } from './btree.js';
import { fail } from '../uapi/errno.js';

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

export abstract class IommufdObject {
  id = 0;
  /** Long-term users: 1 for the table's own reference plus one per holder. */
  users = 1;
  published = false;
  abstract readonly type: ObjType;
  /** Drop the references this object holds on others and release its resources. */
  abstract destroy(): void;
}

/** A reserved ID whose object was force-destroyed (vDEVICE after device unbind). */
class Tombstone extends IommufdObject {
  readonly type = ObjType.ANY;
  destroy(): void {}
}

export class ObjectTable {
  private readonly objs = new Map<number, IommufdObject>();
  private readonly freeIds = new BTree<number, undefined>();
  private nextId = 1;

  get size(): number {
    return this.objs.size;
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
    obj.id = id;
    this.objs.set(id, obj);
    return obj;
  }

  /** Make a reserved object visible to lookups. */
  finalize(obj: IommufdObject): void {
    obj.published = true;
  }

  private release(id: number): void {
    this.objs.delete(id);
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
    obj.destroy();
  }

  /** Look up a published object by ID and type (ANY matches all). Missing, unpublished, wrong type, tombstone: ENOENT. */
  get(id: number, type: ObjType): IommufdObject {
    const obj = this.objs.get(id);
    if (!obj || !obj.published || obj instanceof Tombstone || (type !== ObjType.ANY && obj.type !== type)) fail('ENOENT');
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
    if (obj.users !== 1) fail('EBUSY');
    this.release(id);
    obj.users = 0;
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
    obj.destroy();
  }

  /** Destroy `obj` now and keep its ID reserved until the context closes. */
  tombstone(obj: IommufdObject): void {
    const t = new Tombstone();
    t.id = obj.id;
    t.published = true;
    this.objs.set(obj.id, t);
    obj.users = 0;
    obj.destroy();
  }

  /** True if any ID (object, half-made object or tombstone) is in use. */
  get empty(): boolean {
    return this.objs.size === 0;
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

/** Take / drop a long-term user reference. */
export function refget(obj: IommufdObject): void {
  obj.users++;
}
export function refput(obj: IommufdObject): void {
  if (obj.users <= 0) throw new Error(`refput underflow on object ${obj.id}`);
  obj.users--;
}
