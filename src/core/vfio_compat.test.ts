// VFIO type1 container requests on the iommufd fd (05 §5, 01 §4.22), raw entry.
import assert from 'node:assert/strict';
import test from 'node:test';
import { isErrno, type ErrnoName } from '../uapi/errno.js';
import { OPTION, VFIO_IOAS_OP } from '../uapi/enums.js';
import { IO, VFIO } from '../uapi/ioctls.js';
import { encode } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import { getIoas } from './ioas.js';
import { env, errOf, ioasAlloc, map, mockDomain, option, pins, raw, unmap, U64_MAX, type Env } from './ioas_test_helpers.js';

const is = (code: ErrnoName) => (e: unknown): boolean => isErrno(e, code);
const MiB = 1n << 20n;

function compat(e: Env, type?: number): number {
  const id = ioasAlloc(e);
  mockDomain(e, id);
  raw(e, 'VFIO_IOAS', S.iommu_vfio_ioas, { op: VFIO_IOAS_OP.SET, ioas_id: id });
  if (type !== undefined) e.ctx.ioctl(VFIO.SET_IOMMU, BigInt(type), e.caller);
  return id;
}

function put(e: Env, bytes: Uint8Array, room = 0): bigint {
  const addr = e.mem.alloc(bytes.length + room);
  e.mem.write(addr, bytes);
  return addr;
}

function mapDma(e: Env, v: Record<string, unknown>): number {
  const addr = put(e, encode(S.vfio_iommu_type1_dma_map, { argsz: 32, flags: 3, ...v }));
  return e.ctx.ioctl(VFIO.IOMMU_MAP_DMA, addr, e.caller);
}

function unmapDma(e: Env, v: Record<string, unknown>): { err: ErrnoName | 0; size: bigint } {
  const addr = put(e, encode(S.vfio_iommu_type1_dma_unmap, { argsz: 24, size: 0n, ...v }));
  const err = errOf(() => e.ctx.ioctl(VFIO.IOMMU_UNMAP_DMA, addr, e.caller));
  return { err, size: new DataView(e.mem.read(addr, 24).buffer).getBigUint64(16, true) };
}

test('GET_API_VERSION returns 0; CHECK_EXTENSION answers without a compat IOAS except DMA_CC', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    assert.equal(e.ctx.ioctl(VFIO.GET_API_VERSION, 0n, e.caller), 0);
    for (const [ext, want] of [[1, 1], [3, 1], [9, 1], [6, 0], [10, 0], [8, 0], [77, 0]] as const) {
      assert.equal(e.ctx.ioctl(VFIO.CHECK_EXTENSION, BigInt(ext), e.caller), want);
    }
    assert.equal(e.ctx.ioctl(VFIO.CHECK_EXTENSION, (1n << 32n) | 1n, e.caller), 0);
    assert.throws(() => e.ctx.ioctl(VFIO.CHECK_EXTENSION, 4n, e.caller), is('ENODEV'));
    const id = ioasAlloc(e);
    raw(e, 'VFIO_IOAS', S.iommu_vfio_ioas, { op: VFIO_IOAS_OP.SET, ioas_id: id });
    assert.equal(e.ctx.ioctl(VFIO.CHECK_EXTENSION, 4n, e.caller), 1);
    // DMA_CC is 1 only when every paging HWPT of the compat IOAS enforces coherency.
    const ioas = getIoas(e.ctx, id);
    ioas.hwptList.push({ enforceCacheCoherency: true });
    assert.equal(e.ctx.ioctl(VFIO.CHECK_EXTENSION, 4n, e.caller), 1);
    ioas.hwptList.push({ enforceCacheCoherency: false });
    assert.equal(e.ctx.ioctl(VFIO.CHECK_EXTENSION, 4n, e.caller), 0);
    ioas.hwptList.length = 0;
  }
});

test('Unknown requests and DIRTY_PAGES are ENOTTY', () => {
  const e = env();
  assert.throws(() => e.ctx.ioctl(VFIO.IOMMU_DIRTY_PAGES, 0n, e.caller), is('ENOTTY'));
  assert.throws(() => e.ctx.ioctl(IO(0x60), 0n, e.caller), is('ENOTTY'));
  assert.throws(() => e.ctx.ioctl(0x3c64, 0n, e.caller), is('ENOTTY'));
});

