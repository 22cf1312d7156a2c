// The vIOMMU flow of examples/demo.c, in process through the typed API, for the
// trace bus, graph and inspector tests: stops at its fullest point (every
// object alive) unless asked to tear down.
import { openIommufd, type IommuFd } from '../api.js';
import type { SimMemory } from './simmem.js';
import { HWPT_ALLOC, MOCK, TEST_OP } from '../uapi/enums.js';
import { encode } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { TraceEvent } from './trace_bus.js';
import type { Emulator } from './emulator.js';

export interface DemoIds {
  ioas: number;
  stdev: number;
  idev: number;
  autoHwpt: number;
  parent: number;
  viommu: number;
  vdev: number;
  nested: number;
  veventq: number;
  veventqFd: number;
  iova: bigint;
}

export type Fd = IommuFd & { readonly mem: SimMemory };

/** Run the demo's steps up to the vEVENTQ and one reported event. */
export function viommuDemo(fd: Fd): DemoIds {
  const ioas = fd.ioasAlloc();
  const { stdevId: stdev, idevId: idev, hwptId: autoHwpt } = fd.mockDomain(ioas);
  const va = fd.mem.mmap(64 * 1024);
  const iova = fd.ioasMap({ ioasId: ioas, userVa: va, length: 64n * 1024n });
  const parent = fd.hwptAlloc({ devId: idev, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
  const { viommuId: viommu } = fd.viommuAlloc({ devId: idev, hwptId: parent, type: MOCK.VIOMMU_TYPE_SELFTEST });
  const vdev = fd.vdeviceAlloc(viommu, idev, 0x42n);
  const data = encode(S.iommu_hwpt_selftest, { iotlb: MOCK.IOTLB_DEFAULT, pagetable_type: 0 });
  const nested = fd.hwptAlloc({
    devId: idev, ptId: viommu, dataType: MOCK.HWPT_DATA_SELFTEST,
    data: fd.ctx.profile.mockGen === 'A' ? data.subarray(0, 4) : data, // the older mock's payload is {iotlb}
  });
  fd.testCmd(TEST_OP.MOCK_DOMAIN_REPLACE, stdev, { pt_id: nested });
  const { veventqId: veventq, veventqFd } = fd.veventqAlloc(viommu, MOCK.VEVENTQ_TYPE_SELFTEST, 8);
  fd.testCmd(TEST_OP.TRIGGER_VEVENT, 0, { dev_id: idev });
  return { ioas, stdev, idev, autoHwpt, parent, viommu, vdev, nested, veventq, veventqFd, iova };
}

/** A fresh context with every event of its emulator collected. */
export function recorded(): { fd: Fd; emu: Emulator; events: TraceEvent[]; stop: () => void } {
  const fd = openIommufd();
  const events: TraceEvent[] = [];
  const stop = fd.ctx.emu.bus.subscribe((e) => events.push(e));
  return { fd, emu: fd.ctx.emu, events, stop };
}
