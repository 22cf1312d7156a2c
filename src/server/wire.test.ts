// The wire protocol is described once (wire.ts): the codec, the C header and
// the server's decoding all come from that description. These tests generate
// frames from it and check both sides read every field back where it was put.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fc from 'fast-check';
import { Emulator } from '../core/emulator.js';
import { fdRules } from './fdrules.js';
import { findCompiler, SHIM_SOURCE, wireHeaderDir } from './native.js';
import * as W from './wire.js';

type Vals = Record<string, number | bigint | Uint8Array>;

/** Random values for every field of `s` (len/type/tail fields included: the codec must carry them too). */
function arbValues(s: W.WireStruct): fc.Arbitrary<Vals> {
  const rec: Record<string, fc.Arbitrary<number | bigint | Uint8Array>> = {};
  for (const f of s.fields) {
    rec[f.name] = f.type === 'u32' ? fc.integer({ min: 0, max: 0xffffffff })
      : f.type === 's32' ? fc.integer({ min: -0x80000000, max: 0x7fffffff })
        : f.type === 'u64' ? fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })
          : f.type === 's64' ? fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n })
            : fc.uint8Array({ minLength: f.size, maxLength: f.size });
  }
  return fc.record(rec);
}

const STRUCTS = W.allStructs();

test('every wire struct is packed, naturally aligned and a multiple of 8 bytes; requests and replies start with len, type', () => {
  for (const s of STRUCTS) {
    let off = 0;
    for (const f of s.fields) {
      assert.equal(f.offset, off, `${s.cname}.${f.name}`);
      off += f.size;
    }
    assert.equal(s.size, off);
    assert.equal(s.size % 8, 0, s.cname);
  }
  for (const s of [...Object.values(W.REQ), ...Object.values(W.REP)] as W.WireStruct[]) {
    assert.deepEqual(s.fields.slice(0, 2).map((f) => [f.name, f.type, f.offset]), [['len', 'u32', 0], ['type', 'u32', 4]], s.cname);
  }
  const types = Object.values(W.REQ).map((r) => r.type);
  assert.equal(new Set(types).size, types.length, 'request type numbers are unique');
});

test('encode then decode gives back every field of every struct (random values)', () => {
  for (const s of STRUCTS) {
    fc.assert(fc.property(arbValues(s), (v) => {
      const buf = Buffer.alloc(s.size);
      W.encodeInto(s, v, buf);
      const back = W.decode(s, buf) as Vals;
      for (const f of s.fields) {
        const a = back[f.name]!;
        const b = v[f.name]!;
        if (b instanceof Uint8Array) assert.ok(Buffer.from(b).equals(a as Uint8Array), `${s.cname}.${f.name}`);
        else assert.equal(a, b, `${s.cname}.${f.name}`);
      }
    }), { numRuns: 50 });
  }
});

test('a frame with a tail: len and the tail field are filled in, and only whole frames pass the length check', () => {
  const tail = Buffer.from([1, 2, 3, 4, 5]);
  const f = W.encode(W.REQ.IOCTL, { token: 7n, request: 0x3b81 }, tail);
  const v = W.decode(W.REQ.IOCTL, f);
  assert.equal(v.len, W.REQ.IOCTL.size + 5);
  assert.equal(v.inl, 5);
  assert.equal(v.type, W.REQ.IOCTL.type);
  assert.deepEqual([...f.subarray(W.REQ.IOCTL.size)], [1, 2, 3, 4, 5]);
  assert.equal(W.badLength(W.REQ.IOCTL, f.length, W.tailLength(W.REQ.IOCTL, f)), null);
  assert.match(W.badLength(W.REQ.IOCTL, f.length, 4) ?? '', /announcing a 4-byte tail/);
  assert.match(W.badLength(W.REQ.HELLO, W.REQ.HELLO.size + 8) ?? '', /expected 40/);
  assert.match(W.badLength(W.REQ.IOCTL, W.REQ.IOCTL.size + W.IOCTL_INLINE_MAX + 1) ?? '', /expected/);
  const r = W.encodeReply(W.REQ.IOCTL, W.REP.ioctl, { ret: -22n }, Buffer.alloc(3));
  const rv = W.decode(W.REP.ioctl, r);
  assert.equal(rv.type, W.REQ.IOCTL.type);
  assert.equal(rv.ret, -22n);
  assert.equal(rv.wlen, 3);
});

