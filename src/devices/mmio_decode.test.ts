// The x86-64 MOV decoder the shim uses for trapped BAR accesses
// (native/mmio_decode.{c,h}): its C test program, built and run here. The
// program checks the decoder against assembler-produced encodings of every
// form spec 06 §8 lists (and more), and load semantics against the CPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { buildProgram, findCompiler, PACKAGE_ROOT } from '../server/native.js';

const NATIVE = path.join(PACKAGE_ROOT, 'native');
const skip = process.arch !== 'x64' ? 'the decoder test executes x86-64 instructions'
  : !findCompiler() ? 'no C compiler (cc)' : false;

for (const opt of ['-O0', '-O2']) {
  test(`mmio_decode: assembler encodings, operands and CPU load semantics agree (${opt})`, { skip }, () => {
    const exe = buildProgram([path.join(NATIVE, 'mmio_decode.c'), path.join(NATIVE, 'mmio_decode_test.c')], {
      includeDirs: [NATIVE], cflags: [opt, '-Wextra', '-Werror'], name: `mmio-decode-test${opt}`,
    });
    const r = spawnSync(exe, [], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^ok \d+\n$/);
  });
}
