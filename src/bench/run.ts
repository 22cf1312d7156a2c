// `npm run bench`: in-process throughput and scaling of the typed API, printed
// as a table (record results in bench/RESULTS.md). Targets are reported, not asserted.
import { openIommufd, type IommuFd } from '../api.js';
import { SimMemory } from '../core/simmem.js';
import { MAP_FLAGS } from '../uapi/enums.js';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { mmioBench, shimBench } from './shim.js';
import { busBench } from './bus.js';
import { InspectSession } from '../inspect/session.js';
import { smmuBench, smmuDmaInProcess, smmuDmaThroughShim, vtdDmaThroughShim, type DmaRates } from './smmu.js';

const PAGE = 4096n;

function rate(ops: number, ms: number): string {
  return `${Math.round((ops / ms) * 1000).toLocaleString('en-US')}/s`;
}

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

interface Row { bench: string; result: string; target: string }
const rows: Row[] = [];

function allocDestroy(): void {
  const fd = openIommufd();
  const n = 300_000;
  for (let i = 0; i < 10_000; i++) fd.destroy(fd.ioasAlloc());
  const ms = time(() => { for (let i = 0; i < n; i++) fd.destroy(fd.ioasAlloc()); });
  rows.push({ bench: 'IOAS_ALLOC+DESTROY', result: rate(n, ms), target: '>= 300,000/s' });
  fd.close();
}

/** Map `count` 4 KiB areas at fixed IOVAs (a hole between each so none merge). */
function populate(fd: IommuFd, ioas: number, va: bigint, count: number): void {
  for (let i = 0; i < count; i++) {
    fd.ioasMap({ ioasId: ioas, userVa: va, length: PAGE, iova: BigInt(i) * 2n * PAGE + (1n << 32n), flags: MAP_FLAGS.READABLE });
  }
}

function mapUnmapAt(live: number): number {
  const mem = new SimMemory();
  const fd = openIommufd({ mem });
  const ioas = fd.ioasAlloc();
  const va = mem.mmap(4096);
  populate(fd, ioas, va, live);
  const n = 100_000;
  const base = (1n << 40n);
  const ms = time(() => {
    for (let i = 0; i < n; i++) {
      const iova = base + BigInt(i % 64) * PAGE;
      fd.ioasMap({ ioasId: ioas, userVa: va, length: PAGE, iova, flags: MAP_FLAGS.READABLE });
      fd.ioasUnmap(ioas, iova, PAGE);
    }
  });
  fd.close();
  return ms / n;
}

/** Live areas and RSS measured in a fresh child process, so earlier runs' garbage does not count. */
function memoryFor(count: number): void {
  const out = execFileSync(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--memory', String(count)], {
    encoding: 'utf8',
  });
  const { rss, heap } = JSON.parse(out) as { rss: number; heap: number };
  rows.push({
    bench: `memory, ${count.toLocaleString('en-US')} live 4 KiB areas`,
    result: `RSS ${(rss / 2 ** 20).toFixed(0)} MiB (heap ${(heap / 2 ** 20).toFixed(0)} MiB)`,
    target: '<= 300 MiB RSS',
  });
}

function memoryChild(count: number): void {
  const mem = new SimMemory();
  const fd = openIommufd({ mem });
  const ioas = fd.ioasAlloc();
  populate(fd, ioas, mem.mmap(4096), count);
  (globalThis as { gc?: () => void }).gc?.();
  const u = process.memoryUsage();
  process.stdout.write(JSON.stringify({ rss: u.rss, heap: u.heapUsed }));
}

/** One configuration of the selftest-run rows: a build of the CLI and its environment. */
interface SelftestConfig { name: string; cli: string; env: NodeJS.ProcessEnv; walls: number[]; verdicts: string }

/**
 * The Debian 6.12 `iommufd` selftest binary (spec 05; built from linux-source-6.12
 * against our 6.12 headers by scripts/build-selftests.sh) run whole through
 * `iommufd-emu run --abi 6.12`: wall time with the fast path (defaults), with it off
 * (IOMMUFD_EMU_FASTPATH=0), and the same two for the build IOMMUFD_BENCH_BASELINE
 * names (scripts/bench-baseline.sh REF), alternating, two rounds each (best kept).
 * Every run must give the same verdicts.
 */
