// Building the C side with the system compiler: the LD_PRELOAD shim (into a
// cache directory, rebuilt when native/shim.c changes) and small C programs
// (the demo, test helpers). Nothing prebuilt is shipped.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SlotMapper } from './transport.js';
import type { VmaQuery } from './procmem.js';
import { writeHeaders } from '../uapi/cheader.js';
import { cHeader } from './wire.js';

/** The package root (holds native/ and examples/), from dist/server/ or src/server/. */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SHIM_SOURCE = path.join(PACKAGE_ROOT, 'native', 'shim.c');
/** The MOV decoder the shim's SIGSEGV handler uses for trapped BAR accesses. */
const DECODER = ['mmio_decode.c', 'mmio_decode.h'].map((f) => path.join(PACKAGE_ROOT, 'native', f));
export const FASTPATH_SOURCE = path.join(PACKAGE_ROOT, 'native', 'fastpath.c');

export function cacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || (os.homedir() ? path.join(os.homedir(), '.cache') : os.tmpdir());
  const dir = path.join(base, 'iommufd-emu');
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.accessSync(dir, fs.constants.W_OK);
    return dir;
  } catch {
    const t = path.join(os.tmpdir(), `iommufd-emu-cache-${process.getuid?.() ?? 0}`);
    fs.mkdirSync(t, { recursive: true, mode: 0o700 });
    return t;
  }
}

/** The C compiler to use ($CC or cc), or null if there is none. */
export function findCompiler(): string | null {
  const cc = process.env.CC || 'cc';
  const r = spawnSync(cc, ['--version'], { stdio: 'ignore' });
  return r.status === 0 ? cc : null;
}

/** The generated wire header's name (native/shim.c includes it). */
export const WIRE_HEADER = 'iommufd_emu_wire.h';

/**
 * Write the wire protocol's C header (from wire.ts) into a directory of the
 * cache named by its content, and return the directory. Generated at build
 * time rather than committed: the shim is always compiled on the user's
 * machine from the installed package, so its header can never lag the
 * server's description, and there is no second copy to keep in step.
 */
export function wireHeaderDir(): string {
  const text = cHeader();
  const key = createHash('sha256').update(text).digest('hex').slice(0, 16);
  const dir = path.join(cacheDir(), `wire-${key}`);
  const file = path.join(dir, WIRE_HEADER);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  }
  return dir;
}

function digest(files: string[], extra: string): string {
  const h = createHash('sha256');
  for (const f of files) h.update(fs.readFileSync(f));
  h.update(extra);
  return h.digest('hex').slice(0, 16);
}

/** Compile into `out` atomically (temp file + rename), so concurrent builders never see half a file. */
function compile(cc: string, args: string[], out: string): void {
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    execFileSync(cc, [...args, '-o', tmp], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString() ?? '';
    try {
      fs.unlinkSync(tmp);
    } catch { /* none */ }
    throw new Error(`${cc} ${args.join(' ')} failed:\n${stderr}`);
  }
  fs.renameSync(tmp, out);
  // Drop older builds of the same thing (same name, other content hash).
  const dir = path.dirname(out);
  const stem = path.basename(out).replace(/-[0-9a-f]{16}(\.so|\.node)?$/, '-');
  for (const f of fs.readdirSync(dir)) {
    if (f !== path.basename(out) && f.startsWith(stem) && /^[0-9a-f]{16}(\.so|\.node)?$/.test(f.slice(stem.length))) {
      try {
        fs.unlinkSync(path.join(dir, f));
      } catch { /* in use elsewhere: fine */ }
    }
  }
}

/** The compiler's name as the cache keys use it (no process started: only a build asks findCompiler()). */
function compilerName(): string {
  return process.env.CC || 'cc';
}

/** Path of the shim library, building it when missing or outdated. */
export function ensureShim(): string {
  const wire = wireHeaderDir();
  const key = digest([SHIM_SOURCE, ...DECODER, path.join(wire, WIRE_HEADER)], compilerName());
  const out = path.join(cacheDir(), `libiommufd-emu-${key}.so`);
  if (fs.existsSync(out)) return out;
  const cc = findCompiler();
  if (!cc) throw new Error('no C compiler found (install gcc or set CC): the LD_PRELOAD shim is built from native/shim.c');
  compile(cc, ['-shared', '-fPIC', '-O2', '-Wall', '-I', wire, '-I', path.dirname(SHIM_SOURCE), SHIM_SOURCE, DECODER[0]!, '-ldl', '-lpthread'], out);
  return out;
}

