// `npm run vmm-e2e`: a real VMM against the emulator. QEMU 10 (unmodified, from
// Debian) runs under the shim with `-object iommufd -device vfio-pci,host=BDF`,
// passes the emulated IOAT through to a Debian 6.1 guest, and the guest's own
// ioatdma driver probes it: its DMA copy self-test must pass, the channel must
// register (/sys/class/dma) and the emulated IOMMU must see no fault. The error
// run removes the guest's mappings from the host side before the driver loads:
// the engine faults, the driver must see the halted channel and give up the
// probe, and the IOMMU records the faults.
//
// --dmatest does the longer run instead: a guest kernel built from Debian's
// linux-source-6.12 with ioatdma and the kernel's dmatest client built in
// (scripts/vmm-guest-kernel.sh: built once, cached, a few minutes on 2 cores),
// dmatest copying through the passed-through channel N times with data
// verification: every test must pass, the engine's own count of copies must
// match, and the IOMMU must see no fault. Not in CI (it needs a kernel build).
//
//   node dist/vmm/e2e.js [--no-error-run] [--trace FILE]
//   node dist/vmm/e2e.js --dmatest [--iterations N] [--trace FILE]
//
// Exit 0 on pass, 1 on failure (QEMU not reaching the device through the shim included),
// 0 with a "SKIP:" line only when a package cannot be fetched (the reason is printed).
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IommuFd } from '../api.js';
import { Emulator } from '../core/emulator.js';
import { ObjType } from '../core/object.js';
import { IoatDevice } from '../devices/ioat.js';
import { buildMachine, loadMachine, type BuiltMachine } from '../machine/machine.js';
import { ensureShim } from '../server/native.js';
import { privateDir, shimEnv } from '../server/run.js';
import { IommufdServer } from '../server/server.js';
import { TracePrinter } from '../server/trace.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface Assets {
  qemu: string;
  ld: string;
  datadir: string;
  qemuVersion: string;
  kernel: string;
  initrd: string;
  guestKver: string;
  busybox: string;
}

