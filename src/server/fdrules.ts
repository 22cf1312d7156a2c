// Which requests hand out or look up fds, and what the shim forwards for each
// kind of emulated fd: data the server sends the shim (PROVE reply tables), so
// the shim knows nothing of the uAPI itself. Offsets and request numbers come
// from the uAPI table of the server's profile.
import type { Emulator } from '../core/emulator.js';
import { TEST_OP } from '../uapi/enums.js';
import * as S from '../uapi/structs.js';
import { VFIO_REQ } from '../uapi/vfio.js';
import { FDRULE, KIND, OPS, RECORD, type Values } from './wire.js';

export type KindRecord = Values<typeof RECORD.kind.spec>;
export type FdRuleRecord = Values<typeof RECORD.fdrule.spec>;

/** The fd kinds the server owns and what the shim forwards for each. */
export const KINDS: readonly KindRecord[] = [
  // /dev/iommu: ioctl and mmap; read/write have no file operation (EINVAL)
  { kind: KIND.IOMMUFD, ops: OPS.IOCTL | OPS.MMAP },
  // files ioctls hand out (fault queue, vEVENTQ, selftest access, dma-buf): read/write
  { kind: KIND.EVENT, ops: OPS.READ | OPS.WRITE },
  // VFIO files (device cdev, group, the device fd a group hands out): ioctl, pread/pwrite at
  // region offsets, mmap of BARs as trapped MMIO (/dev/vfio/vfio is an iommufd: KIND.IOMMUFD)
  { kind: KIND.VFIO, ops: OPS.IOCTL | OPS.READ | OPS.WRITE | OPS.PREAD | OPS.MMAP | OPS.MMIO },
];

interface Rule {
  /** An iommufd request by name (left out where the profile lacks it), or a VFIO request's number. */
  ioctl: string | number;
  action: number;
  kind?: number;
  /** Only when this u32 field equals value. */
  when?: { field: { offset: number }; value: number };
  /** The fd field (absent: the ioctl's return value). */
  field?: { offset: number };
}

const TC = S.iommu_test_cmd.fields;

const RULES: readonly Rule[] = [
  { ioctl: 'FAULT_QUEUE_ALLOC', action: FDRULE.RETURNS, kind: KIND.EVENT, field: S.iommu_fault_alloc.fields.out_fault_fd },
  { ioctl: 'VEVENTQ_ALLOC', action: FDRULE.RETURNS, kind: KIND.EVENT, field: S.iommu_veventq_alloc.fields.out_veventq_fd },
  // the selftest's in-kernel access is an fd; the access ops name it in `id`
  { ioctl: 'TEST_CMD', action: FDRULE.RETURNS, kind: KIND.EVENT, when: { field: TC.op, value: TEST_OP.CREATE_ACCESS }, field: TC.id },
  { ioctl: 'TEST_CMD', action: FDRULE.NAMES, field: TC.id },
  // the selftest's dma-buf exporter: a new fd (7.3.4 returns 0, the fd is installed all the same)...
  { ioctl: 'TEST_CMD', action: FDRULE.RETURNS, kind: KIND.EVENT, when: { field: TC.op, value: TEST_OP.DMABUF_GET } },
  // ...named by REVOKE (a later rule of a request wins) and by MAP_FILE
  { ioctl: 'TEST_CMD', action: FDRULE.NAMES, when: { field: TC.op, value: TEST_OP.DMABUF_REVOKE },
    field: S.test_dmabuf_revoke.fields.dmabuf_fd },
  { ioctl: 'IOAS_MAP_FILE', action: FDRULE.NAMES, field: S.iommu_ioas_map_file.fields.fd },
  // a group hands out device fds (the return value); the fds VFIO structs carry (BIND_IOMMUFD's
  // iommufd, SET_CONTAINER's, SET_IRQS' eventfds) the server finds through /proc/<pid>/fd
  { ioctl: VFIO_REQ.GROUP_GET_DEVICE_FD, action: FDRULE.RETURNS, kind: KIND.VFIO },
];

/** The fd rules of `emu`'s profile (requests it does not have are left out). */
export function fdRules(emu: Emulator): FdRuleRecord[] {
  const out: FdRuleRecord[] = [];
  for (const r of RULES) {
    const request = typeof r.ioctl === 'number' ? r.ioctl : emu.byName.get(r.ioctl)?.request;
    if (request === undefined) continue;
    out.push({
      request: request >>> 0, action: r.action, kind: r.kind ?? KIND.NONE,
      when_off: r.when ? r.when.field.offset : -1, when_value: r.when?.value ?? 0,
      field_off: r.field ? r.field.offset : -1,
    });
  }
  return out;
}
