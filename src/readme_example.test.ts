// The README's TypeScript example, kept compiling and running.
import assert from 'node:assert/strict';
import test from 'node:test';
import { enums, openIommufd } from './index.js';

test('the README example allocates an IOAS, a mock device, a nest parent and a vIOMMU', () => {
  const fd = openIommufd({ profile: 'mainline' });
  const ioas = fd.ioasAlloc();
  const va = fd.mem.mmap(1 << 20);
  fd.ioasMap({ ioasId: ioas, userVa: va, length: 1n << 20n, iova: 1n << 24n });
  const { idevId } = fd.mockDomain(ioas);
  const parent = fd.hwptAlloc({ devId: idevId, ptId: ioas, flags: enums.HWPT_ALLOC.NEST_PARENT });
  const { viommuId } = fd.viommuAlloc({ devId: idevId, hwptId: parent, type: enums.MOCK.VIOMMU_TYPE_SELFTEST });
  assert.deepEqual([ioas, idevId, parent, viommuId], [1, 3, 5, 6]);
  fd.close();
  assert.equal(fd.ctx.objects.size, 0);
});