function selftestRows(): void {
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const skip = (why: string): void => {
    rows.push({ bench: 'kernel 6.12 iommufd selftest through the shim (wall)', result: `skipped: ${why}`, target: '<= 0.4x today' });
  };
  const src = spawnSync('bash', [`${root}.ci/linux-source.sh`, '6.12'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const tarball = src.stdout?.trim().split('\n').pop();
  if (src.status !== 0 || !tarball) return skip(`linux-source-6.12 not available (.ci/linux-source.sh: ${src.stderr?.trim().split('\n').pop()})`);
  const out = mkdtempSync(path.join(os.tmpdir(), 'iommufd-bench-selftests-'));
  try {
    const b = spawnSync('bash', [`${root}scripts/build-selftests.sh`, out], { encoding: 'utf8', env: { ...process.env, LINUX_TARBALL: tarball } });
    if (b.status !== 0) return skip(`scripts/build-selftests.sh failed: ${b.stderr.trim().split('\n').pop()}`);
    const socket = { ...process.env, IOMMUFD_EMU_FASTPATH: '0' };
    const configs: SelftestConfig[] = [
      { name: 'this tree, fast path (defaults)', cli: `${root}dist/cli/main.js`, env: process.env, walls: [], verdicts: '' },
      { name: 'this tree, socket (IOMMUFD_EMU_FASTPATH=0)', cli: `${root}dist/cli/main.js`, env: socket, walls: [], verdicts: '' },
    ];
    const base = process.env.IOMMUFD_BENCH_BASELINE?.replace(/\/$/, '');
    if (base) {
      configs.push({ name: 'baseline build, defaults', cli: `${base}/dist/cli/main.js`, env: process.env, walls: [], verdicts: '' });
      configs.push({ name: 'baseline build, socket', cli: `${base}/dist/cli/main.js`, env: socket, walls: [], verdicts: '' });
    }
    for (let round = 0; round < 2; round++) {
      for (const c of configs) {
        const t0 = performance.now();
        const r = spawnSync(process.execPath, [c.cli, 'run', '--abi', '6.12', '--', `${out}/iommufd`],
          { encoding: 'utf8', env: c.env, cwd: out, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 28 });
        c.walls.push((performance.now() - t0) / 1000);
        const pass = (r.stdout.match(/^ok \d+ /gm) ?? []).length;
        const fail = (r.stdout.match(/^not ok \d+ /gm) ?? []).length;
        c.verdicts = `${pass} ok, ${fail} not ok`;
      }
    }
    const best = (c: SelftestConfig): number => Math.min(...c.walls);
    const today = configs.length > 2 ? configs[3]! : configs[1]!;
    const same = configs.every((c) => c.verdicts === configs[0]!.verdicts);
    for (const c of configs) {
      rows.push({
        bench: `kernel 6.12 iommufd selftest through the shim (wall), ${c.name}`,
        result: `${best(c).toFixed(1)} s (${c.walls.map((w) => w.toFixed(1)).join(', ')}; ${c.verdicts}${same ? '' : ': VERDICTS DIFFER'}); ${x2(best(c), best(today))} of ${today.name}`,
        target: c === configs[0] ? '<= 0.4x today (baseline socket)' : 'report',
      });
    }
    if (!base) rows.push({ bench: 'kernel 6.12 iommufd selftest, baseline build', result: 'skipped: IOMMUFD_BENCH_BASELINE not set (scripts/bench-baseline.sh REF sets it)', target: 'report' });
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

const x2 = (a: number, b: number): string => `${(a / b).toFixed(2)}x`;

async function busRows(): Promise<void> {
  // The recorder: the inspector's session, steps and graph snapshots kept in memory (no page attached).
  const b = await busBench((emu) => {
    const s = new InspectSession(emu);
    return () => s.close();
  });
  const rel = (x: number): string => `${(x / b.off).toFixed(2)}x of unsubscribed`;
  rows.push({ bench: 'IOAS_ALLOC+DESTROY, trace bus: nobody subscribed', result: rate(b.off, 1000), target: 'report' });
  rows.push({ bench: 'IOAS_ALLOC+DESTROY, trace bus: one counting subscriber', result: `${rate(b.counting, 1000)} (${rel(b.counting)})`, target: 'report' });
  if (b.recording !== null) {
    rows.push({ bench: 'IOAS_ALLOC+DESTROY, inspector recording', result: `${rate(b.recording, 1000)} (${rel(b.recording)})`, target: 'report' });
  }
  const cost = b.baseline !== null
    ? `${((b.baseline / b.off - 1) * 100).toFixed(1)}% (${rate(b.off, 1000)} vs ${rate(b.baseline, 1000)} without the bus)`
    : `skipped: ${b.baselineError ?? 'IOMMUFD_BENCH_BASELINE not set (scripts/bench-baseline.sh REF sets it)'}`;
  rows.push({ bench: 'trace bus cost, nobody subscribed', result: cost, target: '<= 5%' });
}

async function main(): Promise<void> {
  allocDestroy();
  await busRows();
  const mem = new SimMemory();
  const fd = openIommufd({ mem });
  const ioas = fd.ioasAlloc();
  const va = mem.mmap(4096);
  const n = 200_000;
  for (let i = 0; i < 10_000; i++) { fd.ioasMap({ ioasId: ioas, userVa: va, length: PAGE, iova: 1n << 30n }); fd.ioasUnmap(ioas, 1n << 30n, PAGE); }
  const ms = time(() => {
    for (let i = 0; i < n; i++) {
      const iova = fd.ioasMap({ ioasId: ioas, userVa: va, length: PAGE });
      fd.ioasUnmap(ioas, iova, PAGE);
    }
  });
  rows.push({ bench: 'IOAS_MAP+UNMAP 4 KiB (auto IOVA)', result: rate(n, ms), target: '>= 200,000/s' });
  fd.close();

  const costs: number[] = [];
  for (const live of [1e3, 1e4, 1e5, 1e6]) {
    const us = mapUnmapAt(live) * 1000;
    costs.push(us);
    rows.push({ bench: `MAP+UNMAP pair with ${live.toLocaleString('en-US')} live areas`, result: `${us.toFixed(2)} us/pair`, target: 'flat (O(log n))' });
  }
  rows.push({ bench: 'cost ratio 10^6 / 10^3 live areas', result: `${(costs[3]! / costs[0]!).toFixed(2)}x`, target: 'small (log growth)' });
  memoryFor(1e6);

  const sb = smmuBench();
  rows.push({ bench: 'SMMUv3 translate, IOTLB hit (nested)', result: rate(sb.hitPerSec, 1000), target: '>= 5,000,000/s' });
  rows.push({
    bench: `SMMUv3 translate, full nested walk 4K 4+4 levels (${sb.walkReads} descriptor reads)`,
    result: rate(sb.walkPerSec, 1000), target: '>= 500,000/s',
  });
  const mb = (d: DmaRates, k: '4k' | '1m'): string =>
    `${rate(k === '4k' ? d.copies4k : d.copies1m, 1000)} copies (${(k === '4k' ? d.mbps4k : d.mbps1m).toFixed(1)} MB/s)`;
  const dIn = smmuDmaInProcess();
  rows.push({ bench: 'IOAT copy 4 KiB via nested SMMUv3, in process', result: mb(dIn, '4k'), target: 'report' });
  rows.push({ bench: 'IOAT copy 1 MiB via nested SMMUv3, in process', result: mb(dIn, '1m'), target: 'report' });
  for (const [via, run] of [['nested SMMUv3', smmuDmaThroughShim], ['VT-d (IOAS)', vtdDmaThroughShim]] as const) {
    try {
      const d = run();
      rows.push({ bench: `IOAT copy 4 KiB via ${via}, through the shim`, result: mb(d, '4k'), target: 'report' });
      rows.push({ bench: `IOAT copy 1 MiB via ${via}, through the shim`, result: mb(d, '1m'), target: 'report' });
    } catch (e) {
      rows.push({ bench: `IOAT copies via ${via}, through the shim`, result: `skipped: ${(e as Error).message.split('\n')[0]}`, target: 'report' });
    }
  }

  try {
    const m = await mmioBench();
    rows.push({ bench: 'trapped BAR load (SIGSEGV + MMIO frame), through the shim', result: `mean ${(m.mmio_load_ns / 1000).toFixed(1)} us`, target: 'report' });
    rows.push({ bench: 'config-space pread of the same device, through the shim', result: `mean ${(m.config_pread_ns / 1000).toFixed(1)} us`, target: 'report' });
  } catch (e) {
    rows.push({ bench: 'trapped BAR load, through the shim', result: `skipped: ${(e as Error).message.split('\n')[0]}`, target: 'report' });
  }
  try {
    const { echo, ioas, rw, ioasSocket, rwSocket, idle, idleNoReducer, startup } = await shimBench();
    const us = (ns: number): string => `${(ns / 1000).toFixed(1)} us`;
    const x = (a: number, b: number): string => `${(a / b).toFixed(2)}x`;
    const lat = (l: { median_ns: number; p99_ns: number }): string =>
      `median ${us(l.median_ns)} (${x(l.median_ns, echo.median_ns)} floor), p99 ${us(l.p99_ns)} (${x(l.p99_ns, echo.p99_ns)})`;
    rows.push({ bench: 'C<->Node Unix-socket echo (blocking floor)', result: `median ${us(echo.median_ns)}, p99 ${us(echo.p99_ns)}`, target: 'floor' });
    rows.push({ bench: 'shimmed IOAS_ALLOC / DESTROY, per ioctl (fast path)', result: lat(ioas), target: 'median <= 0.2x, p99 <= 1x floor' });
    rows.push({ bench: 'shimmed IOAS_ALLOC / DESTROY, per ioctl (socket: fast path off)', result: lat(ioasSocket), target: 'report' });
    rows.push({ bench: 'shimmed TEST_CMD ACCESS_RW 4 KiB (fast path)', result: lat(rw), target: 'median <= 0.5x floor' });
    rows.push({ bench: 'shimmed TEST_CMD ACCESS_RW 4 KiB (socket: fast path off)', result: lat(rwSocket), target: 'report' });
    const pct = (ms: number, s: number): string => `${ms.toFixed(2)} ms (${((ms / (s * 1000)) * 100).toFixed(3)}%)`;
    rows.push({
      bench: `server CPU, client calling once a second for ${idle.seconds} s`,
      result: `${pct(idle.server_cpu_ms, idle.seconds)}; with V8's memory reducer off ${pct(idleNoReducer.server_cpu_ms, idleNoReducer.seconds)}`,
      target: 'report',
    });
    rows.push({
      bench: `server CPU, client asleep (no call) for the ${idle.seconds} s after that`,
      result: `${pct(idle.quiet_cpu_ms, idle.seconds)}; memory reducer off ${pct(idleNoReducer.quiet_cpu_ms, idleNoReducer.seconds)}`,
      target: '0% (idle)',
    });
    const sorted = [...startup].sort((a, b) => a - b);
    rows.push({
      bench: 'iommufd-emu run -- /bin/true (wall, 7 runs)',
      result: `median ${(sorted[3]! / 1000).toFixed(2)} s (min ${(sorted[0]! / 1000).toFixed(2)}, max ${(sorted[6]! / 1000).toFixed(2)})`,
      target: '<= 0.3 s',
    });
  } catch (e) {
    rows.push({ bench: 'shim benchmarks', result: `skipped: ${(e as Error).message.split('\n')[0]}`, target: 'needs cc' });
  }

  if (process.env.IOMMUFD_BENCH_SELFTESTS !== '0') selftestRows();

  const w = [Math.max(...rows.map((r) => r.bench.length)), Math.max(...rows.map((r) => r.result.length))];
  console.log(`| ${'benchmark'.padEnd(w[0]!)} | ${'result'.padEnd(w[1]!)} | target |`);
  console.log(`|${'-'.repeat(w[0]! + 2)}|${'-'.repeat(w[1]! + 2)}|--------|`);
  for (const r of rows) console.log(`| ${r.bench.padEnd(w[0]!)} | ${r.result.padEnd(w[1]!)} | ${r.target} |`);
}

const memArg = process.argv.indexOf('--memory');
if (memArg > 0) memoryChild(Number(process.argv[memArg + 1]));
else await main();
