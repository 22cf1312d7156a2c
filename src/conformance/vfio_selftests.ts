// The kernel's VFIO selftests (tools/testing/selftests/vfio of 7.3.4, spec 06 §10) run
// through the shim: which iommu mode each case ran in, why a case did not pass (from
// the program's own output, printed for the run's report, never committed), and the
// comparison with the recorded verdicts in .ci/vfio-selftests-expected.tsv.
//
// Expectation lines (tab-separated, facts only): program, case, verdict, for a failure
// the file:line of the first failed check, and optionally what the verdict needs from the
// host ("hugetlb-2mb", "hugetlb-1gb": without a free huge page of that size the program
// skips the case, as it does on a real kernel). A program that runs no case at all (its
// main() skips) is recorded with the case name "-".
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compareVerdicts, describe, parseKselftest, type CaseVerdict, type Verdict } from './verdicts.js';

/** The five iommu modes of sel/lib/iommu.c, in the order the variants are declared. */
export const VFIO_MODES = ['vfio_type1_iommu', 'vfio_type1v2_iommu', 'iommufd_compat_type1', 'iommufd_compat_type1v2', 'iommufd'] as const;
export type VfioMode = (typeof VFIO_MODES)[number];
/** Fixtures without mode variants use the library's default mode. */
const DEFAULT_MODE: VfioMode = 'iommufd';
/** What a case may need from the host. */
export const HOST_NEEDS = ['hugetlb-2mb', 'hugetlb-1gb'] as const;
export type HostNeed = (typeof HOST_NEEDS)[number];
/** The case name of a program-level verdict (main() exits before the harness runs a case). */
export const PROGRAM_CASE = '-';

/** The mode a case ran in: the longest mode name its variant starts with (else the default). */
export function modeOf(caseName: string): VfioMode {
  const parts = caseName.split('.');
  const variant = parts.length >= 3 ? parts[1]! : '';
  let best: VfioMode | undefined;
  for (const m of VFIO_MODES) {
    if ((variant === m || variant.startsWith(`${m}_`)) && (!best || m.length > best.length)) best = m;
  }
  return best ?? DEFAULT_MODE;
}

export interface ProgramRun {
  readonly cases: Map<string, CaseVerdict>;
  /** Why each non-passing case (or the program) did not pass, in the program's words. */
  readonly reasons: Map<string, string>;
}

const RUN = /^#\s+RUN\s+(\S+)\s/;
const RESULT = /^(?:not ok|ok) \d+ (\S+)(?:.*#\s*SKIP\s*(.*))?$/;
const PLAN_SKIP = /^1\.\.0 # SKIP\s*(.*)$/;
const ASSERT = /^(?:\S*\/)?([A-Za-z0-9_.-]+\.[ch]:\d+): Assertion Failure/;
const HARNESS_CHECK = /^# ([A-Za-z0-9_.-]+\.[ch]:\d+):\S*:(.*)$/;

/** Per-case verdicts of one program's log, with a one-line reason for each non-pass. */
export function parseProgramRun(log: string, exitStatus?: number): ProgramRun {
  const cases = parseKselftest(log);
  const reasons = new Map<string, string>();
  let current: string | undefined;
  let why: string[] = [];
  let pendingAssert = false;
  for (const raw of log.split('\n')) {
    const line = raw.trimEnd();
    const run = RUN.exec(line);
    if (run) {
      current = run[1];
      why = [];
      pendingAssert = false;
      continue;
    }
    const r = RESULT.exec(line);
    if (r) {
      const name = r[1]!;
      const c = cases.get(name);
      if (c?.verdict === 'skip') reasons.set(name, r[2]?.trim() || 'skipped');
      else if (c?.verdict === 'fail') reasons.set(name, [c.where, ...why].filter(Boolean).join(': ') || 'failed');
      current = undefined;
      why = [];
      continue;
    }
    const p = PLAN_SKIP.exec(line);
    if (p && cases.size === 0) {
      reasons.set(PROGRAM_CASE, p[1]!.trim() || 'skipped');
      continue;
    }
    const a = ASSERT.exec(line);
    if (a) {
      pendingAssert = true;
      if (why.length < 3) why.push('assertion failed');
      continue;
    }
    // After a library assertion: its expression, observed values, errno and message lines.
    if (pendingAssert && line.trim() && why.length < 4) {
      why.push(line.trim());
      continue;
    }
    const h = HARNESS_CHECK.exec(line);
    if (h && current && why.length < 3) why.push(h[2]!.trim());
  }
  if (cases.size === 0) {
    const skipped = reasons.has(PROGRAM_CASE) || exitStatus === 4;
    cases.set(PROGRAM_CASE, skipped ? { verdict: 'skip' } : { verdict: 'fail', where: firstAssert(log) ?? `exit-${exitStatus ?? 'unknown'}` });
    if (!reasons.has(PROGRAM_CASE)) reasons.set(PROGRAM_CASE, lastLines(log));
  }
  return { cases, reasons };
}

function firstAssert(log: string): string | undefined {
  for (const line of log.split('\n')) {
    const a = ASSERT.exec(line);
    if (a) return a[1];
  }
  return undefined;
}

function lastLines(log: string): string {
  const lines = log.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines.slice(-4).join(' | ') || 'no output';
}

export interface Expectation extends CaseVerdict {
  readonly needs?: HostNeed;
}

/** Read .ci/vfio-selftests-expected.tsv: program -> case -> expectation. */
export function parseVfioExpected(text: string): Map<string, Map<string, Expectation>> {
  const out = new Map<string, Map<string, Expectation>>();
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (!line.trim() || line.startsWith('#')) continue;
    const [program, name, verdict, where, needs] = line.split('\t');
    if (!program || !name || (verdict !== 'pass' && verdict !== 'fail' && verdict !== 'skip')) {
      throw new Error(`bad expectation line: ${JSON.stringify(raw)}`);
    }
    if (verdict === 'fail' && !where) throw new Error(`a failure needs its failing check: ${JSON.stringify(raw)}`);
    if (needs && !(HOST_NEEDS as readonly string[]).includes(needs)) throw new Error(`unknown host need '${needs}': ${JSON.stringify(raw)}`);
    let m = out.get(program);
    if (!m) out.set(program, (m = new Map()));
    m.set(name, { verdict: verdict as Verdict, ...(where ? { where } : {}), ...(needs ? { needs: needs as HostNeed } : {}) });
  }
  return out;
}

