// In-process SMMUv3 translation rates (issue 10): an IOTLB hit, and a full
// nested walk (4K granule: a 4-level stage 1 whose every table address goes
// through a 4-level stage 2, then stage 2 of the output), with the IOTLB
// switched off so every access walks. Both through the domain's translate().
import { openIommufd } from '../api.js';
import { deviceAttach, deviceBind } from '../core/device.js';
import { Emulator } from '../core/emulator.js';
import { HWPT_ALLOC } from '../uapi/enums.js';
import type { DmaRequest, IommuDomain } from '../drivers/driver.js';
import { onSmmuTrace, smmuDriverOf } from '../drivers/arm-smmuv3/index.js';
import { HWPT_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3 } from '../drivers/arm-smmuv3/profile.js';
import { PROT } from '../drivers/arm-smmuv3/pgtable.js';
import { GuestRam, guestCd, vste, vsteBytes } from '../drivers/arm-smmuv3/test_helpers.js';

export interface SmmuBench {
  hitPerSec: number;
  walkPerSec: number;
  /** Descriptor reads of one full walk, counted from the walk trace. */
  walkReads: number;
}

function nestedDomain(iotlbEntries: number): { emu: Emulator; domain: IommuDomain; req: DmaRequest } {
  const emu = new Emulator();
  const fd = openIommufd({ emu });
  const drv = smmuDriverOf(emu);
  const master = drv.addMaster(drv.addSmmu({ iotlbEntries }), { sids: [1] });
  const idev = deviceBind(fd.ctx, master);
  const ioas = fd.ioasAlloc();
  const parent = fd.hwptAlloc({ devId: idev.id, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
  const ram = new GuestRam(fd, ioas, 0x4000_0000, 2 << 20);
  const { viommuId } = fd.viommuAlloc({ devId: idev.id, hwptId: parent, type: VIOMMU_TYPE_ARM_SMMUV3 });
  fd.vdeviceAlloc(viommuId, idev.id, 1n);
  const t = ram.table(12, 48); // 4 levels
  t.map(0x7f00_1234_5000, ram.alloc(4096), 4096, PROT.READ | PROT.WRITE | PROT.CACHE);
  const cd = ram.alloc(64);
  ram.writeWords(cd, guestCd(t, 3));
  const hwpt = fd.hwptAlloc({ devId: idev.id, ptId: viommuId, dataType: HWPT_DATA_ARM_SMMUV3, data: vsteBytes(vste({ ctxPtr: cd })) });
  deviceAttach(idev, undefined, hwpt);
  const domain = idev.attachment(0)!.hwpt.domain;
  const req: DmaRequest = { dev: master, iova: 0x7f00_1234_5040n, length: 64, write: false };
  if ('fault' in domain.translate!(req)) throw new Error('bench translation faulted');
  return { emu, domain, req };
}

function rate(fn: () => void, n: number): number {
  for (let i = 0; i < Math.min(n, 100_000); i++) fn();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) fn();
  return (n / (performance.now() - t0)) * 1000;
}

export function smmuBench(): SmmuBench {
  const hit = nestedDomain(512);
  const hitPerSec = rate(() => hit.domain.translate!(hit.req), 5_000_000);
  const walk = nestedDomain(0);
  let walkReads = 0;
  const off = onSmmuTrace(walk.emu.bus, (r) => {
    if (r.point === 'walk') walkReads++;
  });
  walk.domain.translate!(walk.req);
  off();
  const walkPerSec = rate(() => walk.domain.translate!(walk.req), 1_000_000);
  return { hitPerSec, walkPerSec, walkReads };
}
