#!/usr/bin/env node
// The iommufd-emu command line: run a program against a private emulator, serve
// a shared one, print the environment, generate headers, run the demo.
import { Command, Option } from 'commander';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { PROFILES, type ProfileName } from '../uapi/profiles.js';
import { ensureShim } from '../server/native.js';
import { attachTrace, runProgram, shimEnv } from '../server/run.js';
import { CAP_NAMES, defaultSocketPath, IommufdServer, loadHandlers, type CapName } from '../server/server.js';
import { TRACE_CATEGORIES } from '../server/trace.js';
import { DEFAULT_PORT, inspectPort, serveRecording, startInspector } from '../inspect/start.js';
import { buildDemo, EXAMPLES } from './demo.js';
import { DEVICE_MODELS } from '../devices/models.js';
import { buildMachine, DEFAULT_PRESET, describeMachine, IOMMU_TYPES, loadMachine, PRESETS } from '../machine/machine.js';

const abiOption = () =>
  new Option('--abi <profile>', 'ABI profile the emulator impersonates')
    .choices(Object.keys(PROFILES))
    .default('mainline');

const grantOption = () =>
  new Option('--grant-cap <cap...>', 'treat every client as also having these capabilities (default: its real ones)')
    .choices(CAP_NAMES as string[]);

const inspectOption = () =>
  new Option('--inspect [port]', `serve the live inspector on 127.0.0.1:PORT (default ${DEFAULT_PORT}; 0 = any free port)`);
const recordOption = () =>
  new Option('--inspect-record <file>', 'record the inspector\'s stream to FILE (replay it with `iommufd-emu inspect FILE`)');

/** `--machine PRESET|FILE`: which devices the emulated machine has (docs/MACHINE.md). */
const machineOption = () =>
  new Option('--machine <preset|file>', `machine description: a preset (${Object.keys(PRESETS).join(', ')}) or a JSON file`)
    .default(DEFAULT_PRESET);

const traceOption = () =>
  new Option('--trace [spec]', `print one decoded line per ioctl (to stderr); SPEC: comma-separated categories ` +
    `(${Object.entries(TRACE_CATEGORIES).map(([k, c]) => `${k}: ${c.help}`).join('; ')}) and/or a FILE to append to`);

const log = (m: string): void => void process.stderr.write(`iommufd-emu: ${m}\n`);

/** Resolves on the first SIGINT or SIGTERM. */
function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
}

interface RunCliOptions {
  abi: ProfileName;
  trace?: boolean | string;
  grantCap?: CapName[];
  inspect?: boolean | string;
  inspectRecord?: string;
  inspectWait?: boolean;
  /** --machine: the devices and IOMMUs of the emulated machine (default: the one-IOAT preset). */
  machine?: string;
}

/**
 * Run `prog` against a private emulator, traced and/or inspected as asked.
 * With --inspect the program starts once a page is open (unless
 * --no-inspect-wait) and the run stays on view after it exits, until Ctrl-C.
 */
async function runCli(prog: string[], opts: RunCliOptions): Promise<number> {
  const emulator = new Emulator({ profile: opts.abi });
  const built = buildMachine(emulator, loadMachine(opts.machine ?? DEFAULT_PRESET));
  attachTrace(emulator, opts.trace);
  // the kernel's VFIO selftests find their device here (unless the caller chose one)
  const bdf = built.devices[0]?.desc.bdf;
  const env = bdf && !process.env.VFIO_SELFTESTS_BDF ? { VFIO_SELFTESTS_BDF: bdf } : {};
  const run = { profile: opts.abi, grantCaps: opts.grantCap, emulator, env };
  if (!opts.inspect && !opts.inspectRecord) return runProgram(prog, run);
  const ins = await startInspector(emulator, { inspect: opts.inspect, record: opts.inspectRecord, argv: prog }, log);
  const url = ins.server?.url;
  if (url) log(`inspector at ${url}`);
  let status: number;
  try {
    status = await runProgram(prog, {
      ...run,
      beforeStart: async () => {
        if (ins.server && opts.inspectWait !== false) {
          ins.session.setStatus('waiting');
          log(`open ${url} to start ${prog[0]} (Ctrl-C quits)`);
          const quit = untilSignal().then(() => { throw new Error('interrupted before a page connected'); });
          await Promise.race([ins.server.connected, quit]);
        }
        ins.session.setStatus('running');
      },
    });
  } catch (e) {
    await ins.close();
    throw e;
  }
  ins.session.setStatus('exited', { exitStatus: status });
  if (ins.server) {
    log(`${prog[0]} exited with status ${status}; the run stays on view at ${url} (Ctrl-C to quit)`);
    await untilSignal();
  }
  await ins.close();
  return status;
}

