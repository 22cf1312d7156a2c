// Shim benchmarks (`npm run bench`): the bare C<->Node Unix-socket round trip
// as the floor, then ioctls of a real C program through the LD_PRELOAD shim,
// all measured in one run so the ratios are comparable.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildProgram } from '../server/native.js';
import { writeHeaders } from '../uapi/cheader.js';
import { REP, REQ } from '../server/wire.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

export interface Latency { median_ns: number; p99_ns: number; n: number }

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], env });
    let out = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}`))));
  });
}

function lastJson<T = Latency>(out: string): T {
  const line = out.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  if (!line) throw new Error(`no result in output: ${out}`);
  return JSON.parse(line) as T;
}

/** The bytes a shimmed IOAS_ALLOC moves: the IOCTL frames plus the 12-byte struct inline both ways. */
const ECHO_REQ = REQ.IOCTL.size + 12;
const ECHO_REP = REP.ioctl.size + 12;

/** A Node server answering every ECHO_REQ-byte frame with an ECHO_REP-byte one. */
async function echoFloor(prog: string, n: number): Promise<Latency> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-echo-'));
  const sock = path.join(dir, 'echo.sock');
  const reply = Buffer.alloc(ECHO_REP);
  reply.writeUInt32LE(ECHO_REP, 0);
  const server = net.createServer((c) => {
    let pending = 0;
    c.on('data', (d: Buffer) => {
      pending += d.length;
      while (pending >= ECHO_REQ) {
        pending -= ECHO_REQ;
        c.write(reply);
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  try {
    return lastJson(await run(prog, ['echo', sock, String(n), String(ECHO_REQ), String(ECHO_REP)]));
  } finally {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface Idle { server_cpu_ms: number; quiet_cpu_ms: number; seconds: number; calls: number }

export interface ShimResults {
  echo: Latency;
  /** Through the fast path (the default) and with it off (IOMMUFD_EMU_FASTPATH=0), same run. */
  ioas: Latency; rw: Latency; ioasSocket: Latency; rwSocket: Latency;
  /**
   * The server's CPU time over `seconds` of a client making one call a second, then over
   * `seconds` of it making none; `noReducer`: the same with V8's memory reducer off.
   */
  idle: Idle; idleNoReducer: Idle;
  /** `iommufd-emu run -- /bin/true`, wall ms of each of 7 runs. */
  startup: number[];
}

function runShimmed(prog: string, args: string[], fast: boolean, nodeFlags: string[] = []): Promise<string> {
  const env = fast ? undefined : { ...process.env, IOMMUFD_EMU_FASTPATH: '0' };
  return run(process.execPath, [...nodeFlags, CLI, 'run', '--abi', 'mainline', '--', prog, ...args], env);
}

async function startupTimes(runs: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await run(process.execPath, [CLI, 'run', '--', '/bin/true']);
    out.push(performance.now() - t0);
  }
  return out;
}

export async function shimBench(n = 20000): Promise<ShimResults> {
  const inc = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-bench-h-'));
  writeHeaders(inc, 'mainline');
  const prog = buildProgram([path.join(ROOT, 'bench', 'shimbench.c')], { includeDirs: [inc], name: 'shimbench' });
  fs.rmSync(inc, { recursive: true, force: true });
  const echo = await echoFloor(prog, n);
  const ioas = lastJson(await runShimmed(prog, ['ioas', String(n / 2)], true));
  const ioasSocket = lastJson(await runShimmed(prog, ['ioas', String(n / 2)], false));
  const rw = lastJson(await runShimmed(prog, ['rw', String(n / 4)], true));
  const rwSocket = lastJson(await runShimmed(prog, ['rw', String(n / 4)], false));
  const idle = async (flags: string[]): Promise<Idle> => lastJson<Idle>(await runShimmed(prog, ['idle', '10'], true, flags));
  const idleDefault = await idle([]);
  const idleNoReducer = await idle(['--no-memory-reducer']);
  const startup = await startupTimes(7);
  return { echo, ioas, rw, ioasSocket, rwSocket, idle: idleDefault, idleNoReducer, startup };
}

export interface MmioResults { mmio_load_ns: number; config_pread_ns: number; n: number }

/**
 * A trapped BAR load (readb: SIGSEGV, decode, one MMIO frame, registers
 * written back) against a config-space pread of the same device (one FILEOP
 * frame): native/vfio_client.c's bench mode on the default machine, means
 * over 20000 each.
 */
export async function mmioBench(): Promise<MmioResults> {
  const inc = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-bench-mmio-'));
  writeHeaders(inc, 'mainline');
  const prog = buildProgram([path.join(ROOT, 'native', 'vfio_client.c')], { includeDirs: [inc], cflags: ['-isystem', inc], name: 'iommufd-vfio-client' });
  fs.rmSync(inc, { recursive: true, force: true });
  return lastJson<MmioResults>(await run(process.execPath, [CLI, 'run', '--', prog, 'bench']));
}
