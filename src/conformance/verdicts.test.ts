import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import test from 'node:test';
import { compareVerdicts, describe, formatVerdicts, parseExpected, parseKselftest } from './verdicts.js';

const LOG = [
  'TAP version 13',
  '1..4',
  '#  RUN           fx.a ...',
  '#            OK  fx.a',
  'ok 1 fx.a',
  '#  RUN           fx.v.b ...',
  '# prog.c:12:b:Expected 0 (0) == f() (-1)',
  '# prog.c:40:b:Expected 1 (1) == g() (0)',
  '# b: Test terminated by assertion',
  '#          FAIL  fx.v.b',
  'not ok 2 fx.v.b',
  '#  RUN           fx.c ...',
  '# c: Test terminated by timeout',
  'not ok 3 fx.c',
  'ok 4 fx.d # SKIP no hardware',
].join('\n');

test('a harness log gives one verdict per case, failures with their first failed check', () => {
  const v = parseKselftest(LOG);
  assert.deepEqual([...v], [
    ['fx.a', { verdict: 'pass' }],
    ['fx.v.b', { verdict: 'fail', where: 'prog.c:12' }],
    ['fx.c', { verdict: 'fail', where: 'terminated-by-timeout' }],
    ['fx.d', { verdict: 'skip' }],
  ]);
  assert.deepEqual(parseExpected(formatVerdicts('prog', v)).get('prog'), new Map([...v].map(([k, c]) => [k, { ...c, where: c.where }])));
});

test('comparison names every case whose verdict or failing check moved, and extra or missing cases', () => {
  const expected = parseExpected('# comment\nprog\tfx.a\tpass\nprog\tfx.v.b\tfail\tprog.c:12\nprog\tfx.e\tpass\n').get('prog')!;
  const actual = parseKselftest(LOG.replace('prog.c:12:b', 'prog.c:13:b'));
  const d = compareVerdicts(expected, actual);
  assert.deepEqual(d.map((x) => x.name), ['fx.v.b', 'fx.e', 'fx.c', 'fx.d']);
  assert.equal(describe(d[0]!), 'fx.v.b: the kernel says fail at prog.c:12, the emulator fail at prog.c:13');
  assert.equal(describe(d[1]!), 'fx.e: the kernel says pass, the emulator not run');
  assert.equal(compareVerdicts(expected, new Map([...expected])).length, 0);
});

test('the committed kernel recordings cover the 190 + 7 cases of each environment', () => {
  for (const env of ['6.12-root', '6.12-root-no-sys-resource']) {
    const e = parseExpected(readFileSync(new URL(`../../.ci/selftests-expected/${env}.tsv`, import.meta.url), 'utf8'));
    assert.equal(e.get('iommufd')?.size, 190, env);
    assert.equal(e.get('iommufd_fail_nth')?.size, 7, env);
    const fails = [...e.get('iommufd')!.values()].filter((c) => c.verdict === 'fail');
    assert.equal(fails.length, env === '6.12-root' ? 26 : 27, env);
    for (const f of fails) assert.match(f.where!, /^iommufd\.c:\d+$/);
  }
});
