#!/usr/bin/env node
// The iommufd-emu command line: run a program against a private emulator, serve
// a shared one, print the environment, generate headers, run the demo.
import { Command, Option } from 'commander';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { PROFILES, type ProfileName } from '../uapi/profiles.js';
import { buildProgram, cacheDir, ensureShim, PACKAGE_ROOT } from '../server/native.js';
import { runProgram, shimEnv, traceWriter } from '../server/run.js';
import { CAP_NAMES, defaultSocketPath, IommufdServer, loadHandlers, type CapName } from '../server/server.js';
import { TracePrinter } from '../server/trace.js';
import { DEVICE_MODELS } from '../devices/models.js';
import { DEFAULT_PRESET, describeMachine, IOMMU_TYPES, loadMachine, PRESETS } from '../machine/machine.js';

const abiOption = () =>
  new Option('--abi <profile>', 'ABI profile the emulator impersonates')
    .choices(Object.keys(PROFILES))
    .default('mainline');

const grantOption = () =>
  new Option('--grant-cap <cap...>', 'treat every client as also having these capabilities (default: its real ones)')
    .choices(CAP_NAMES as string[]);

const program = new Command();
program
  .name('iommufd-emu')
  .description('A user-space /dev/iommu (IOMMUFD) emulator: run unmodified programs against it')
  .enablePositionalOptions();

program
  .command('run')
  .description('run PROG with /dev/iommu routed to a private emulator; exits with PROG\'s status')
  .addOption(abiOption())
  .option('--trace [file]', 'print one decoded line per ioctl (to stderr, or append to FILE)')
  .addOption(grantOption())
  .argument('<prog...>', 'program and its arguments (after --)')
  .passThroughOptions()
  .action(async (prog: string[], opts: { abi: ProfileName; trace?: boolean | string; grantCap?: CapName[] }) => {
    await loadHandlers();
    process.exitCode = await runProgram(prog, { profile: opts.abi, trace: opts.trace, grantCaps: opts.grantCap });
  });

program
  .command('serve')
  .description('serve /dev/iommu to every client of a socket (the shim connects via IOMMUFD_EMU_SOCKET)')
  .option('--socket <path>', 'socket path', defaultSocketPath())
  .addOption(abiOption())
  .option('--trace [file]', 'print one decoded line per ioctl')
  .addOption(grantOption())
  .action(async (opts: { socket: string; abi: ProfileName; trace?: boolean | string; grantCap?: CapName[] }) => {
    await loadHandlers();
    const write = traceWriter(opts.trace);
    const emulator = new Emulator({ profile: opts.abi });
    if (write) new TracePrinter(write).attach(emulator);
    const server = new IommufdServer({ socketPath: path.resolve(opts.socket), emulator, grantCaps: opts.grantCap });
    await server.listen();
    process.stderr.write(`iommufd-emu: serving ABI ${opts.abi} on ${server.socketPath}\n`);
    const stop = () => void server.close().then(() => process.exit(0));
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });

program
  .command('env')
  .description('print the environment lines that route a program to a server (eval "$(iommufd-emu env)")')
  .option('--socket <path>', 'socket path', defaultSocketPath())
  .action((opts: { socket: string }) => {
    const socket = path.resolve(opts.socket);
    const env = shimEnv(ensureShim(), socket, path.join(path.dirname(socket), 'iommufd-emu-debugfs'), {});
    for (const k of ['LD_PRELOAD', 'IOMMUFD_EMU_SOCKET', 'IOMMUFD_EMU_DEBUGFS']) {
      process.stdout.write(`export ${k}='${env[k]}'\n`);
    }
  });

/** `--machine PRESET|FILE`: which devices the emulated machine has (docs/MACHINE.md). */
const machineOption = () =>
  new Option('--machine <preset|file>', `machine description: a preset (${Object.keys(PRESETS).join(', ')}) or a JSON file`)
    .default(DEFAULT_PRESET);

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
      for (const [k, t] of Object.entries(IOMMU_TYPES)) process.stdout.write(`iommu ${k}: ${t.description}\n`);
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
  .description('build examples/demo.c and run it with --trace')
  .addOption(abiOption())
  .action(async (opts: { abi: ProfileName }) => {
    await loadHandlers();
    const exe = await buildDemo(opts.abi);
    process.stderr.write(`iommufd-emu demo: running ${path.relative(process.cwd(), exe) || exe} (ABI ${opts.abi})\n`);
    process.exitCode = await runProgram([exe], { profile: opts.abi, trace: true });
  });

/** Build the demo against C headers generated from the uAPI table for `profile`. */
async function buildDemo(profile: ProfileName): Promise<string> {
  const { writeHeaders } = await import('../uapi/cheader.js');
  const inc = path.join(cacheDir(), 'include', profile);
  writeHeaders(inc, profile);
  const src = path.join(PACKAGE_ROOT, 'examples', 'demo.c');
  return buildProgram([src], { includeDirs: [inc], cflags: ['-isystem', inc], name: `iommufd-demo-${profile}` });
}

program.parseAsync(process.argv).catch((e: Error) => {
  process.stderr.write(`iommufd-emu: ${e.message}\n`);
  process.exit(2);
});
