// IOMMU_TEST_CMD: the selftest interface's dispatcher. The union member of each
// op is decoded with its own layout from the uAPI table; op handlers register
// themselves by op number (selftest_*.ts, drivers/mock).
import { fail } from '../uapi/errno.js';
import { ENUMS, TEST_OP } from '../uapi/enums.js';
import { decode, encodeInto, type StructDef } from '../uapi/layout.js';
import * as S from '../uapi/structs.js';
import type { Ucmd } from './context.js';

/** The union view each op reads and writes (spec 03 §2). */
export const TEST_OP_VIEWS: Record<number, StructDef | undefined> = {
  [TEST_OP.ADD_RESERVED]: S.test_add_reserved,
  [TEST_OP.MOCK_DOMAIN]: S.test_mock_domain,
  [TEST_OP.MD_CHECK_MAP]: S.test_check_map,
  [TEST_OP.MD_CHECK_REFS]: S.test_check_refs,
  [TEST_OP.CREATE_ACCESS]: S.test_create_access,
  [TEST_OP.DESTROY_ACCESS_PAGES]: S.test_destroy_access_pages,
  [TEST_OP.ACCESS_PAGES]: S.test_access_pages,
  [TEST_OP.ACCESS_RW]: S.test_access_rw,
  [TEST_OP.SET_TEMP_MEMORY_LIMIT]: S.test_memory_limit,
  [TEST_OP.MOCK_DOMAIN_REPLACE]: S.test_mock_domain_replace,
  [TEST_OP.ACCESS_REPLACE_IOAS]: S.test_access_replace_ioas,
  [TEST_OP.MOCK_DOMAIN_FLAGS]: S.test_mock_domain_flags,
  [TEST_OP.DIRTY]: S.test_dirty,
  [TEST_OP.MD_CHECK_IOTLB]: S.test_check_iotlb,
  [TEST_OP.TRIGGER_IOPF]: S.test_trigger_iopf,
  [TEST_OP.DEV_CHECK_CACHE]: S.test_check_dev_cache,
  [TEST_OP.TRIGGER_VEVENT]: S.test_trigger_vevent,
  [TEST_OP.PASID_ATTACH]: S.test_pasid_attach,
  [TEST_OP.PASID_REPLACE]: S.test_pasid_attach,
  [TEST_OP.PASID_DETACH]: S.test_pasid_detach,
  [TEST_OP.PASID_CHECK_HWPT]: S.test_pasid_check,
};

/** What a test op handler sees: the header (`id`) and its union member (`u`). */
export interface TestCmd<U = any> {
  size: number;
  op: number;
  id: number;
  __reserved: number;
  last: number;
  u: U;
}

export type TestOpHandler = (ucmd: Ucmd<TestCmd>) => number | void;

export const TEST_OPS = new Map<number, TestOpHandler>();

export function registerTestOp(op: number, h: TestOpHandler): void {
  TEST_OPS.set(op, h);
}

const opSince = new Map(ENUMS.iommu_test_op!.members.map((m) => [m.value, m.since ?? 0]));

/** Decode the union member for `op` from the raw struct bytes (raw entry) into `cmd.u`. */
export function decodeTestUnion(cmd: Record<string, unknown>, kbuf: Uint8Array): void {
  const view = TEST_OP_VIEWS[cmd.op as number];
  cmd.u = view ? decode(view, kbuf) : {};
}

export function encodeTestUnion(cmd: Record<string, unknown>, kbuf: Uint8Array): void {
  const view = TEST_OP_VIEWS[cmd.op as number];
  if (view) encodeInto(view, cmd.u as Record<string, unknown>, kbuf);
}

export function iommufdTestCmd(ucmd: Ucmd<TestCmd>): number | void {
  const { op } = ucmd.cmd;
  const since = opSince.get(op);
  const h = TEST_OPS.get(op);
  if (since === undefined || since > ucmd.ctx.profile.version || !h) fail('EOPNOTSUPP');
  return h(ucmd);
}
