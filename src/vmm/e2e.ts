// `npm run vmm-e2e`: a real VMM against the emulator. QEMU 10 (unmodified, from
// Debian) runs under the shim with `-object iommufd -device vfio-pci,host=BDF`,
// passes the emulated IOAT through to a Debian 6.1 guest, and the guest's own
// ioatdma driver probes it: its DMA copy self-test must pass, the channel must
// register (/sys/class/dma) and the emulated IOMMU must see no fault. The error
// run removes the guest's mappings from the host side before the driver loads:
// the engine faults, the driver must see the halted channel and give up the
// probe, and the IOMMU records the faults.
//
//   node dist/vmm/e2e.js [--error-run|--no-error-run] [--trace FILE] [--keep]
//
// Exit 0 on pass, 1 on failure, 0 with a "SKIP:" line when a package cannot be
// fetched or the shim cannot serve VFIO yet (the reason is printed).
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IommuFd } from '../api.js';
import { Emulator } from '../core/emulator.js';
import { ObjType } from '../core/object.js';
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
}

/** scripts/vmm-e2e-setup.sh: the assets, or the reason they cannot be had. */
export function fetchAssets(): Assets | { skip: string } {
  const r = spawnSync('bash', [path.join(ROOT, 'scripts/vmm-e2e-setup.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status === 3) return { skip: (r.stderr.match(/SKIP: (.*)/)?.[1] ?? 'a package cannot be fetched').trim() };
  if (r.status !== 0) throw new Error(`vmm-e2e-setup.sh failed (${r.status}):\n${r.stderr}`);
  const env: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^(VMM_\w+)=(.*)$/.exec(line);
    if (m) env[m[1]!] = spawnSync('bash', ['-c', `printf %s ${m[2]}`], { encoding: 'utf8' }).stdout;
  }
  return {
    qemu: env.VMM_QEMU!, ld: env.VMM_QEMU_LD!, datadir: env.VMM_QEMU_DATADIR!, qemuVersion: env.VMM_QEMU_VERSION!,
    kernel: env.VMM_KERNEL!, initrd: env.VMM_INITRD!, guestKver: env.VMM_GUEST_KVER!,
  };
}

/** The QEMU command line (README "Use with QEMU" shows the same). */
export function qemuArgs(a: Assets, bdf: string, mode: 'probe' | 'error'): string[] {
  return [
    '-L', a.datadir, '-machine', 'q35', '-accel', 'tcg', '-cpu', 'max', '-m', '512', '-smp', '1',
    '-nodefaults', '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', a.kernel, '-initrd', a.initrd, '-append', `console=ttyS0 panic=-1 vmm_e2e=${mode}`,
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

/** Boot the guest once; `onWaiting` runs when the guest waits for the host (error run), then the guest goes on. */
async function boot(a: Assets, mode: 'probe' | 'error', traceTo: string | undefined, onWaiting?: (c: RunCtx) => void): Promise<GuestReport & RunCtx> {
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
    const child = spawn(a.qemu, qemuArgs(a, bdf, mode), { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let err = '';
    let partial = '';
    let bootSeconds: number | undefined;
    const timer = setTimeout(() => child.kill('SIGKILL'), 600_000);
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      partial += d.toString('latin1');
      const parts = partial.split(/\r?\n/);
      partial = parts.pop()!;
      for (const l of parts) {
        lines.push(l);
        if (l.startsWith('vmm-e2e: guest ')) bootSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
        if (l === 'vmm-e2e: waiting for the host') {
          try {
            onWaiting?.({ emu, m, ioctls });
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

async function main(argv: string[]): Promise<number> {
  const errorRun = !argv.includes('--no-error-run');
  const ti = argv.indexOf('--trace');
  const trace = ti >= 0 ? argv[ti + 1] : undefined;
  const a = fetchAssets();
  if ('skip' in a) {
    console.log(`vmm-e2e: SKIP: ${a.skip}`);
    return 0;
  }
  console.log(`vmm-e2e: ${a.qemuVersion}; guest ${a.guestKver}`);
  const probe = await boot(a, 'probe', trace);
  const noShim = NO_VFIO_SHIM.exec(probe.qemuStderr);
  if (noShim) {
    console.log(`vmm-e2e: SKIP: QEMU cannot reach the VFIO device through the shim (docs/QEMU.md, Status; QEMU said: ${probe.qemuStderr.split('\n').find((l) => NO_VFIO_SHIM.test(l))?.trim()})`);
    return 0;
  }
  const faults = probe.m.devices[0]!.vfio.dma.faults.length;
  const v = judgeProbe(probe, faults);
  report('probe', probe, faults, v);
  let ok = v.ok;
  if (errorRun) {
    let unmapped = 0;
    const er = await boot(a, 'error', trace, (c) => (unmapped = unmapEverything(c)));
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