/** The verdicts to expect on this host: a case whose need is not met is skipped by the program. */
export function expectedOnHost(e: Map<string, Expectation>, have: ReadonlySet<HostNeed>): Map<string, CaseVerdict> {
  const out = new Map<string, CaseVerdict>();
  for (const [name, x] of e) out.set(name, x.needs && !have.has(x.needs) ? { verdict: 'skip' } : { verdict: x.verdict, ...(x.where ? { where: x.where } : {}) });
  return out;
}

/** Expectation lines for a run (to record a new state). */
export function formatVfioVerdicts(program: string, run: ProgramRun, needsOf: (name: string) => HostNeed | undefined = hugetlbNeed): string {
  return [...run.cases].map(([name, c]) => {
    const needs = needsOf(name);
    return [program, name, c.verdict, c.where ?? '', ...(needs ? [needs] : [])].join('\t').replace(/\t+$/, '');
  }).join('\n') + '\n';
}

/** The hugetlb variants of vfio_dma_mapping_test name their page size. */
export function hugetlbNeed(name: string): HostNeed | undefined {
  if (/_hugetlb_2mb\./.test(name)) return 'hugetlb-2mb';
  if (/_hugetlb_1gb\./.test(name)) return 'hugetlb-1gb';
  return undefined;
}

/** Per-mode counts and the reason of every non-pass, for the run's report. */
export function summarize(program: string, run: ProgramRun): string[] {
  const lines: string[] = [];
  const modes = new Map<string, { pass: number; fail: number; skip: number; notes: string[] }>();
  for (const [name, c] of run.cases) {
    const mode = name === PROGRAM_CASE ? '(program)' : modeOf(name);
    let m = modes.get(mode);
    if (!m) modes.set(mode, (m = { pass: 0, fail: 0, skip: 0, notes: [] }));
    m[c.verdict]++;
    if (c.verdict !== 'pass') m.notes.push(`    ${c.verdict} ${name}: ${run.reasons.get(name) ?? ''}`);
  }
  for (const [mode, m] of modes) {
    lines.push(`  ${program} [${mode}]: pass ${m.pass}, fail ${m.fail}, skip ${m.skip}`);
    lines.push(...m.notes);
  }
  return lines;
}

// ---- CLI ---------------------------------------------------------------------------------------
//   record PROGRAM LOG [STATUS]                      expectation lines for a run
//   compare EXPECTED PROGRAM LOG STATUS [NEED...]    summary + comparison (exit 1 on any move)

function main(argv: string[]): number {
  const [cmd, ...rest] = argv;
  if (cmd === 'record' && rest.length >= 2) {
    const run = parseProgramRun(readFileSync(rest[1]!, 'utf8'), rest[2] === undefined ? undefined : Number(rest[2]));
    process.stdout.write(formatVfioVerdicts(rest[0]!, run));
    return 0;
  }
  if (cmd === 'compare' && rest.length >= 4) {
    const [file, program, log, status, ...needs] = rest as [string, string, string, string, ...string[]];
    const all = parseVfioExpected(readFileSync(file, 'utf8'));
    const e = all.get(program);
    if (!e) {
      process.stderr.write(`${file}: no expectation for ${program}\n`);
      return 2;
    }
    const have = new Set(needs.filter((n): n is HostNeed => (HOST_NEEDS as readonly string[]).includes(n)));
    const run = parseProgramRun(readFileSync(log, 'utf8'), Number(status));
    const expected = expectedOnHost(e, have);
    const diff = compareVerdicts(expected, run.cases);
    for (const l of summarize(program, run)) process.stdout.write(`${l}\n`);
    const agree = expected.size - diff.filter((d) => d.expected).length;
    process.stdout.write(`${program}: ${agree} of ${expected.size} cases as recorded\n`);
    for (const d of diff) {
      const up = d.actual?.verdict === 'pass' && d.expected?.verdict !== 'pass';
      process.stdout.write(`  ${up ? 'IMPROVED (record it)' : 'MOVED'} ${describe(d).replace('the kernel says', 'recorded')}\n`);
    }
    return diff.length ? 1 : 0;
  }
  process.stderr.write('usage: vfio_selftests record PROGRAM LOG [STATUS] | compare EXPECTED PROGRAM LOG STATUS [NEED...]\n');
  return 2;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exit(main(process.argv.slice(2)));
