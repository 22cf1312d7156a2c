// Server + shim robustness, end to end: real C clients (native/testclient.c,
// built with the system cc) talk to an in-process server through the shim.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { buildTestClient, ensureShim, findCompiler, procMemAccessible } from './native.js';
import { shimEnv } from './run.js';
import { IommufdServer, loadHandlers } from './server.js';
import * as W from './wire.js';
import * as fc from 'fast-check';

const cc = findCompiler();
const skip = !cc ? 'no C compiler (cc) on this machine: the shim and the test client cannot be built'
  : !procMemAccessible() ? 'cannot open a child\'s /proc/<pid>/mem here (ptrace restricted): the server cannot reach clients' : false;

let server: IommufdServer;
let dir: string;
let shim: string;
let client: string;
const logs: string[] = [];

function env(): NodeJS.ProcessEnv {
  return shimEnv(shim, server.socketPath, path.join(dir, 'debugfs'));
}

function runClient(mode: string): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(client, [mode], { env: env() });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('exit', (code) => resolve({ code, out, err }));
  });
}

/** Start a client that stays alive after printing READY. */
function startHolder(mode = 'hold'): Promise<{ p: ChildProcess; line: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(client, [mode], { env: env() });
    let out = '';
    p.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve({ p, line: out.trim() });
    });
    p.on('exit', (code) => reject(new Error(`holder exited ${code}: ${out}`)));
  });
}

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * What the real 6.12 kernel answers for native/testclient.c's `fileedges` cases
 * (recorded in the oracle VM, identical for every spelling of the fail-nth
 * path): bad buffers are EFAULT (partial copies count), never a signal.
 */
const FAILNTH_GOLDEN = [
  "read-null = -1 EFAULT",
  "read-unmapped = -1 EFAULT",
  "read-prot-none = -1 EFAULT",
  "read-read-only = -1 EFAULT",
  "read-huge-count = -1 EFAULT",
  "read-zero = 0 -",
  "pread-null = -1 EFAULT",
  "pread-negative = -1 EINVAL",
  "pread-straddle = 1 -",
  "pread-beyond = 0 -",
  "read-1 = 1 -",
  "read-rest = 1 -",
  "read-eof = 0 -",
  "lseek = -1 ESPIPE",
  "write-null = -1 EFAULT",
  "write-unmapped = -1 EFAULT",
  "write-prot-none = -1 EFAULT",
  "pwrite-negative = -1 EINVAL",
  "write-straddle = -1 EFAULT",
  "write-zero = -1 EINVAL",
  "write-'-1'-reads-0 = -1 EINVAL",
  "write-' 1'-reads-0 = -1 EINVAL",
  "write-'0x10'-reads-16 = 4 -",
  "write-'010'-reads-8 = 3 -",
  "write-'08'-reads-0 = -1 EINVAL",
  "write-'4294967295'-reads-4294967295 = 10 -",
  "write-'4294967296'-reads-0 = -1 ERANGE",
  "write-'9|'-reads-9 = 2 -",
  "write-'9||'-reads-0 = -1 EINVAL",
  "write-'+5'-reads-5 = 2 -",
  "write-'0x'-reads-0 = -1 EINVAL",
  "write-'1x'-reads-0 = -1 EINVAL",
  "write-'00000000000000000000000000000000000000009'-reads-0 = 41 -",
  "write-'0'-reads-0 = 1 -",
  "write-long-zero-padded = 64 -",
  "write-on-rdonly = -1 EBADF",
  "read-on-wronly = -1 EBADF"
];
const PATH_GOLDEN = [
  "open-null = -1 EFAULT",
  "open-bad = -1 EFAULT",
  "openat-bad = -1 EFAULT",
  "open-unterminated = -1 EFAULT",
  "access-bad = -1 EFAULT",
  "faccessat-bad = -1 EFAULT"
];
/** The real 6.12 kernel's answers to native/testclient.c's `zerotail` cases (check_zeroed_user order). */
const ZEROTAIL_GOLDEN = [
  "DESTROY zero-tail-into-hole = EFAULT",
  "DESTROY nonzero-then-hole = E2BIG",
  "DESTROY nonzero-last-readable-byte = E2BIG",
  "DESTROY struct-byte-in-first-tail-word = EFAULT",
  "DESTROY bytes-past-short-tail = other",
  "DESTROY short-tail-last-byte = E2BIG",
  "IOAS_ALLOC zero-tail-into-hole = EFAULT",
  "IOAS_ALLOC nonzero-then-hole = E2BIG",
  "IOAS_ALLOC nonzero-last-readable-byte = E2BIG",
  "IOAS_ALLOC struct-byte-in-first-tail-word = EFAULT",
  "IOAS_ALLOC bytes-past-short-tail = ok",
  "IOAS_ALLOC short-tail-last-byte = E2BIG",
  "OPTION zero-tail-into-hole = EFAULT",
  "OPTION nonzero-then-hole = E2BIG",
  "OPTION nonzero-last-readable-byte = E2BIG",
  "OPTION struct-byte-in-first-tail-word = EFAULT",
  "OPTION bytes-past-short-tail = other",
  "OPTION short-tail-last-byte = E2BIG",
  "IOAS_MAP zero-tail-into-hole = EFAULT",
  "IOAS_MAP nonzero-then-hole = E2BIG",
  "IOAS_MAP nonzero-last-readable-byte = E2BIG",
  "IOAS_MAP struct-byte-in-first-tail-word = EFAULT",
  "IOAS_MAP bytes-past-short-tail = other",
  "IOAS_MAP short-tail-last-byte = E2BIG",
  "TEST_CMD zero-tail-into-hole = EFAULT",
  "TEST_CMD nonzero-then-hole = E2BIG",
  "TEST_CMD nonzero-last-readable-byte = E2BIG",
  "TEST_CMD struct-byte-in-first-tail-word = EFAULT",
  "TEST_CMD bytes-past-short-tail = other",
  "TEST_CMD short-tail-last-byte = E2BIG"
];
const IOMMU_FILE_GOLDEN = [
  "read-null = -1 EINVAL",
  "read-huge-count = -1 EINVAL",
  "write-null = -1 EINVAL",
  "pread-null = -1 EINVAL",
  "pwrite-null = -1 EINVAL",
  "lseek = -1 ESPIPE"
];