test('SET_IOMMU: EINVAL for other types, ENODEV without compat IOAS, v1 disables huge pages', () => {
  const e = env();
  assert.throws(() => e.ctx.ioctl(VFIO.SET_IOMMU, 2n, e.caller), is('EINVAL'));
  assert.throws(() => e.ctx.ioctl(VFIO.SET_IOMMU, 1n, e.caller), is('ENODEV'));
  assert.throws(() => e.ctx.ioctl(VFIO.SET_IOMMU, 3n, e.caller), is('ENODEV'));
  const v2 = env();
  const id2 = compat(v2, VFIO.TYPE1v2_IOMMU);
  assert.equal(option(v2, OPTION.HUGE_PAGES, OPTION.OP_GET, id2), 1n);
  const v1 = env();
  const id1 = compat(v1, VFIO.TYPE1_IOMMU);
  assert.equal(option(v1, OPTION.HUGE_PAGES, OPTION.OP_GET, id1), 0n);
  // A compat IOAS with a domain and an area can no longer switch to v1.
  const late = env();
  const idl = compat(late);
  map(late, idl, late.mem.mmap(0x1000), 0x1000n, { iova: 0x1000000n });
  assert.throws(() => late.ctx.ioctl(VFIO.SET_IOMMU, 1n, late.caller), is('EINVAL'));
});

test('MAP_DMA / UNMAP_DMA: argument checks, then ENODEV without compat IOAS', () => {
  const e = env();
  assert.throws(() => e.ctx.ioctl(VFIO.IOMMU_MAP_DMA, 0n, e.caller), is('EFAULT'));
  assert.throws(() => mapDma(e, { argsz: 1 }), is('EINVAL'));
  assert.throws(() => mapDma(e, { flags: 1 << 31 }), is('EINVAL'));
  assert.throws(() => mapDma(e, {}), is('ENODEV'));
  assert.throws(() => e.ctx.ioctl(VFIO.IOMMU_UNMAP_DMA, 0n, e.caller), is('EFAULT'));
  assert.equal(unmapDma(e, { argsz: 1 }).err, 'EINVAL');
  assert.equal(unmapDma(e, { flags: 1 << 31 }).err, 'EINVAL');
  assert.equal(unmapDma(e, { flags: 1 }).err, 'EINVAL');
  assert.equal(unmapDma(e, {}).err, 'ENODEV');
});

test('MAP_DMA / UNMAP_DMA: map, empty unmap succeeds with 0, UNMAP_ALL rules', () => {
  for (const type of [VFIO.TYPE1v2_IOMMU, VFIO.TYPE1_IOMMU]) {
    const e = env();
    compat(e, type);
    const va = e.mem.mmap(0x10000);
    assert.equal(mapDma(e, { vaddr: va, iova: 0x1000000n, size: 0x10000n }), 0);
    assert.deepEqual(unmapDma(e, { iova: 0x1000000n, size: 0x10000n }), { err: 0, size: 0x10000n });
    assert.deepEqual(unmapDma(e, { iova: 0x1000000n, size: 0x10000n }), { err: 0, size: 0n });
    mapDma(e, { vaddr: va, iova: 0x1000000n, size: 0x10000n });
    assert.equal(unmapDma(e, { flags: VFIO.DMA_UNMAP_FLAG_ALL, iova: 0x1000n }).err, 'EINVAL');
    assert.deepEqual(unmapDma(e, { flags: VFIO.DMA_UNMAP_FLAG_ALL }), { err: 0, size: 0x10000n });
    assert.equal(unmapDma(e, { iova: 0x1000000n, size: 0n }).err, 'EINVAL');
    assert.equal(unmapDma(e, { iova: U64_MAX, size: 2n }).err, 'EOVERFLOW');
    // 16 single pages unmapped in a scrambled order.
    for (let i = 0n; i < 16n; i++) mapDma(e, { vaddr: va + i * 0x1000n, iova: 0x2000000n + i * 0x1000n, size: 0x1000n });
    for (const i of [5n, 0n, 15n, 9n, 2n, 12n, 7n, 1n, 14n, 3n, 10n, 6n, 13n, 4n, 11n, 8n]) {
      assert.deepEqual(unmapDma(e, { iova: 0x2000000n + i * 0x1000n, size: 0x1000n }), { err: 0, size: 0x1000n });
    }
  }
});