/** scripts/vmm-e2e-setup.sh: the assets, or the reason they cannot be had. */
export function fetchAssets(): Assets | { skip: string } {
  const r = spawnSync('bash', [path.join(ROOT, 'scripts/vmm-e2e-setup.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status === 3) return { skip: (r.stderr.match(/SKIP: (.*)/)?.[1] ?? 'a package cannot be fetched').trim() };
  if (r.status !== 0) throw new Error(`vmm-e2e-setup.sh failed (${r.status}):\n${r.stderr}`);
  const env = parseAssignments(r.stdout);
  return {
    qemu: env.VMM_QEMU!, ld: env.VMM_QEMU_LD!, datadir: env.VMM_QEMU_DATADIR!, qemuVersion: env.VMM_QEMU_VERSION!,
    kernel: env.VMM_KERNEL!, initrd: env.VMM_INITRD!, guestKver: env.VMM_GUEST_KVER!, busybox: env.VMM_BUSYBOX!,
  };
}

/** Shell assignments (NAME=%q-quoted value) printed by our setup scripts. */
function parseAssignments(out: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^(VMM_\w+)=(.*)$/.exec(line);
    if (m) env[m[1]!] = spawnSync('bash', ['-c', `printf %s ${m[2]}`], { encoding: 'utf8' }).stdout;
  }
  return env;
}

/**
 * The --dmatest guest: scripts/vmm-guest-kernel.sh (builds the kernel on first use; its
 * progress goes to our stderr) and an initramfs without modules (dca and ioatdma are built in).
 */
export function fetchDmatestGuest(a: Assets): Assets | { skip: string } {
  const r = spawnSync('bash', [path.join(ROOT, 'scripts/vmm-guest-kernel.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status === 3) return { skip: 'the dmatest guest kernel cannot be built here (see the vmm-guest-kernel line above)' };
  if (r.status !== 0) throw new Error(`vmm-guest-kernel.sh failed (${r.status})`);
  const env = parseAssignments(r.stdout);
  const kernel = env.VMM_DMATEST_KERNEL!;
  const initrd = path.join(path.dirname(kernel), 'initrd.gz');
  const script = path.join(ROOT, 'scripts/vmm-e2e-initramfs.sh');
  if (!fs.existsSync(initrd) || fs.statSync(script).mtimeMs > fs.statSync(initrd).mtimeMs) {
    const b = spawnSync('bash', [script, a.busybox, '-', initrd], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (b.status !== 0) throw new Error(`vmm-e2e-initramfs.sh failed (${b.status})`);
  }
  return { ...a, kernel, initrd, guestKver: `${env.VMM_DMATEST_KVER!} (linux-source-6.12, dmatest built in)` };
}

/** What the guest's /init does: the driver's probe, the probe after the host unmapped, or dmatest. */
export type Mode = 'probe' | 'error' | 'dmatest';

/** The QEMU command line (README "Use with QEMU" shows the same). */
export function qemuArgs(a: Assets, bdf: string, mode: Mode, extraAppend = ''): string[] {
  return [
    '-L', a.datadir, '-machine', 'q35', '-accel', 'tcg', '-cpu', 'max', '-m', '512', '-smp', '1',
    '-nodefaults', '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', a.kernel, '-initrd', a.initrd, '-append', `console=ttyS0 panic=-1 vmm_e2e=${mode}${extraAppend ? ` ${extraAppend}` : ''}`,
    '-object', 'iommufd,id=iommufd0', '-device', `vfio-pci,host=${bdf},iommufd=iommufd0`,
  ];
}

export interface GuestReport {
  lines: string[];
  /** "vmm-e2e: <rest>" lines, without the prefix. */
  marks: string[];
  status: number;
  qemuStderr: string;
  seconds: number;
  bootSeconds?: number;
}

/** QEMU failing to find or open the device through the shim (the shim's VFIO support, not this test, is missing). */
const NO_VFIO_SHIM = /no such host device|failed to find vfio-dev|Failed to open \/dev\/vfio\/devices|couldn't open directory .*vfio-dev/;

interface RunCtx {
  emu: Emulator;
  m: BuiltMachine;
  ioctls: Map<string, number>;
}

interface BootOptions {
  /** Runs when the guest waits for the host (error run); then the guest goes on. */
  onWaiting?: (c: RunCtx) => void;
  /** Runs for every "vmm-e2e: " line from the guest, as it arrives. */
  onMark?: (mark: string, c: RunCtx) => void;
  /** More kernel command line. */
  append?: string;
  /** QEMU is killed after this long (default 600 s). */
  timeoutSeconds?: number;
}

/** Boot the guest once. */
async function boot(a: Assets, mode: Mode, traceTo: string | undefined, o: BootOptions = {}): Promise<GuestReport & RunCtx> {
  const emu = new Emulator({ profile: '6.12' });
  const m = buildMachine(emu, loadMachine('ioat'));
  const bdf = m.devices[0]!.desc.bdf;
  const ioctls = new Map<string, number>();
  const traceFd = traceTo ? fs.openSync(traceTo, 'a') : undefined;
  emu.bus.subscribe((e) => {
    if (e.t === 'ioctl') {
      const name = TracePrinter.line(emu, e, false)?.replace(/^\[\S+\] /, '').split(/[ {]/)[0] ?? '?';
      ioctls.set(name, (ioctls.get(name) ?? 0) + 1);
    }
    if (traceFd !== undefined) {
      const l = TracePrinter.line(emu, e);
      if (l !== null) fs.writeSync(traceFd, `${l}\n`);
    }
  }, { drivers: traceFd !== undefined });
  const dir = privateDir();
  const server = new IommufdServer({ socketPath: path.join(dir, 'sock'), emulator: emu });
  await server.listen();
  const t0 = process.hrtime.bigint();
  try {
    const env = shimEnv(ensureShim(), path.join(dir, 'sock'), path.join(dir, 'debugfs'),
      { ...process.env, LD_LIBRARY_PATH: a.ld + (process.env.LD_LIBRARY_PATH ? `:${process.env.LD_LIBRARY_PATH}` : '') });
    const child = spawn(a.qemu, qemuArgs(a, bdf, mode, o.append), { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let err = '';
    let partial = '';
    let bootSeconds: number | undefined;
    const timer = setTimeout(() => child.kill('SIGKILL'), (o.timeoutSeconds ?? 600) * 1000);
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      partial += d.toString('latin1');
      const parts = partial.split(/\r?\n/);
      partial = parts.pop()!;
      for (const l of parts) {
        lines.push(l);
        if (l.startsWith('vmm-e2e: guest ')) bootSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
        if (l.startsWith('vmm-e2e: ')) o.onMark?.(l.slice(9), { emu, m, ioctls });
        if (l === 'vmm-e2e: waiting for the host') {
          try {
            o.onWaiting?.({ emu, m, ioctls });
          } finally {
            child.stdin.write('go\n');
          }
        }
      }
    });
    const status = await new Promise<number>((resolve) => {
      child.on('error', () => resolve(127));
      child.on('exit', (code, sig) => resolve(sig ? 128 : code ?? 0));
    });
    clearTimeout(timer);
    if (partial) lines.push(partial);
    const marks = lines.filter((l) => l.startsWith('vmm-e2e: ')).map((l) => l.slice(9));
    return { lines, marks, status, qemuStderr: err, seconds: Number(process.hrtime.bigint() - t0) / 1e9, bootSeconds, emu, m, ioctls };
  } finally {
    await server.close();
    if (traceFd !== undefined) fs.closeSync(traceFd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The host side takes the guest's memory away: every IOAS mapping of every context is unmapped. */
function unmapEverything(c: RunCtx): number {
  let n = 0;
  for (const ctx of c.emu.contexts) {
    for (const o of ctx.objects.all()) {
      if (o.type !== ObjType.IOAS) continue;
      new IommuFd(ctx, ctx.owner).ioasUnmap(o.id, 0n, (1n << 64n) - 1n);
      n++;
    }
  }
  return n;
}

export interface Verdict {
  ok: boolean;
  problems: string[];
}

/** The probe run: self-test passed, channel registered, no IOMMU fault. */
export function judgeProbe(r: GuestReport, faults: number): Verdict {
  const p: string[] = [];
  const has = (re: RegExp) => r.marks.some((l) => re.test(l));
  if (!has(/^done$/)) p.push('the guest did not reach the end of its script');
  if (!has(/^insmod ioatdma rc=0$/)) p.push('insmod ioatdma failed');
  if (!has(/^driver \S+ ioatdma$/)) p.push('no PCI function is bound to ioatdma (the probe failed)');
  if (!has(/^dma dma\d+chan\d+$/)) p.push('no channel in /sys/class/dma');
  const bad = r.marks.filter((l) => /^dmesg .*(Self-test|selftest|failed|fatal|error)/i.test(l));
  if (bad.length) p.push(`guest kernel complained: ${bad.join(' | ')}`);
  if (faults) p.push(`${faults} IOMMU fault(s) on the host side`);
  const qemuErrors = qemuComplaints(r.qemuStderr);
  if (qemuErrors.length) p.push(`QEMU: ${qemuErrors.join(' | ')}`);
  return { ok: p.length === 0, problems: p };
}

/**
 * QEMU's stderr lines that are real complaints. Left out: the warnings about
 * mapping the BAR's own mmap into the IOAS, which the kernel refuses with
 * EFAULT too (a VFIO BAR cannot be pinned; docs/QEMU.md).
 */
export function qemuComplaints(stderr: string): string[] {
  return stderr.split('\n').map((l) => l.trim()).filter((l) => l &&
    !/IOMMU_IOAS_MAP failed: Bad address, PCI BAR\?|vfio_container_dma_map\(.*\) = -14 \(Bad address\)|PCI peer-to-peer transactions on BARs are not supported/.test(l));
}

/** The error run: the driver saw the halted channel and gave up; the IOMMU recorded the faults. */
export function judgeError(r: GuestReport, faults: number, unmapped: number): Verdict {
  const p: string[] = [];
  const has = (re: RegExp) => r.marks.some((l) => re.test(l));
  if (!unmapped) p.push('the host found no IOAS to unmap');
  if (!has(/^done$/)) p.push('the guest did not reach the end of its script');
  if (has(/^driver \S+ ioatdma$/)) p.push('ioatdma bound although its DMA could not work');
  if (has(/^dma dma\d+chan\d+$/)) p.push('a channel registered although its DMA could not work');
  if (!has(/^dmesg .*(failed to start channel|Self-test|selftest|probe .* failed)/i)) p.push('the guest kernel did not report the failed self-test');
  if (!faults) p.push('no IOMMU fault was recorded on the host side');
  return { ok: p.length === 0, problems: p };
}

/** One dmatest thread's summary line (drivers/dma/dmatest.c prints it when the thread ends). */
export interface DmatestSummary {
  thread: string;
  tests: number;
  failures: number;
  iops: number;
  kbPerSecond: number;
  result: number;
}

const SUMMARY = /dmatest: (\S+): summary (\d+) tests, (\d+) failures ([\d.]+) iops (\d+) KB\/s \((-?\d+)\)/;

export function dmatestSummaries(marks: string[]): DmatestSummary[] {
  const out: DmatestSummary[] = [];
  for (const l of marks) {
    const m = l.startsWith('dmatest ') ? SUMMARY.exec(l) : null;
    if (m) out.push({ thread: m[1]!, tests: +m[2]!, failures: +m[3]!, iops: +m[4]!, kbPerSecond: +m[5]!, result: +m[6]! });
  }
  return out;
}

/** What the emulated engine did while dmatest ran (its counters at "dmatest start" and "dmatest end"). */
export interface EngineCounts {
  descriptors: number;
  copies: number;
  bytes: number;
  seconds: number;
}

/**
 * The dmatest run: one thread on dma0chan0 ran all its iterations with 0 failures and result 0,
 * no failed-test lines, the engine copied once per test (each test is one memcpy of at most
 * dmatest's 16 KiB buffer, within one descriptor at XFERCAP 14), no IOMMU fault.
 */
export function judgeDmatest(r: GuestReport, iterations: number, engine: EngineCounts | undefined, faults: number): Verdict {
  const p: string[] = [];
  const has = (re: RegExp) => r.marks.some((l) => re.test(l));
  if (!has(/^done$/)) p.push('the guest did not reach the end of its script');
  if (!has(/^driver \S+ ioatdma$/)) p.push('no PCI function is bound to ioatdma (the probe failed)');
  if (!has(/^dma dma0chan0$/)) p.push('no dma0chan0 in /sys/class/dma');
  if (has(/^dmatest missing/)) p.push('the guest kernel has no dmatest');
  const sums = dmatestSummaries(r.marks);
  const s = sums.find((x) => x.thread.startsWith('dma0chan0-copy'));
  if (!s) p.push('no dmatest summary line for a dma0chan0 copy thread');
  else {
    if (s.tests !== iterations) p.push(`dmatest ran ${s.tests} tests, not ${iterations}`);
    if (s.failures !== 0) p.push(`dmatest: ${s.failures} failure(s)`);
    if (s.result !== 0) p.push(`dmatest thread ended with ${s.result}`);
  }
  if (sums.length !== 1) p.push(`${sums.length} dmatest summary lines (expected one thread)`);
  // A failed test prints its result line, and the verify step one line per bad byte range.
  const failed = r.marks.filter((l) => /^dmatest .*(result #\d+: '(?!test passed)|overwritten!|not copied!|was copied!|mismatch!|errors suppressed|misconfigured)/.test(l));
  if (failed.length) p.push(`failed tests: ${failed.slice(0, 5).join(' | ')}`);
  if (!engine) p.push('the guest never said "dmatest start" and "dmatest end"');
  else if (s && engine.copies !== s.tests) p.push(`the engine made ${engine.copies} copies for ${s.tests} tests`);
  if (faults) p.push(`${faults} IOMMU fault(s) on the host side`);
  const qemuErrors = qemuComplaints(r.qemuStderr);
  if (qemuErrors.length) p.push(`QEMU: ${qemuErrors.join(' | ')}`);
  return { ok: p.length === 0, problems: p };
}

async function dmatestRun(base: Assets, trace: string | undefined, iterations: number): Promise<number> {
  const a = fetchDmatestGuest(base);
  if ('skip' in a) {
    console.log(`vmm-e2e: SKIP: ${a.skip}`);
    return 0;
  }
  console.log(`vmm-e2e: ${a.qemuVersion}; guest ${a.guestKver}; dmatest ${iterations} iterations`);
  const ioat = (c: RunCtx) => {
    const d = c.m.devices[0]!.pci;
    if (!(d instanceof IoatDevice)) throw new Error(`vmm-e2e: the machine's first device is ${d.model}, not ioat`);
    return d;
  };
  let start: (EngineCounts & { t: bigint }) | undefined;
  let engine: EngineCounts | undefined;
  const r = await boot(a, 'dmatest', trace, {
    append: `vmm_dmatest_iterations=${iterations}`,
    // Generous: under TCG on a loaded machine a test takes a few ms; the boot ~20 s.
    timeoutSeconds: 600 + Math.ceil(iterations / 20),
    onMark: (mk, c) => {
      const st = ioat(c).stats;
      if (mk.startsWith('dmatest start ')) start = { ...st, seconds: 0, t: process.hrtime.bigint() };
      if (mk.startsWith('dmatest end ') && start) {
        engine = {
          descriptors: st.descriptors - start.descriptors, copies: st.copies - start.copies, bytes: st.bytes - start.bytes,
          seconds: Number(process.hrtime.bigint() - start.t) / 1e9,
        };
      }
    },
  });
  const faults = r.m.devices[0]!.vfio.dma.faults.length;
  const v = judgeDmatest(r, iterations, engine, faults);
  report('dmatest', r, faults, v);
  const s = dmatestSummaries(r.marks)[0];
  if (s && engine) {
    console.log(`vmm-e2e: dmatest: ${s.thread}: ${s.tests} tests, ${s.failures} failures, ${s.iops} iops, ${s.kbPerSecond} KB/s (guest's figures); ` +
      `engine: ${engine.copies} copies, ${engine.bytes} bytes, ${engine.descriptors} descriptors in ${engine.seconds.toFixed(1)} s ` +
      `(${(engine.bytes / 1024 / engine.seconds).toFixed(0)} KiB/s host-timed); IOMMU faults ${faults}`);
  }
  console.log(v.ok ? 'vmm-e2e: PASS' : 'vmm-e2e: FAIL');
  return v.ok ? 0 : 1;
}

function numberArg(argv: string[], name: string, dflt: number): number {
  const i = argv.indexOf(name);
  if (i < 0) return dflt;
  const n = Number(argv[i + 1]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} ${argv[i + 1]}: expected a positive integer`);
  return n;
}

async function main(argv: string[]): Promise<number> {
  const errorRun = !argv.includes('--no-error-run');
  const ti = argv.indexOf('--trace');
  const trace = ti >= 0 ? argv[ti + 1] : undefined;
  const a = fetchAssets();
  if ('skip' in a) {
    console.log(`vmm-e2e: SKIP: ${a.skip}`);
    return 0;
  }
  if (argv.includes('--dmatest')) return dmatestRun(a, trace, numberArg(argv, '--iterations', 10000));
  console.log(`vmm-e2e: ${a.qemuVersion}; guest ${a.guestKver}`);
  const probe = await boot(a, 'probe', trace);
  const noShim = NO_VFIO_SHIM.exec(probe.qemuStderr);
  if (noShim) {
    // The shim serves VFIO devices: QEMU not finding or opening the device is a regression, not a skip.
    console.log(`vmm-e2e: FAIL: QEMU cannot reach the VFIO device through the shim (QEMU said: ${probe.qemuStderr.split('\n').find((l) => NO_VFIO_SHIM.test(l))?.trim()})`);
    return 1;
  }
  const faults = probe.m.devices[0]!.vfio.dma.faults.length;
  const v = judgeProbe(probe, faults);
  report('probe', probe, faults, v);
  let ok = v.ok;
  if (errorRun) {
    let unmapped = 0;
    const er = await boot(a, 'error', trace, { onWaiting: (c) => (unmapped = unmapEverything(c)) });
    const ef = er.m.devices[0]!.vfio.dma.faults.length;
    const ev = judgeError(er, ef, unmapped);
    report('error', er, ef, ev);
    ok &&= ev.ok;
  }
  console.log(ok ? 'vmm-e2e: PASS' : 'vmm-e2e: FAIL');
  return ok ? 0 : 1;
}

function report(name: string, r: GuestReport & RunCtx, faults: number, v: Verdict): void {
  console.log(`vmm-e2e: ${name} run: qemu exit ${r.status}, ${r.seconds.toFixed(1)} s (guest up after ${r.bootSeconds?.toFixed(1) ?? '?'} s), IOMMU faults ${faults}`);
  console.log(`vmm-e2e: ${name} run: ioctls ${[...r.ioctls].sort((x, y) => y[1] - x[1]).map(([k, n]) => `${k}=${n}`).join(' ')}`);
  for (const l of r.marks) console.log(`  ${l}`);
  for (const p of v.problems) console.log(`vmm-e2e: ${name} run FAILED: ${p}`);
  if (!v.ok) console.log(`--- guest console ---\n${r.lines.slice(-60).join('\n')}\n--- qemu stderr ---\n${r.qemuStderr.slice(-4000)}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  main(process.argv.slice(2)).then((c) => process.exit(c), (e) => {
    console.error(e);
    process.exit(1);
  });
}
