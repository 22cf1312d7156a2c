import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PFNS, PhysMemory } from './physmem.js';
import { SimMemory } from './simmem.js';
import { PAGE_SIZE } from './usermem.js';

test('two simulated address spaces never share a pfn', () => {
  const a = new SimMemory();
  const b = new SimMemory();
  const pa = a.getPages(a.mmap(2 * PAGE_SIZE), 2, true).map((p) => p.pfn);
  const pb = b.getPages(b.mmap(2 * PAGE_SIZE), 2, true).map((p) => p.pfn);
  assert.equal(new Set([...pa, ...pb]).size, 4);
});

test('huge pfn runs are 512-aligned', () => {
  PFNS.one();
  assert.equal(PFNS.huge() % 512, 0);
});

test('physical reads and writes reach only added pages, across page boundaries', () => {
  const m = new SimMemory();
  // Pages faulted in one by one are never adjacent; a contiguous buffer is.
  const ova = m.mmap(2 * PAGE_SIZE);
  const [o0, o1] = m.getPages(ova, 2, true);
  assert.notEqual(o1!.pfn, o0!.pfn + 1);
  const va = m.mmap(2 * PAGE_SIZE, { contiguous: true });
  const [p0, p1] = m.getPages(va, 2, true);
  assert.equal(p1!.pfn, p0!.pfn + 1);
  const phys = new PhysMemory();
  const base = p0!.pfn * PAGE_SIZE;
  assert.equal(phys.read(base, 4), undefined);
  phys.add(p0!);
  assert.deepEqual(phys.read(base + 1, 2), new Uint8Array(2));
  // A write running into a page that is not reachable writes nothing at all.
  assert.equal(phys.write(base + PAGE_SIZE - 2, new Uint8Array([1, 2, 3, 4])), false);
  assert.deepEqual(m.read(va + BigInt(PAGE_SIZE - 2), 4), new Uint8Array(4));
  phys.add(p1!);
  assert.equal(phys.write(base + PAGE_SIZE - 2, new Uint8Array([1, 2, 3, 4])), true);
  assert.deepEqual(m.read(va + BigInt(PAGE_SIZE - 2), 4), new Uint8Array([1, 2, 3, 4]));
  phys.remove(p1!);
  assert.equal(phys.write(base + 8, new Uint8Array([7, 8])), true);
  assert.deepEqual(m.read(va + 8n, 2), new Uint8Array([7, 8]));
  phys.add(p0!);
  phys.remove(p0!);
  assert.ok(phys.page(p0!.pfn));
  phys.remove(p0!);
  assert.equal(phys.page(p0!.pfn), undefined);
  assert.throws(() => phys.remove(p0!), /unknown pfn/);
});

test('a page mapped into a domain is reachable by its physical address until unmapped', async () => {
  const { openIommufd } = await import('../api.js');
  const { PHYS } = await import('./physmem.js');
  const fd = openIommufd({ profile: 'mainline' });
  const ioas = fd.ioasAlloc();
  fd.mockDomain(ioas);
  const va = fd.mem.mmap(PAGE_SIZE);
  fd.mem.write(va, new Uint8Array([0xaa, 0xbb]));
  const pfn = fd.mem.getPages(va, 1, false)[0]!.pfn;
  assert.equal(PHYS.page(pfn), undefined);
  fd.ioasMap({ ioasId: ioas, userVa: va, length: BigInt(PAGE_SIZE), iova: 1n << 24n });
  assert.deepEqual(PHYS.read(pfn * PAGE_SIZE, 2), new Uint8Array([0xaa, 0xbb]));
  fd.ioasUnmap(ioas, 1n << 24n, BigInt(PAGE_SIZE));
  assert.equal(PHYS.page(pfn), undefined);
  fd.close();
});