/**
 * The Node-API headers of the running Node (node_api.h): installed beside the
 * binary (<prefix>/include/node) by Node's own packages and tarballs.
 */
export function nodeApiIncludeDir(): string | null {
  const prefixes = [path.resolve(path.dirname(process.execPath), '..')];
  const cfg = (process.config as { variables?: { node_prefix?: string } }).variables?.node_prefix;
  if (cfg) prefixes.push(cfg);
  for (const p of prefixes) {
    const dir = path.join(p, 'include', 'node');
    if (fs.existsSync(path.join(dir, 'node_api.h'))) return dir;
  }
  return null;
}

/**
 * Path of the server's fast-path addon (native/fastpath.c: maps a client's
 * slot), built with cc against Node's Node-API headers like the shim (cached
 * by content; Node-API is ABI-stable across Node versions).
 */
export function ensureFastPathAddon(): string {
  const inc = nodeApiIncludeDir();
  if (!inc) throw new Error(`no Node-API headers (node_api.h) under ${path.resolve(path.dirname(process.execPath), '..', 'include', 'node')}`);
  const wire = wireHeaderDir();
  const key = digest([FASTPATH_SOURCE, path.join(inc, 'node_api.h'), path.join(wire, WIRE_HEADER)], compilerName());
  const out = path.join(cacheDir(), `fastpath-${key}.node`);
  if (fs.existsSync(out)) return out;
  const cc = findCompiler();
  if (!cc) throw new Error('no C compiler found (install gcc or set CC)');
  compile(cc, ['-shared', '-fPIC', '-O2', '-Wall', '-DNODE_GYP_MODULE_NAME=iommufd_emu_fastpath', '-I', inc, '-I', wire, FASTPATH_SOURCE], out);
  return out;
}

/** The server addon (native/fastpath.c): the fast path's slot mapper and VMA queries. */
export type ServerAddon = SlotMapper & { vmas: VmaQuery };
let addon: ServerAddon | string | undefined;

/** The server addon, or why there is none (the server then keeps to the socket and reads maps as text); loaded once. */
export function loadServerAddon(): ServerAddon | string {
  if (addon === undefined) {
    try {
      const mod = { exports: {} as ServerAddon };
      process.dlopen(mod, ensureFastPathAddon());
      addon = mod.exports;
    } catch (e) {
      addon = (e as Error).message;
    }
  }
  return addon;
}

/** Build a C program (cached by content); returns the executable's path. */
export function buildProgram(sources: string[], opts: { includeDirs?: string[]; cflags?: string[]; name?: string } = {}): string {
  const cc = findCompiler();
  if (!cc) throw new Error('no C compiler found (install gcc or set CC)');
  const inc = (opts.includeDirs ?? []).flatMap((d) => ['-I', d]);
  const flags = [...(opts.cflags ?? []), ...inc];
  const headers = (opts.includeDirs ?? []).flatMap((d) => {
    try {
      return fs.readdirSync(d, { recursive: true }).map(String).filter((f) => f.endsWith('.h')).map((f) => path.join(d, f));
    } catch {
      return [];
    }
  });
  const key = digest([...sources, ...headers], cc + flags.join(' '));
  const out = path.join(cacheDir(), `${opts.name ?? path.basename(sources[0]!, '.c')}-${key}`);
  if (fs.existsSync(out)) return out;
  compile(cc, ['-O2', '-Wall', ...flags, ...sources, '-lpthread'], out);
  return out;
}

/**
 * Whether this process may read a child's memory through /proc/<pid>/mem (the
 * server's way to reach its clients): false under a ptrace-denying sandbox.
 */
export function procMemAccessible(): boolean {
  const child = spawn('sleep', ['5'], { stdio: 'ignore' });
  try {
    if (child.pid === undefined) return false;
    const fd = fs.openSync(`/proc/${child.pid}/mem`, 'r+');
    fs.closeSync(fd);
    return true;
  } catch {
    return false;
  } finally {
    child.kill('SIGKILL');
  }
}

/** native/testclient.c (the robustness, fast-path, VFIO-isolation and soak client), built against mainline headers. */
export function buildTestClient(): string {
  const inc = path.join(cacheDir(), 'include', 'mainline');
  writeHeaders(inc, 'mainline');
  return buildProgram([path.join(PACKAGE_ROOT, 'native', 'testclient.c')], {
    includeDirs: [inc, wireHeaderDir()], cflags: ['-isystem', inc], name: 'iommufd-testclient',
  });
}
