// Struct-aware random ioctls, generated from the uAPI table: every request of a
// profile with its struct's fields filled with values a careless or hostile
// caller would pass (small IDs that may name live objects, sizes around the
// struct's, pointers to readable, unreadable and absent memory, random flag
// bits, fail-nth injection). Used by the bounded property test in `npm test`
// (random_ioctl.test.ts); the soak (soak.ts) does the same from C clients.
import * as fc from 'fast-check';
import { TEST_OP_VIEWS } from '../uapi/structs.js';
import { ioctlTable, IOMMUFD_TYPE, VFIO } from '../uapi/ioctls.js';
import type { FieldDef, StructDef } from '../uapi/layout.js';
import { PROFILES, type ProfileName } from '../uapi/profiles.js';

/** Addresses a struct pointer may hold: kinds the memory model resolves per run. */
export type PtrKind = 'null' | 'buffer' | 'readonly' | 'unmapped' | 'wild';

export interface RandomIoctl {
  request: number;
  /** Struct bytes (the size field included). */
  bytes: Uint8Array;
  /** Pointer fields to fill in once memory exists: offset -> kind. */
  ptrs: [number, PtrKind][];
  /** fail-nth for the call (0: off). */
  failnth: number;
}

const ptrKind = fc.constantFrom<PtrKind>('null', 'buffer', 'buffer', 'readonly', 'unmapped', 'wild');

function fieldArb(name: string, f: FieldDef): fc.Arbitrary<bigint> {
  const n = f.type === 'u8' ? 8 : f.type === 'u16' ? 16 : f.type === 'u64' ? 64 : 32;
  const max = (1n << BigInt(n)) - 1n;
  const id = fc.bigInt({ min: 0n, max: 8n });
  const any = fc.bigInt({ min: 0n, max });
  const small = fc.bigInt({ min: 0n, max: 64n });
  if (/(^|_)(id|ids)$|_id$/.test(name)) return fc.oneof({ weight: 4, arbitrary: id }, { weight: 1, arbitrary: any });
  if (/len|length|num|size|depth/.test(name)) {
    const page = fc.bigInt({ min: 0n, max: 16n }).map((x) => x * 4096n);
    return fc.oneof(small, page, any);
  }
  if (/iova|start|last|addr|va/.test(name) && n === 64) {
    return fc.oneof(fc.bigInt({ min: 0n, max: 1n << 32n }).map((x) => x & ~0xfffn), any);
  }
  if (/flags|type|op$|perm|code/.test(name)) return fc.oneof(fc.bigInt({ min: 0n, max: 7n }), fc.bigInt({ min: 0n, max: 0xffffn }), any);
  return fc.oneof(small, any);
}

function put(b: Uint8Array, off: number, bytes: number, v: bigint): void {
  for (let i = 0; i < bytes && off + i < b.length; i++) b[off + i] = Number((v >> BigInt(8 * i)) & 0xffn);
}

function structArb(s: StructDef, knownSize: number, request: number): fc.Arbitrary<RandomIoctl> {
  const fields = Object.entries(s.fields).filter(([, f]) => !f.alias);
  const sizeArb = fc.oneof({ weight: 6, arbitrary: fc.constant(knownSize) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: knownSize + 32 }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) });
  return fc.record({
    size: sizeArb,
    vals: fc.tuple(...fields.map(([n, f]) => fc.array(fieldArb(n, f), { minLength: f.count ?? 1, maxLength: f.count ?? 1 }))),
    ptrs: fc.array(ptrKind, { minLength: fields.length, maxLength: fields.length }),
    tail: fc.uint8Array({ minLength: 0, maxLength: 16 }),
    failnth: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 12 }) }),
  }).map(({ size, vals, ptrs, tail, failnth }) => {
    const bytes = new Uint8Array(Math.max(knownSize, 4) + tail.length);
    const out: [number, PtrKind][] = [];
    fields.forEach(([name, f], i) => {
      const w = f.type === 'u8' ? 1 : f.type === 'u16' ? 2 : f.type === 'u64' ? 8 : 4;
      vals[i]!.forEach((v, j) => put(bytes, f.offset + j * w, w, v));
      if ((f.ptr || /uptr|_ptr$/.test(name)) && f.type === 'u64') out.push([f.offset, ptrs[i]!]);
    });
    bytes.set(tail, knownSize);
    put(bytes, 0, 4, BigInt(size >>> 0));
    return { request, bytes, ptrs: out, failnth };
  });
}

/** Random ioctls of `profile` (selftest commands with their union views, the VFIO compat requests too). */
export function randomIoctl(profile: ProfileName): fc.Arbitrary<RandomIoctl> {
  const table = ioctlTable(PROFILES[profile], true);
  const arbs: fc.Arbitrary<RandomIoctl>[] = [];
  for (const op of table.values()) {
    if (op.name === 'TEST_CMD') {
      for (const [opNum, view] of Object.entries(TEST_OP_VIEWS)) {
        if (!view) continue;
        const merged: StructDef = { name: `test_cmd_${opNum}`, fields: { ...op.struct.fields, ...view.fields } };
        arbs.push(structArb(merged, op.knownSize, op.request).map((r) => {
          put(r.bytes, 4, 4, BigInt(opNum)); // the op itself stays a real one
          return r;
        }));
      }
    } else {
      arbs.push(structArb(op.struct, op.knownSize, op.request));
    }
  }
  // requests that are not in the table: ENOTTY paths, VFIO compat values
  const stray = fc.record({
    nr: fc.integer({ min: 0, max: 0xff }),
    body: fc.uint8Array({ minLength: 4, maxLength: 80 }),
  }).map(({ nr, body }): RandomIoctl => ({ request: (IOMMUFD_TYPE << 8) | nr, bytes: body, ptrs: [], failnth: 0 }));
  const vfio = fc.constantFrom(...Object.values(VFIO).filter((v) => v > 0xff)).map((request): RandomIoctl =>
    ({ request, bytes: new Uint8Array(32), ptrs: [], failnth: 0 }));
  return fc.oneof({ weight: 12, arbitrary: fc.oneof(...arbs) }, { weight: 1, arbitrary: stray }, { weight: 1, arbitrary: vfio });
}
