// Per-case verdicts of a kselftest harness run, and their comparison with the
// verdicts a real kernel gave (recorded with ../shared/oracle-vm and committed
// as data under .ci/selftests-expected/). Only facts are kept: case names,
// pass/fail/skip and, for a failure, the file:line of the first failed check.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export type Verdict = 'pass' | 'fail' | 'skip';

export interface CaseVerdict {
  readonly verdict: Verdict;
  /** For a failure: the file:line of the first check that failed ("iommufd.c:229"), or a harness reason. */
  readonly where?: string;
}

const RUN = /^#\s+RUN\s+(\S+)\s/;
const RESULT = /^(not ok|ok) \d+ (\S+)(.*)$/;
const CHECK = /^# ([A-Za-z0-9_.-]+\.[ch]):(\d+):/;
// The VFIO selftests' library asserts print the source path (as compiled) and line.
const LIB_ASSERT = /^(?:\S*\/)?([A-Za-z0-9_.-]+\.[ch]):(\d+): Assertion Failure/;
const HARNESS = /^#\s+(\S+): Test (terminated by timeout|terminated unexpectedly|exited with error code)/;

/** Parse the (stdout and stderr, interleaved) output of one harness binary. */
export function parseKselftest(log: string): Map<string, CaseVerdict> {
  const out = new Map<string, CaseVerdict>();
  let where: string | undefined;
  let reason: string | undefined;
  for (const line of log.split('\n')) {
    if (RUN.test(line)) {
      where = undefined;
      reason = undefined;
      continue;
    }
    const c = CHECK.exec(line) ?? LIB_ASSERT.exec(line);
    if (c) {
      where ??= `${c[1]}:${c[2]}`;
      continue;
    }
    const h = HARNESS.exec(line);
    if (h) {
      reason ??= h[2]!.replace(/ /g, '-');
      continue;
    }
    const r = RESULT.exec(line);
    if (!r) continue;
    const name = r[2]!;
    if (r[1] === 'ok') out.set(name, { verdict: /#\s*SKIP/.test(r[3]!) ? 'skip' : 'pass' });
    else out.set(name, { verdict: 'fail', where: where ?? reason ?? 'unknown' });
    where = undefined;
    reason = undefined;
  }
  return out;
}

/** One line per case: "<binary>\t<case>\t<verdict>[\t<where>]". */
export function formatVerdicts(binary: string, v: Map<string, CaseVerdict>): string {
  return [...v].map(([name, c]) => [binary, name, c.verdict, ...(c.where ? [c.where] : [])].join('\t')).join('\n') + '\n';
}

/** Read an expectation file: comment lines (#) and blank lines are ignored. */
export function parseExpected(text: string): Map<string, Map<string, CaseVerdict>> {
  const out = new Map<string, Map<string, CaseVerdict>>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [binary, name, verdict, where] = line.split('\t');
    if (!binary || !name || (verdict !== 'pass' && verdict !== 'fail' && verdict !== 'skip')) {
      throw new Error(`bad expectation line: ${JSON.stringify(raw)}`);
    }
    let m = out.get(binary);
    if (!m) out.set(binary, (m = new Map()));
    m.set(name, { verdict, where });
  }
  return out;
}

export interface Disagreement {
  readonly name: string;
  readonly expected: CaseVerdict | undefined;
  readonly actual: CaseVerdict | undefined;
}

/** Case-by-case comparison: verdicts, and for failures the failing check. */
export function compareVerdicts(expected: Map<string, CaseVerdict>, actual: Map<string, CaseVerdict>): Disagreement[] {
  const out: Disagreement[] = [];
  for (const [name, e] of expected) {
    const a = actual.get(name);
    if (!a || a.verdict !== e.verdict || (e.verdict === 'fail' && a.where !== e.where)) out.push({ name, expected: e, actual: a });
  }
  for (const [name, a] of actual) if (!expected.has(name)) out.push({ name, expected: undefined, actual: a });
  return out;
}

const show = (c: CaseVerdict | undefined): string => (c ? c.verdict + (c.where ? ` at ${c.where}` : '') : 'not run');

export function describe(d: Disagreement): string {
  return `${d.name}: the kernel says ${show(d.expected)}, the emulator ${show(d.actual)}`;
}

// ---- CLI: record (log -> lines) and compare (expectation file + binary + log) ---------------

function main(argv: string[]): number {
  const [cmd, ...rest] = argv;
  if (cmd === 'record' && rest.length === 2) {
    process.stdout.write(formatVerdicts(rest[0]!, parseKselftest(readFileSync(rest[1]!, 'utf8'))));
    return 0;
  }
  if (cmd === 'compare' && rest.length === 3) {
    const [file, binary, log] = rest as [string, string, string];
    const expected = parseExpected(readFileSync(file, 'utf8')).get(binary);
    if (!expected) {
      process.stderr.write(`${file}: no expectation for ${binary}\n`);
      return 2;
    }
    const actual = parseKselftest(readFileSync(log, 'utf8'));
    const diff = compareVerdicts(expected, actual);
    const agree = expected.size - diff.filter((d) => d.expected).length;
    process.stdout.write(`${binary}: ${agree} of ${expected.size} cases agree with the kernel\n`);
    for (const d of diff) process.stdout.write(`  DISAGREE ${describe(d)}\n`);
    return diff.length ? 1 : 0;
  }
  process.stderr.write('usage: verdicts record BINARY LOG | verdicts compare EXPECTED BINARY LOG\n');
  return 2;
}

// (the file-name check: bundled into the CLI, import.meta.url is the bundle's, which argv[1] also names)
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url) && import.meta.url.endsWith('/verdicts.js')) {
  process.exit(main(process.argv.slice(2)));
}
