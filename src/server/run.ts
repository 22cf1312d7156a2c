// `iommufd-emu run`: a private server in this process, the program run with the
// shim preloaded, our exit status = the program's.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import type { ProfileName } from '../uapi/profiles.js';
import { ensureShim } from './native.js';
import { IommufdServer, type CapName } from './server.js';
import { parseTraceSpec, TracePrinter } from './trace.js';

export interface RunOptions {
  profile?: ProfileName;
  /** The --trace value: true = ioctls to stderr; a string = categories and/or a file (parseTraceSpec). */
  trace?: boolean | string;
  /** Extra environment for the program. */
  env?: NodeJS.ProcessEnv;
  /** Capabilities the emulator grants every client (see ServerOptions.grantCaps). */
  grantCaps?: CapName[];
  /** Serve this emulator (e.g. one the inspector watches) instead of a new one. */
  emulator?: Emulator;
  /** Awaited after the server listens and before the program starts (the inspector waits for its page). */
  beforeStart?: () => Promise<void>;
}

/** A private directory for the socket and the emulated debugfs. */
export function privateDir(): string {
  const base = process.env.XDG_RUNTIME_DIR && fs.existsSync(process.env.XDG_RUNTIME_DIR) ? process.env.XDG_RUNTIME_DIR : os.tmpdir();
  return fs.mkdtempSync(path.join(base, 'iommufd-emu-'));
}

/** The environment lines that route a program's /dev/iommu to the server at `socket`. */
export function shimEnv(shim: string, socket: string, debugfs?: string, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const pre = base.LD_PRELOAD ? `${shim} ${base.LD_PRELOAD}` : shim;
  const env: NodeJS.ProcessEnv = { ...base, LD_PRELOAD: pre, IOMMUFD_EMU_SOCKET: socket };
  if (debugfs) env.IOMMUFD_EMU_DEBUGFS = debugfs;
  return env;
}

export function traceWriter(trace: boolean | string | undefined): ((line: string) => void) | undefined {
  if (!trace) return undefined;
  if (trace === true) return (l) => process.stderr.write(`${l}\n`);
  const fd = fs.openSync(trace, 'a');
  return (l) => fs.writeSync(fd, `${l}\n`);
}

/** `--trace[=SPEC]` (parseTraceSpec): print `emu`'s trace as asked; nothing when not asked. */
export function attachTrace(emu: Emulator, trace: boolean | string | undefined): void {
  const spec = parseTraceSpec(trace);
  if (spec) new TracePrinter(traceWriter(spec.to)!, true, spec.categories).attach(emu);
}

export async function runProgram(argv: string[], opts: RunOptions = {}): Promise<number> {
  if (argv.length === 0) throw new Error('run: no program given (iommufd-emu run [options] -- PROG ARGS...)');
  const shim = ensureShim();
  const dir = privateDir();
  const socket = path.join(dir, 'sock');
  const debugfs = path.join(dir, 'debugfs');
  const emulator = opts.emulator ?? new Emulator({ profile: opts.profile ?? 'mainline' });
  attachTrace(emulator, opts.trace);
  const server = new IommufdServer({ socketPath: socket, emulator, grantCaps: opts.grantCaps });
  await server.listen();
  try {
    await opts.beforeStart?.();
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: 'inherit',
      env: shimEnv(shim, socket, debugfs, { ...process.env, ...opts.env }),
    });
    const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
    const onInt = forward('SIGINT');
    const onTerm = forward('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    const status = await new Promise<number>((resolve) => {
      child.on('error', (e) => {
        process.stderr.write(`iommufd-emu: cannot run ${argv[0]}: ${e.message}\n`);
        resolve(127);
      });
      child.on('exit', (code, signal) => {
        if (signal) resolve(128 + (os.constants.signals[signal] ?? 0));
        else resolve(code ?? 0);
      });
    });
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    return status;
  } finally {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
