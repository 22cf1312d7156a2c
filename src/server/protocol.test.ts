// The shim (C) and the server (TypeScript) must agree on every frame size.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { SHIM_SOURCE } from './native.js';
import * as P from './protocol.js';

const REQ_OF: Record<string, number> = {
  hello: P.T_HELLO, prove: P.T_PROVE, open: P.T_OPEN, ioctl: P.T_IOCTL, region: P.T_REGION, unmap: P.T_UNMAP,
  evprep: P.T_EVPREP, fileop: P.T_FILEOP, lookup: P.T_LOOKUP, mmap: P.T_MMAP, mrelease: P.T_MRELEASE,
};

test('every frame size asserted in native/shim.c matches src/server/protocol.ts', () => {
  const src = fs.readFileSync(SHIM_SOURCE, 'utf8');
  const checks = [...src.matchAll(/^SIZE_CHECK\((req|rep)_(\w+), (\d+)\);$/gm)];
  const reqs = new Set<number>();
  for (const [, dir, name, size] of checks) {
    if (dir === 'req') {
      const t = REQ_OF[name!];
      assert.ok(t !== undefined, `unknown request struct req_${name}`);
      assert.equal(P.REQ_SIZE[t], Number(size), `req_${name}`);
      reqs.add(t);
    } else {
      assert.equal((P.REP_SIZE as Record<string, number>)[name!], Number(size), `rep_${name}`);
    }
  }
  // every request type with a body has its C struct checked (SYNC is a bare header)
  for (const t of Object.keys(P.REQ_SIZE).map(Number)) {
    if (t !== P.T_SYNC) assert.ok(reqs.has(t), `no SIZE_CHECK for ${P.NAMES[t]}`);
  }
  for (const name of Object.keys(P.REP_SIZE)) {
    assert.ok(checks.some(([, d, n]) => d === 'rep' && n === name), `no SIZE_CHECK for rep_${name}`);
  }
});
