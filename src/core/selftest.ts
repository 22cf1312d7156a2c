// IOMMU_TEST_CMD: the selftest interface's dispatcher. The union member of each
// op is decoded with its own layout from the uAPI table; op handlers register
// themselves by op number (selftest_*.ts, drivers/mock).
import { fail } from '../uapi/errno.js';
import { accepted, ENUMS } from '../uapi/enums.js';
import { decode, encodeInto } from '../uapi/layout.js';
import { TEST_OP_VIEWS } from '../uapi/structs.js';
import type { Ucmd } from './context.js';

// The op -> union-member mapping is ABI data and lives in the uAPI table.
export { TEST_OP_VIEWS } from '../uapi/structs.js';

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

const opMembers = new Map(ENUMS.iommu_test_op!.members.map((m) => [m.value, m]));

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
  // Ops of the profile's ABI (the v1 series already had DEV_CHECK_CACHE).
  const member = opMembers.get(op);
  const h = TEST_OPS.get(op);
  if (!member || !accepted(member, ucmd.ctx.profile) || !h) fail('EOPNOTSUPP', 'TEST_CMD: op not in this kernel');
  return h(ucmd);
}