const program = new Command();
program
  .name('iommufd-emu')
  .description('A user-space /dev/iommu (IOMMUFD) emulator: run unmodified programs against it')
  .enablePositionalOptions();

program
  .command('run')
  .description('run PROG with /dev/iommu routed to a private emulator; exits with PROG\'s status')
  .addOption(abiOption())
  .addOption(traceOption())
  .addOption(grantOption())
  .addOption(inspectOption())
  .addOption(recordOption())
  .option('--no-inspect-wait', 'with --inspect, start the program without waiting for a page')
  .addOption(machineOption())
  .argument('<prog...>', 'program and its arguments (after --)')
  .passThroughOptions()
  .action(async (prog: string[], opts: RunCliOptions) => {
    await loadHandlers();
    process.exitCode = await runCli(prog, opts);
  });

program
  .command('serve')
  .description('serve /dev/iommu to every client of a socket (the shim connects via IOMMUFD_EMU_SOCKET)')
  .option('--socket <path>', 'socket path', defaultSocketPath())
  .addOption(abiOption())
  .addOption(traceOption())
  .addOption(grantOption())
  .addOption(inspectOption())
  .addOption(recordOption())
  .addOption(machineOption())
  .action(async (opts: { socket: string; abi: ProfileName; trace?: boolean | string; grantCap?: CapName[];
    inspect?: boolean | string; inspectRecord?: string; machine: string }) => {
    await loadHandlers();
    const emulator = new Emulator({ profile: opts.abi });
    buildMachine(emulator, loadMachine(opts.machine));
    attachTrace(emulator, opts.trace);
    const ins = opts.inspect || opts.inspectRecord
      ? await startInspector(emulator, { inspect: opts.inspect, record: opts.inspectRecord }, log) : null;
    ins?.session.setStatus('serving');
    const server = new IommufdServer({ socketPath: path.resolve(opts.socket), emulator, grantCaps: opts.grantCap });
    await server.listen();
    process.stderr.write(`iommufd-emu: serving ABI ${opts.abi} on ${server.socketPath}\n`);
    if (ins?.server) log(`inspector at ${ins.server.url}`);
    const stop = () => void server.close().then(() => ins?.close()).then(() => process.exit(0));
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });

program
  .command('env')
  .description('print the environment lines that route a program to a server (eval "$(iommufd-emu env)")')
  .option('--socket <path>', 'socket path', defaultSocketPath())
  .addOption(machineOption().default(DEFAULT_PRESET, `${DEFAULT_PRESET}; the server's --machine, for VFIO_SELFTESTS_BDF`))
  .action((opts: { socket: string; machine: string }) => {
    const socket = path.resolve(opts.socket);
    const env = shimEnv(ensureShim(), socket, path.join(path.dirname(socket), 'iommufd-emu-debugfs'), {});
    const bdf = loadMachine(opts.machine).devices[0]?.bdf;
    if (bdf) env.VFIO_SELFTESTS_BDF = bdf;
    for (const k of ['LD_PRELOAD', 'IOMMUFD_EMU_SOCKET', 'IOMMUFD_EMU_DEBUGFS', 'VFIO_SELFTESTS_BDF']) {
      if (env[k]) process.stdout.write(`export ${k}='${env[k]}'\n`);
    }
  });

