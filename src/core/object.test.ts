import assert from 'node:assert/strict';
import test from 'node:test';
import { isErrno } from '../uapi/errno.js';
import { IommufdObject, ObjectTable, ObjType, refget, refput } from './object.js';

class Thing extends IommufdObject {
  readonly type: ObjType;
  destroyed = 0;
  constructor(type = ObjType.IOAS, readonly onDestroy?: () => void) {
    super();
    this.type = type;
  }
  destroy(): void {
    this.destroyed++;
    this.onDestroy?.();
  }
}

function published(t: ObjectTable, o: Thing): Thing {
  t.alloc(o);
  t.finalize(o);
  return o;
}

test('IDs start at 1 and the lowest free ID is reused at once', () => {
  const t = new ObjectTable();
  const a = published(t, new Thing());
  const b = published(t, new Thing());
  const c = published(t, new Thing());
  assert.deepEqual([a.id, b.id, c.id], [1, 2, 3]);
  t.destroyUser(2);
  t.destroyUser(1);
  assert.equal(published(t, new Thing()).id, 1);
  assert.equal(published(t, new Thing()).id, 2);
  assert.equal(published(t, new Thing()).id, 4);
});

test('freeing the highest IDs lowers the next fresh ID', () => {
  const t = new ObjectTable();
  const objs = [1, 2, 3, 4].map(() => published(t, new Thing()));
  t.destroyUser(4);
  t.destroyUser(3);
  t.destroyUser(2);
  assert.equal(published(t, new Thing()).id, 2);
  void objs;
});

test('an unpublished object is invisible to lookups and abort frees its ID', () => {
  const t = new ObjectTable();
  const o = t.alloc(new Thing());
  assert.throws(() => t.get(o.id, ObjType.ANY), (e) => isErrno(e, 'ENOENT'));
  t.abort(o);
  assert.equal(o.destroyed, 1);
  assert.equal(t.empty, true);
  assert.equal(published(t, new Thing()).id, 1);
});

test('lookup with the wrong type gives ENOENT', () => {
  const t = new ObjectTable();
  const o = published(t, new Thing(ObjType.IOAS));
  assert.equal(t.get(o.id, ObjType.IOAS), o);
  assert.throws(() => t.get(o.id, ObjType.HWPT_PAGING), (e) => isErrno(e, 'ENOENT'));
  assert.throws(() => t.get(99, ObjType.ANY), (e) => isErrno(e, 'ENOENT'));
});

test('destroy of an object with other users is EBUSY and changes nothing', () => {
  const t = new ObjectTable();
  const o = published(t, new Thing());
  refget(o);
  assert.throws(() => t.destroyUser(o.id), (e) => isErrno(e, 'EBUSY'));
  assert.equal(o.destroyed, 0);
  refput(o);
  t.destroyUser(o.id);
  assert.equal(o.destroyed, 1);
});

test('a tombstone keeps its ID reserved and looks missing', () => {
  const t = new ObjectTable();
  const o = published(t, new Thing(ObjType.VDEVICE));
  t.tombstone(o);
  assert.equal(o.destroyed, 1);
  assert.throws(() => t.get(o.id, ObjType.ANY), (e) => isErrno(e, 'ENOENT'));
  assert.throws(() => t.destroyUser(o.id), (e) => isErrno(e, 'ENOENT'));
  assert.equal(t.empty, false);
  assert.equal(published(t, new Thing()).id, 2);
});

test('teardown destroys leaves first, in ascending ID order per pass', () => {
  const t = new ObjectTable();
  const order: number[] = [];
  const parent = published(t, new Thing(ObjType.IOAS, () => order.push(parent.id)));
  const child = published(t, new Thing(ObjType.HWPT_PAGING, () => { order.push(child.id); refput(parent); }));
  refget(parent);
  const other = published(t, new Thing(ObjType.IOAS, () => order.push(other.id)));
  t.destroyAll();
  assert.deepEqual(order, [2, 3, 1]);
  assert.equal(t.empty, true);
});
