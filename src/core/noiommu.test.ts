// IOMMU_IOAS_NOIOMMU_GET_PA (0x95, new in 7.3): absent before, in the table from 7.3 on
// with the dispatcher's size rules, EOPNOTSUPP without CONFIG_IOMMUFD_NOIOMMU (a default
// kernel), the handler's own checks in order with it.
import assert from 'node:assert/strict';
import test from 'node:test';
import { Emulator } from './emulator.js';
import { errOf, ioasAlloc, mapFixed, rawTry, setup, S } from '../drivers/mock/test_helpers.js';
import { IO } from '../uapi/ioctls.js';
import type { ProfileName } from '../uapi/profiles.js';

const code = (r: { err: { code: string } | null }): string | 0 => r.err?.code ?? 0;
const getPa = S.iommu_ioas_noiommu_get_pa;

test('NOIOMMU_GET_PA: ENOTTY before 7.3, whatever the size', () => {
  for (const p of ['6.12', '6.15', '6.17'] as ProfileName[]) {
    const t = setup(p);
    assert.equal(code(rawTry(t, 'IOAS_NOIOMMU_GET_PA', getPa, { ioas_id: 1, length: 1n }, 40)), 'ENOTTY', p);
    assert.equal(code(rawTry(t, 'IOAS_NOIOMMU_GET_PA', getPa, {}, 8)), 'ENOTTY', p);
  }
});

test('NOIOMMU_GET_PA: a default 7.3 kernel answers EOPNOTSUPP after the size checks', () => {
  for (const p of ['7.3', 'mainline'] as ProfileName[]) {
    const t = setup(p);
    const ioas = ioasAlloc(t);
    mapFixed(t, ioas, 1n << 24n, 4096);
    // Shorter than out_phys's end: EINVAL; a non-zero tail beyond the struct: E2BIG.
    assert.equal(code(rawTry(t, 'IOAS_NOIOMMU_GET_PA', getPa, { ioas_id: ioas }, 39)), 'EINVAL', p);
    const big = t.mem.alloc(48);
    const bytes = new Uint8Array(48);
    new DataView(bytes.buffer).setUint32(0, 48, true);
    bytes[44] = 1;
    t.mem.write(big, bytes);
    assert.equal(errOf(() => t.ctx.ioctl(IO(0x95), big, t.caller)), 'E2BIG', p);
    // Every well-formed call, even one naming nothing, is refused by the stub.
    assert.equal(code(rawTry(t, 'IOAS_NOIOMMU_GET_PA', getPa, { ioas_id: 999, length: 0n })), 'EOPNOTSUPP', p);
    assert.equal(code(rawTry(t, 'IOAS_NOIOMMU_GET_PA', getPa, { ioas_id: ioas, iova: 1n << 24n, length: 4096n })),
      'EOPNOTSUPP', p);
  }
});

test('NOIOMMU_GET_PA with CONFIG_IOMMUFD_NOIOMMU: capability, reserved words, length, iova, IOAS, area', () => {
  const t = setup('7.3', {}, new Emulator({ profile: '7.3', noiommu: true }));
  const ioas = ioasAlloc(t);
  mapFixed(t, ioas, 1n << 24n, 4096);
  const call = (v: Partial<Record<keyof typeof getPa.fields, number | bigint>>): string | 0 =>
    code(rawTry(t, 'IOAS_NOIOMMU_GET_PA', getPa, { ioas_id: ioas, iova: 1n << 24n, length: 4096n, ...v } as never));
  assert.equal(call({ flags: 1 }), 'EOPNOTSUPP');
  assert.equal(call({ __reserved: 1 }), 'EOPNOTSUPP');
  assert.equal(call({ length: 0n }), 'EINVAL');
  assert.equal(call({ iova: (1n << 64n) - 1n }), 'EOVERFLOW');
  assert.equal(call({ ioas_id: 999 }), 'ENOENT');
  assert.equal(call({ iova: 1n << 30n }), 'ENOENT');
  // Mapped, but not through a no-IOMMU device's software table (the emulator models none).
  assert.equal(call({}), 'EOPNOTSUPP');
  const noRawio = setup('7.3', { capSysRawio: false }, new Emulator({ profile: '7.3', noiommu: true }));
  assert.equal(code(rawTry(noRawio, 'IOAS_NOIOMMU_GET_PA', getPa, { flags: 1, length: 0n })), 'EPERM');
});