program
  .command('devices')
  .description('print the emulated machine: IOMMUs and the PCI functions bound to vfio-pci (BDF, model, group, cdev)')
  .addOption(machineOption())
  .option('--json', 'print the resolved description as JSON')
  .option('--models', 'list the device models and IOMMU types with their options')
  .action((opts: { machine: string; json?: boolean; models?: boolean }) => {
    if (opts.models) {
      for (const m of Object.values(DEVICE_MODELS)) {
        process.stdout.write(`model ${m.name}: ${m.description}\n`);
        for (const [k, o] of Object.entries(m.options)) {
          process.stdout.write(`    ${k}=${o.min}..${o.max} (default ${o.default}): ${o.help}\n`);
        }
      }
      for (const [k, t] of Object.entries(IOMMU_TYPES)) {
        process.stdout.write(`iommu ${k}: ${t.description}\n`);
        for (const [o, d] of Object.entries(t.options ?? {})) process.stdout.write(`    ${o}: ${d.help}\n`);
      }
      return;
    }
    const m = loadMachine(opts.machine);
    process.stdout.write(opts.json ? `${JSON.stringify(m, null, 2)}\n` : `${describeMachine(m)}\n`);
  });

program
  .command('build-shim')
  .description('build the LD_PRELOAD shim (if needed) and print its path')
  .action(() => {
    process.stdout.write(`${ensureShim()}\n`);
  });

program
  .command('headers')
  .description('write C headers (linux/iommufd.h, iommufd_test.h) generated for a profile into DIR')
  .addOption(abiOption())
  .argument('<dir>')
  .action(async (dir: string, opts: { abi: ProfileName }) => {
    const { writeHeaders } = await import('../uapi/cheader.js');
    const r = writeHeaders(path.resolve(dir), opts.abi);
    process.stdout.write(`${r.iommufd}\n${r.test}\n`);
  });

program
  .command('demo')
  .description('build a bundled C example (examples/) and run it with --trace (add --inspect to watch it in a browser)')
  .addOption(new Option('--example <name>', `which example: ${Object.entries(EXAMPLES).map(([k, e]) => `${k} (${e.description})`).join('; ')}`)
    .choices(Object.keys(EXAMPLES)).default('demo'))
  .addOption(abiOption())
  .addOption(inspectOption())
  .addOption(recordOption())
  .option('--no-inspect-wait', 'with --inspect, start the demo without waiting for a page')
  .action(async (opts: RunCliOptions & { example: string }) => {
    await loadHandlers();
    const ex = EXAMPLES[opts.example]!;
    const exe = await buildDemo(opts.abi, opts.example);
    const on = ex.machine ? `, machine ${ex.machine}` : '';
    process.stderr.write(`iommufd-emu demo: running ${path.relative(process.cwd(), exe) || exe} (ABI ${opts.abi}${on})\n`);
    process.exitCode = await runCli([exe], { ...opts, trace: ex.trace, machine: ex.machine });
  });

program
  .command('inspect')
  .description('serve a recorded run (--inspect-record FILE) to the inspector page for replay')
  .argument('<file>')
  .option('--port <port>', `port on 127.0.0.1 (0 = any free port)`, String(DEFAULT_PORT))
  .action(async (file: string, opts: { port: string }) => {
    const server = await serveRecording(path.resolve(file), inspectPort(opts.port), log);
    log(`replaying ${file} at ${server.url} (Ctrl-C to quit)`);
    await untilSignal();
    await server.close();
  });

program.parseAsync(process.argv).catch((e: Error) => {
  process.stderr.write(`iommufd-emu: ${e.message}\n`);
  process.exit(2);
});
