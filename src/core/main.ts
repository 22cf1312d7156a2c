// The dispatch table: every ioctl of the uAPI table paired with its handler
// (min sizes and struct layouts come from src/uapi/ioctls.ts), and DESTROY.
import type { IoctlName } from '../uapi/ioctls.js';
import type { Handler, Ucmd } from './context.js';
import { REGISTRY } from './emulator.js';
import { ObjType } from './object.js';
import * as ioas from './ioas.js';
import * as hwpt from './hwpt.js';
import * as device from './device.js';
import * as fault from './fault.js';
import * as viommu from './viommu.js';
import { iommufdVeventqAlloc } from './eventq.js';
import { iommufdHwQueueAlloc } from './hw_queue.js';
import { vfioCompatIoctl } from './vfio_compat.js';
import { iommufdTestCmd } from './selftest.js';
import './selftest_access.js';
import '../drivers/mock/selftest_mock.js';
import '../drivers/mock/viommu.js';

/** IOMMU_DESTROY (01 §4.1). */
export function iommufdDestroy(ucmd: Ucmd<{ id: number }>): void {
  const ctx = ucmd.ctx;
  const obj = ctx.objects.get(ucmd.cmd.id, ObjType.ANY);
  ctx.objects.destroyUser(ucmd.cmd.id);
  if (obj === ctx.vfioIoas) ctx.vfioIoas = null;
}

export const IOCTL_HANDLERS: Partial<Record<IoctlName, Handler>> = {
  DESTROY: iommufdDestroy,
  IOAS_ALLOC: ioas.iommufdIoasAlloc,
  IOAS_ALLOW_IOVAS: ioas.iommufdIoasAllowIovas,
  IOAS_COPY: ioas.iommufdIoasCopy,
  IOAS_IOVA_RANGES: ioas.iommufdIoasIovaRanges,
  IOAS_MAP: ioas.iommufdIoasMap,
  IOAS_MAP_FILE: ioas.iommufdIoasMapFile,
  IOAS_UNMAP: ioas.iommufdIoasUnmap,
  IOAS_CHANGE_PROCESS: ioas.iommufdIoasChangeProcess,
  IOAS_NOIOMMU_GET_PA: ioas.iommufdIoasNoiommuGetPa,
  OPTION: ioas.iommufdOption,
  VFIO_IOAS: ioas.iommufdVfioIoas,
  HWPT_ALLOC: hwpt.iommufdHwptAlloc,
  GET_HW_INFO: device.iommufdGetHwInfo,
  HWPT_SET_DIRTY_TRACKING: hwpt.iommufdHwptSetDirtyTracking,
  HWPT_GET_DIRTY_BITMAP: hwpt.iommufdHwptGetDirtyBitmap,
  HWPT_INVALIDATE: hwpt.iommufdHwptInvalidate,
  FAULT_QUEUE_ALLOC: fault.iommufdFaultAlloc,
  VIOMMU_ALLOC: viommu.iommufdViommuAlloc,
  VDEVICE_ALLOC: viommu.iommufdVdeviceAlloc,
  VEVENTQ_ALLOC: iommufdVeventqAlloc,
  HW_QUEUE_ALLOC: iommufdHwQueueAlloc,
  VIOMMU_ALLOC_V1: viommu.iommufdViommuAllocV1,
  VIOMMU_SET_VDEV_ID: viommu.iommufdViommuSetVdevIdV1,
  VIOMMU_UNSET_VDEV_ID: viommu.iommufdViommuUnsetVdevIdV1,
  VIOMMU_INVALIDATE: viommu.iommufdViommuInvalidateV1,
  TEST_CMD: iommufdTestCmd,
};

for (const [name, h] of Object.entries(IOCTL_HANDLERS)) REGISTRY.handlers.set(name as IoctlName, h);
REGISTRY.compat = vfioCompatIoctl;