test('UNMAP_DMA inside a huge mapping: v1 cuts areas, v2 gives ENOENT with size 0 copied back', () => {
  for (const type of [VFIO.TYPE1v2_IOMMU, VFIO.TYPE1_IOMMU]) {
    const e = env();
    const id = compat(e, type);
    const va = e.mem.mmap(4 << 20, { hugetlb: true, shared: true });
    mapDma(e, { vaddr: va, iova: 0x1000000n, size: 4n * MiB });
    const order = [3, 11, 0, 15, 7, 1, 9, 14, 4, 12, 2, 8, 13, 5, 10, 6];
    for (const i of order) {
      const r = unmapDma(e, { iova: 0x1000000n + BigInt(i) * 0x40000n, size: 0x40000n });
      if (type === VFIO.TYPE1_IOMMU) assert.deepEqual(r, { err: 0, size: 0x40000n });
      else assert.deepEqual(r, { err: 'ENOENT', size: 0n });
    }
    assert.deepEqual(pins(e, va, 0x1000n), [type === VFIO.TYPE1_IOMMU ? 0 : 1]);
    if (type === VFIO.TYPE1v2_IOMMU) assert.equal(unmap(e, id, 0n, U64_MAX), 4n * MiB);
  }
});

test('GET_INFO: argsz checks, layout with one mock domain (72 bytes), nothing written at or beyond argsz', () => {
  for (const profile of ['mainline', '6.12'] as const) {
    const e = env(profile);
    const call = (argsz: number, size = 128): { err: ErrnoName | 0; b: Uint8Array } => {
      const b = new Uint8Array(size).fill(0xaa);
      new DataView(b.buffer).setUint32(0, argsz, true);
      const addr = put(e, b);
      const err = errOf(() => e.ctx.ioctl(VFIO.IOMMU_GET_INFO, addr, e.caller));
      return { err, b: e.mem.read(addr, size) };
    };
    assert.equal(call(1).err, 'EINVAL');
    assert.equal(call(16).err, 'ENODEV');
    compat(e);
    for (let argsz = 16; argsz < 72; argsz = argsz === 16 ? 24 : argsz + 1) {
      const { err, b } = call(argsz);
      assert.equal(err, 0);
      assert.ok(b.subarray(argsz).every((x) => x === 0xaa), `argsz ${argsz} wrote past the end`);
      const dv = new DataView(b.buffer);
      assert.equal(dv.getUint32(0, true), 72);
      if (argsz >= 8) assert.equal(dv.getUint32(4, true), 3);
      if (argsz >= 24) assert.equal(dv.getUint32(16, true), 0);
    }
    const { b } = call(72);
    const dv = new DataView(b.buffer);
    assert.equal(dv.getUint32(0, true), 72);
    assert.equal(dv.getUint32(4, true), VFIO.INFO_FLAGS_PGSIZES | VFIO.INFO_CAPS);
    // The domain's sizes with the sub-page ones folded into PAGE_SIZE: gen B's table offers 4K..64G.
    assert.equal(dv.getBigUint64(8, true), profile === '6.12' ? 4096n : ((1n << 37n) - 1n) & ~4095n);
    assert.equal(dv.getUint32(16, true), 24);
    assert.deepEqual([dv.getUint16(24, true), dv.getUint16(26, true), dv.getUint32(28, true), dv.getUint32(32, true)],
      [VFIO.CAP_DMA_AVAIL, 1, 40, 0xffffffff]);
    assert.deepEqual([dv.getUint16(40, true), dv.getUint16(42, true), dv.getUint32(44, true), dv.getUint32(48, true)],
      [VFIO.CAP_IOVA_RANGE, 1, 0, 1]);
    assert.deepEqual([dv.getBigUint64(56, true), dv.getBigUint64(64, true)], [1n << 24n, (1n << 31n) - 1n]);
    assert.ok(b.subarray(72).every((x) => x === 0xaa));
  }
});

test('MAP_DMA without READ/WRITE: 7.3\'s generic page table refuses a mapping with neither (EINVAL), 6.12\'s xarray mock takes it', () => {
  // Found by the 7.3.4 golden traces: VFIO_IOMMU_MAP_DMA with flags 0 into a compat IOAS with a mock domain.
  for (const [profile, ok] of [['7.3', false], ['6.12', true]] as const) {
    const e = env(profile);
    compat(e, VFIO.TYPE1v2_IOMMU);
    const va = e.mem.mmap(0x2000);
    const r = errOf(() => mapDma(e, { flags: 0, vaddr: va, iova: 0x1000000n, size: 0x2000n }));
    assert.equal(r, ok ? 0 : 'EINVAL', profile);
    if (!ok) assert.equal(errOf(() => mapDma(e, { vaddr: va, iova: 0x1000000n, size: 0x2000n })), 0, 'nothing was left behind');
  }
});