test('the fd rules the server sends name the uAPI\'s fd-returning requests of its profile', () => {
  const rules = fdRules(new Emulator({ profile: 'mainline' }));
  const emu = new Emulator({ profile: 'mainline' });
  const req = (n: string) => emu.byName.get(n)!.request >>> 0;
  const returns = rules.filter((r) => r.action === W.FDRULE.RETURNS).map((r) => r.request);
  assert.ok(returns.includes(req('FAULT_QUEUE_ALLOC')));
  assert.ok(returns.includes(req('VEVENTQ_ALLOC')));
  assert.ok(rules.some((r) => r.request === req('TEST_CMD') && r.action === W.FDRULE.NAMES && r.field_off === 8));
  // a profile without vEVENTQ sends no rule for it
  const old = fdRules(new Emulator({ profile: '6.12' }));
  assert.ok(!old.some((r) => r.request === req('VEVENTQ_ALLOC')));
});

/** A C program, generated from the description, that prints every field of the frames it reads. */
function cDumper(): string {
  const out = ['#include <stdio.h>', '#include <stdint.h>', '#include "iommufd_emu_wire.h"', 'int main(void) {',
    '\tuint32_t idx;', '\twhile (fread(&idx, 4, 1, stdin) == 1) {', '\t\tswitch (idx) {'];
  STRUCTS.forEach((s, i) => {
    out.push(`\t\tcase ${i}: { struct ${s.cname} v; if (fread(&v, sizeof(v), 1, stdin) != 1) return 1; printf("${s.cname}");`);
    for (const f of s.fields) {
      if (f.type === 'u32') out.push(`\t\t\tprintf(" ${f.name}=%u", (unsigned)v.${f.name});`);
      else if (f.type === 's32') out.push(`\t\t\tprintf(" ${f.name}=%d", (int)v.${f.name});`);
      else if (f.type === 'u64') out.push(`\t\t\tprintf(" ${f.name}=%llu", (unsigned long long)v.${f.name});`);
      else if (f.type === 's64') out.push(`\t\t\tprintf(" ${f.name}=%lld", (long long)v.${f.name});`);
      else out.push(`\t\t\tprintf(" ${f.name}="); for (unsigned k = 0; k < sizeof(v.${f.name}); k++) printf("%02x", v.${f.name}[k]);`);
    }
    out.push('\t\t\tprintf("\\n"); break; }');
  });
  out.push('\t\tdefault: return 2;', '\t\t}', '\t}', '\treturn 0;', '}');
  return out.join('\n');
}

function expectLine(s: W.WireStruct, v: Vals): string {
  const parts = s.fields.map((f) => {
    const x = v[f.name]!;
    return `${f.name}=${x instanceof Uint8Array ? Buffer.from(x).toString('hex') : x.toString()}`;
  });
  return [s.cname, ...parts].join(' ');
}

const cc = findCompiler();
test('the generated C header reads every field where the TypeScript codec wrote it', { skip: cc ? false : 'no C compiler' }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-wire-'));
  try {
    const src = path.join(dir, 'dump.c');
    fs.writeFileSync(src, cDumper());
    const exe = path.join(dir, 'dump');
    execFileSync(cc!, ['-O1', '-Wall', '-Werror', '-I', wireHeaderDir(), src, '-o', exe]);
    const samples = STRUCTS.map((s) => fc.sample(arbValues(s), { numRuns: 20, seed: 42 }));
    const chunks: Buffer[] = [];
    const expected: string[] = [];
    STRUCTS.forEach((s, i) => {
      for (const v of samples[i]!) {
        const idx = Buffer.alloc(4);
        idx.writeUInt32LE(i);
        const b = Buffer.alloc(s.size);
        W.encodeInto(s, v, b);
        chunks.push(idx, b);
        expected.push(expectLine(s, v));
      }
    });
    const out = execFileSync(exe, { input: Buffer.concat(chunks) }).toString().trim().split('\n');
    assert.deepEqual(out, expected);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the shim declares no frame layouts of its own: it includes the generated header', () => {
  const shim = fs.readFileSync(SHIM_SOURCE, 'utf8');
  assert.match(shim, /#include "iommufd_emu_wire\.h"/);
  assert.doesNotMatch(shim, /struct\s+__attribute__\(\(packed\)\)/);
  assert.doesNotMatch(shim, /\bT_(HELLO|OPEN|IOCTL|SYNC|REGION|UNMAP|EVPREP|FILEOP|LOOKUP|MMAP|MRELEASE|PROVE)\b/);
  // which requests hand out fds is the server's word (fd rules), not the shim's
  assert.doesNotMatch(shim, /FAULT_QUEUE_ALLOC|VEVENTQ_ALLOC|CREATE_ACCESS|0x3b8e|0x3b93|0x3ba0/);
});
