// `--trace[=SPEC]`: categories of driver events and an optional file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseTraceSpec, TracePrinter } from './trace.js';

test('--trace values: none, bare, categories, a file, both; a second file or an unknown category is an error', () => {
  assert.equal(parseTraceSpec(undefined), null);
  assert.equal(parseTraceSpec(false), null);
  assert.deepEqual(parseTraceSpec(true), { to: true, categories: [] });
  assert.deepEqual(parseTraceSpec('smmu'), { to: true, categories: ['smmu'] });
  assert.deepEqual(parseTraceSpec('out.txt'), { to: 'out.txt', categories: [] });
  assert.deepEqual(parseTraceSpec('smmu,devices,/tmp/t.txt,smmu'), { to: '/tmp/t.txt', categories: ['smmu', 'devices'] });
  assert.deepEqual(parseTraceSpec('./smmu'), { to: './smmu', categories: [] }, 'a file called smmu');
  assert.throws(() => parseTraceSpec('a.txt,b.txt'), /--trace: 'b\.txt' is neither a category \(smmu, devices\) nor the only file \(already 'a\.txt'\)/);
  assert.throws(() => new TracePrinter(() => {}, true, ['walks']), /unknown category 'walks'/);
});
