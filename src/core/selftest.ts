// IOMMU_TEST_CMD: the selftest interface's dispatcher. The union member of each
// op is decoded with its own layout from the uAPI table; op handlers register
// themselves by op number (selftest_*.ts, drivers/mock).
import { fail } from '../uapi/errno.js';
import { ENUMS } from '../uapi/enums.js';
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
  // The original vIOMMU series (profile viommu-v1) added DEV_CHECK_CACHE before its 6.13 release.
  const since = ucmd.ctx.profile.viommuV1 && op === 16 /* DEV_CHECK_CACHE */ ? 0 : opSince.get(op);
  const h = TEST_OPS.get(op);
  if (since === undefined || since > ucmd.ctx.profile.version || !h) fail('EOPNOTSUPP');
  return h(ucmd);
}