describe('server and shim (C clients)', { skip }, () => {
  before(async () => {
    assert.ok(await loadHandlers());
    shim = ensureShim();
    client = buildTestClient();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-test-'));
    server = new IommufdServer({
      socketPath: path.join(dir, 'sock'),
      emulator: new Emulator({ profile: 'mainline' }),
      log: (m) => logs.push(m),
    });
    await server.listen();
  });

  after(async () => {
    await server?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('the socket is private (mode 0600)', () => {
    assert.equal(fs.statSync(server.socketPath).mode & 0o777, 0o600);
  });

  test('open, ioctl, map shared memory, check the mock domain, close drops pins', async () => {
    const r = await runClient('basic');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK basic ioas=1/);
    await until(() => server.liveContexts === 0);
  });

  test('openat(/dev, "iommu"), open("iommu") in /dev and fopen each open an independent context', async () => {
    const r = await runClient('paths');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK paths/);
  });

  test('IOAS_MAP_FILE of a memfd pins the pages a MAP_SHARED mapping of the file shows', async () => {
    const r = await runClient('mapfile');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK mapfile/);
  });

  const hugeFree = Number(/HugePages_Free:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  test('hugetlb memory, shared or private, is compound (MD_CHECK_REFS skips it)',
    { skip: hugeFree < 2 ? 'fewer than 2 free huge pages (/proc/sys/vm/nr_hugepages)' : false }, async () => {
      const r = await runClient('huge');
      assert.equal(r.code, 0, r.out + r.err);
      assert.match(r.out, /OK huge/);
    });

  test('two clients are isolated: each gets its own context and IDs', async () => {
    const [a, b] = await Promise.all([runClient('basic'), runClient('basic')]);
    assert.equal(a.code, 0, a.out);
    assert.equal(b.code, 0, b.out);
    assert.match(a.out, /ioas=1\b/);
    assert.match(b.out, /ioas=1\b/);
  });

  test('a malformed frame closes only that connection, with a logged reason', async () => {
    const { p, line } = await startHolder();
    try {
      await malformedFrames(line);
    } finally {
      p.kill('SIGKILL');
    }
    await until(() => server.liveContexts === 0);
  });

  async function malformedFrames(line: string): Promise<void> {
    assert.match(line, /READY ioas=1/);
    assert.equal(server.liveContexts, 1);
    const sock = net.connect(server.socketPath);
    await new Promise<void>((r) => sock.on('connect', () => r()));
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    const bad = Buffer.alloc(8);
    bad.writeUInt32LE(3, 0); // a length shorter than the header
    bad.writeUInt32LE(1, 4);
    sock.write(bad);
    await closed;
    assert.ok(logs.some((l) => /malformed frame: length 3/.test(l)), logs.join('\n'));
    // unknown type and a truncated frame too
    const sock2 = net.connect(server.socketPath);
    await new Promise<void>((r) => sock2.on('connect', () => r()));
    const closed2 = new Promise<void>((r) => sock2.on('close', () => r()));
    sock2.write(Buffer.from([16, 0, 0, 0, 99, 0, 0, 0]));
    await closed2;
    assert.ok(logs.some((l) => /unknown type 99/.test(l)));
    const sock3 = net.connect(server.socketPath);
    await new Promise<void>((r) => sock3.on('connect', () => r()));
    sock3.end(W.encode(W.REQ.HELLO, { pid: 1, version: W.WIRE_VERSION }).subarray(0, 10)); // a HELLO cut short
    await until(() => logs.some((l) => /truncated frame/.test(l)));
    // the other client is undisturbed
    assert.equal(server.liveContexts, 1);
    const r = await runClient('basic');
    assert.equal(r.code, 0, r.out);
  }

  test('a client claiming another process\'s pid is refused (it cannot show the nonce in that memory)', async () => {
    const sock = net.connect(server.socketPath);
    await new Promise<void>((r) => sock.on('connect', () => r()));
    const replies: Buffer[] = [];
    sock.on('data', (d) => replies.push(d));
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    // somebody else's pid (the server's own)
    sock.write(W.encode(W.REQ.HELLO, { pid: process.pid, memlock: (1n << 64n) - 1n, version: W.WIRE_VERSION }));
    await until(() => Buffer.concat(replies).length >= W.REP.hello.size);
    sock.write(W.encode(W.REQ.PROVE, { addr: 0x400000n }));
    await closed;
    const all = Buffer.concat(replies);
    assert.equal(W.decode(W.REP.prove, all, W.REP.hello.size).status, -1); // EPERM
    assert.ok(logs.some((l) => l.includes(`pid ${process.pid} did not prove its identity`)));
    assert.equal(server.procs.has(process.pid), false);
  });

  test('a forging client (its own valid handshake, another process\'s tokens) is refused and closed; the victim sees nothing', async () => {
    const { p, line } = await startHolder('victim');
    try {
      const m = /READY ioas=(\d+) fd=(\d+) pid=(\d+)/.exec(line);
      assert.ok(m, line);
      const vpid = Number(m[3]);
      const ctx = [...server.ctxs.values()].find((e) => e.conn.pid === vpid);
      const ev = [...server.events.values()].find((b) => b.pid === vpid && b.file);
      assert.ok(ctx && ev);
      const before = logs.length;
      const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
        // no shim: a raw socket client speaking the protocol itself
        const f = spawn(client, ['forge', String(ctx.token), String(ev.token), m[3]!, m[2]!],
          { env: { PATH: process.env.PATH, IOMMUFD_EMU_SOCKET: server.socketPath } });
        let out = '';
        f.stdout.on('data', (d) => (out += d));
        f.on('exit', (code) => resolve({ code, out }));
      });
      assert.equal(r.code, 0, r.out);
      const refused = r.out.split('\n').filter((l) => l.startsWith('REFUSED'));
      assert.equal(refused.length, 13, r.out);
      assert.match(r.out, /LOOKUP-own-socket none/);
      const mine = logs.slice(before);
      assert.ok(mine.filter((l) => /refused: .*(does not hold|session key|is not socket|did not prepare)/.test(l)).length >= 13, mine.join('\n'));
      // the victim's context, IOAS and fault queue are untouched
      const done = new Promise<string>((resolve) => {
        let out = '';
        p.stdout!.on('data', (d) => {
          out += d;
          if (out.includes('victim')) resolve(out);
        });
      });
      p.stdin!.write('go\n');
      assert.match(await done, /OK victim/);
    } finally {
      p.kill('SIGKILL');
    }
  });

  test('random frames from the description after a valid handshake (real tokens, fds and buffers among them): answered or closed, never an emulator bug', async () => {
    const requests = [...server.emu.table.values()].map((o) => o.request >>> 0);
    const before = server.bugs;
    const baseline = server.liveContexts;
    const pick = <T>(xs: readonly T[]): fc.Arbitrary<T> => fc.constantFrom(...xs);
    const frameArb = (real: { token: bigint; fd: number; buf: bigint; session: bigint; pid: number }) =>
      fc.tuple(pick(Object.values(W.REQ) as W.WireRequest[]), fc.uint8Array({ maxLength: 64 }), fc.nat(20),
        fc.array(fc.tuple(fc.nat(3), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })), { minLength: 24, maxLength: 24 }))
        .map(([def, tail, corrupt, picks]) => {
          const v: Record<string, number | bigint> = {};
          def.fields.forEach((f, i) => {
            if (f.name === 'len' || f.name === 'type' || f.name === def.tail) return;
            const [which, rnd] = picks[i % picks.length]!;
            const n = f.name;
            let x: bigint;
            if (/token|handle|holder|forget/.test(n)) x = [real.token, 0n, rnd, real.token][which]!;
            else if (/fd$/.test(n)) x = [BigInt(real.fd), -1n, rnd % 12n, BigInt(real.fd)][which]!;
            else if (/^(arg|buf|addr|va)$/.test(n)) x = [real.buf, 0n, rnd, real.buf + (rnd % 4096n)][which]!;
            else if (n === 'request') x = which < 3 ? BigInt(requests[Number(rnd % BigInt(requests.length))]!) : rnd;
            else if (n === 'pid') x = which < 2 ? BigInt(real.pid) : rnd;
            else if (n === 'session') x = which < 2 ? real.session : rnd;
            else x = which === 0 ? 0n : which === 1 ? rnd % 64n : rnd;
            const bits = f.size * 8;
            v[n] = f.type === 'u64' || f.type === 's64' ? BigInt.asUintN(64, x)
              : f.type === 'u32' ? Number(BigInt.asUintN(32, x)) : f.type === 's32' ? Number(BigInt.asIntN(32, x)) : 0;
            void bits;
          });
          const b = W.encode(def, v as never, def.tail ? tail.subarray(0, Math.min(tail.length, def.tailMax)) : undefined);
          if (corrupt === 0) b.writeUInt32LE(b.length + 4, 0); // announces more than it sends
          if (corrupt === 1) return b.subarray(0, Math.max(8, b.length - 3));
          return b;
        });
    let runs = 0;
    await fc.assert(fc.asyncProperty(fc.integer({ min: 1, max: 0x7fffffff }), async (seed) => {
      const p = spawn(client, ['rawframes'], { env: { PATH: process.env.PATH, IOMMUFD_EMU_SOCKET: server.socketPath } });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      const exited = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
      await until(() => /READY .*\n/.test(out), 5000);
      const m = /READY token=(\d+) fd=(\d+) buf=(\d+) session=(\d+)/.exec(out)!;
      const real = { token: BigInt(m[1]!), fd: Number(m[2]), buf: BigInt(m[3]!), session: BigInt(m[4]!), pid: p.pid! };
      const frames = fc.sample(frameArb(real), { numRuns: 10, seed });
      for (const f of frames) {
        const n = Buffer.alloc(4);
        n.writeUInt32LE(f.length);
        p.stdin.write(Buffer.concat([n, f]));
      }
      p.stdin.end();
      assert.equal(await exited, 0, out);
      assert.equal(out.split('\n').filter((l) => /^(R \d|CLOSED)/.test(l)).length, frames.length, out);
      runs++;
    }), { numRuns: 20, seed: 0x1588 });
    assert.equal(runs, 20);
    assert.equal(server.bugs, before, logs.filter((l) => /emulator bug/.test(l)).join('\n'));
    await until(() => server.liveContexts === baseline);
    const r = await runClient('basic');
    assert.equal(r.code, 0, r.out);
  });

  test('a killed client has its context torn down', async () => {
    const { p } = await startHolder();
    assert.equal(server.liveContexts, 1);
    p.kill('SIGKILL');
    await until(() => server.liveContexts === 0);
    assert.equal(server.procs.size, 0);
  });

  test('a client killed while its threads are in ioctls is torn down; the server keeps serving', async () => {
    const { p } = await startHolder('spin');
    await new Promise((r) => setTimeout(r, 100));
    p.kill('SIGKILL');
    await until(() => server.liveContexts === 0 && server.procs.size === 0);
    const r = await runClient('basic');
    assert.equal(r.code, 0, r.out);
  });

  test('round trip of a minimal ioctl stays well under 1 ms', async () => {
    const r = await runClient('latency');
    assert.equal(r.code, 0, r.out + r.err);
    const us = Number(/latency ([\d.]+) us/.exec(r.out)?.[1]);
    assert.ok(us < 1000, `${us} us per ioctl`);
  });

  test('the struct inline in the IOCTL frame: page-straddling, PROT_NONE, read-only, NULL and shared structs behave as copy_{from,to}_user', async () => {
    const r = await runClient('structmem');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK structmem/);
  });

  test('fork shares the context; dup keeps it alive; child memory writes are seen', async () => {
    const r = await runClient('fork');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK fork ids=1,2,3/);
    await until(() => server.liveContexts === 0);
  });

  test('an iommufd inherited across exec keeps its context', async () => {
    const r = await runClient('exec');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK exec/);
    await until(() => server.liveContexts === 0);
  });

  test('an iommufd and a fault fd received over SCM_RIGHTS are adopted', async () => {
    const r = await runClient('scm');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK scm/);
  });

  test('a signal handler closing and reopening an emulated fd while its thread is in ioctls does not deadlock', async () => {
    const r = await runClient('sigclose');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK sigclose calls=\d+ signals=[1-9]/);
  });

  test('concurrent threads on one fd', async () => {
    const r = await runClient('threads');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK threads/);
  });

  test('fault queue fd is a real fd: poll, read, ESPIPE, EBUSY while open, synchronous close', async () => {
    const r = await runClient('event');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK event/);
  });

  test('vEVENTQ fd: poll readable after an event, not after reading it; close then DESTROY', async () => {
    const r = await runClient('vevent');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK vevent/);
  });

  test('mmap of the iommufd maps a driver region and holds its owner until munmap; the mm\'s checks (length 0, offset, type) come before the file\'s', async () => {
    const r = await runClient('mmap');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK mmap/);
  });

  test('an iommufd mapping holds one reference per VMA piece: partial munmap, mprotect split, mremap, MAP_FIXED, fork, exit, exec', async () => {
    const fds = () => fs.readdirSync('/proc/self/fd').length;
    const before = fds();
    const r = await runClient('mmappieces');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK mmappieces/);
    await until(() => server.liveContexts === 0);
    // the server keeps no memfd of a mapping that is gone
    await until(() => fds() <= before);
  });

  test('an emulator bug on any path (open, ioctl, file op, mmap) is logged loudly and answered EIO; the server keeps serving', async () => {
    const emu = new Emulator({ profile: 'mainline' });
    const bugLogs: string[] = [];
    const srv = new IommufdServer({ socketPath: path.join(dir, 'sock-bugs'), emulator: emu, log: (m) => bugLogs.push(m) });
    await srv.listen();
    const p = spawn(client, ['bugpaths'], { env: shimEnv(shim, srv.socketPath) });
    let out = '';
    const seen = (what: string) => until(() => out.includes(what), 5000);
    p.stdout.on('data', (d) => (out += d));
    const boom = (): never => {
      throw new TypeError('injected');
    };
    try {
      // open: the context cannot be made
      const open = emu.open.bind(emu);
      await seen('STEP open');
      emu.open = boom;
      p.stdin.write('\n');
      await seen('STEP ioctl');
      emu.open = open;
      // ioctl: a handler throws
      const destroy = emu.handlers.get('DESTROY')!;
      emu.handlers.set('DESTROY', boom);
      p.stdin.write('\n');
      await seen('STEP read');
      emu.handlers.set('DESTROY', destroy);
      // file op: the fault queue's read throws
      const file = [...srv.events.values()].find((b) => b.file)!.file!;
      const read = file.read;
      file.read = boom;
      p.stdin.write('\n');
      await seen('STEP mmap');
      file.read = read;
      // mmap: reading the region's pages throws
      const ctx = [...srv.ctxs.values()][0]!.ctx;
      const regions = ctx.ext.get('mmap') as { pages: { read: unknown }[] }[];
      const page = regions[0]!.pages[0]!;
      const pread = page.read;
      page.read = boom;
      p.stdin.write('\n');
      await seen('STEP done');
      page.read = pread;
      p.stdin.write('\n');
      await seen('OK bugpaths');
      for (const step of ['open', 'ioctl', 'read', 'mmap']) assert.match(out, new RegExp(`${step} = EIO`), out);
      const bugs = bugLogs.filter((l) => /emulator bug: TypeError: injected/.test(l));
      assert.equal(bugs.length, 4, bugLogs.join('\n'));
      assert.equal(srv.bugs, 4);
      assert.match(bugs.join('\n'), /open from pid[^]*ioctl 0x3b80 from pid[^]*file op on[^]*mmap from pid/);
    } finally {
      p.kill('SIGKILL');
      await srv.close();
    }
  });

  test('capabilities are the caller\'s real ones unless the server grants more', async () => {
    const real = (fs.readFileSync('/proc/self/status', 'utf8').match(/^CapEff:\s*([0-9a-f]+)/m) ?? [])[1];
    const hasSysResource = real !== undefined && ((BigInt('0x' + real) >> 24n) & 1n) === 1n;
    const r = await runClient('rlimit');
    assert.match(r.out, hasSysResource ? /rlimit_set=0/ : /rlimit_set=EPERM/);
    const granted = new IommufdServer({
      socketPath: path.join(dir, 'sock2'), emulator: new Emulator({ profile: 'mainline' }),
      grantCaps: ['sys_resource'], log: (m) => logs.push(m),
    });
    await granted.listen();
    try {
      const r2 = await new Promise<string>((resolve) => {
        const p = spawn(client, ['rlimit'], { env: shimEnv(shim, granted.socketPath) });
        let out = '';
        p.stdout.on('data', (d) => (out += d));
        p.on('exit', () => resolve(out));
      });
      assert.match(r2, /rlimit_set=0/);
    } finally {
      await granted.close();
    }
  });

  test('dup2/dup3/F_DUPFD_CLOEXEC share the context; close_range releases it before returning', async () => {
    const r = await runClient('dups');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK dups/);
  });

  test('fail-nth is per thread (/proc/thread-self/fail-nth)', async () => {
    const r = await runClient('failnth-threads');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK failnth-threads/);
  });

  test('opendir("/sys/kernel/debug/") shows a private prepared fault-injection directory', async () => {
    const r = await runClient('debugfs');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK debugfs/);
  });

  test('bad buffers and edge cases on every emulated file answer as the kernel does (EFAULT, never a signal)', async () => {
    const r = await runClient('fileedges');
    assert.equal(r.code, 0, r.out + r.err);
    const lines = r.out.trim().split('\n');
    for (const label of ['self', 'thread-self', 'self-task', 'pid', 'pid-task']) {
      const got = lines.filter((l) => l.startsWith(`${label} `)).map((l) => l.slice(label.length + 1));
      assert.deepEqual(got, FAILNTH_GOLDEN, `/proc/.../fail-nth as ${label}`);
    }
    assert.deepEqual(lines.filter((l) => l.startsWith('iommu ')).map((l) => l.slice(6)), IOMMU_FILE_GOLDEN);
    assert.deepEqual(lines.filter((l) => l.startsWith('path ')).map((l) => l.slice(5)), PATH_GOLDEN);
    assert.match(r.out, /OK fileedges/);
  });

  test('over-long structs: E2BIG if a non-zero tail byte comes before an unreadable one, else EFAULT, as the kernel (several ioctls)', async () => {
    const r = await runClient('zerotail');
    assert.equal(r.code, 0, r.out + r.err);
    assert.deepEqual(r.out.trim().split('\n').filter((l) => !l.startsWith('OK')), ZEROTAIL_GOLDEN);
  });

  test('fail-nth file arms the next emulated call of the thread', async () => {
    const r = await runClient('failnth');
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /OK failnth/);
  });
});
