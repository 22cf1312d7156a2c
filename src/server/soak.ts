// `npm run soak`: one server, many shimmed C clients (native/testclient.c
// `soak` mode: threads, forks, mappings, event fds, garbage ioctls, fail-nth)
// started, SIGKILLed and restarted for a while. Reports calls, clients, kills,
// crashes, the server's RSS (warm baseline, peak, end) and every emulator-bug
// log line. Exit status 1 if there was a bug log, a client crash, or the end
// RSS is more than 10% above the warm baseline (or server fds were left open).
//
//   node --expose-gc dist/server/soak.js [--seconds 180] [--clients 12] [--seed N]
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { buildTestClient, ensureShim } from './native.js';
import { shimEnv } from './run.js';
import { IommufdServer, loadHandlers } from './server.js';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

const SECONDS = arg('seconds', 180);
const CLIENTS = arg('clients', 12);
let seed = arg('seed', 0x5eed) >>> 0;
function rand(n: number): number {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return (seed >>> 8) % n;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (b: number) => (b / 2 ** 20).toFixed(1);
const openFds = () => fs.readdirSync('/proc/self/fd').length;

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) {
    g();
    g();
  }
}

async function main(): Promise<number> {
  await loadHandlers();
  const shim = ensureShim();
  const client = buildTestClient();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-soak-'));
  const bugLines: string[] = [];
  const otherLines: { pid: number; line: string }[] = [];
  let logLines = 0;
  const server = new IommufdServer({
    socketPath: path.join(dir, 'sock'),
    emulator: new Emulator({ profile: 'mainline' }),
    log: (m) => {
      logLines++;
      if (/emulator bug/.test(m)) bugLines.push(m);
      else if (otherLines.length < 20) otherLines.push({ pid: Number(/\bpid (\d+)/.exec(m)?.[1] ?? 0), line: m.split('\n')[0]! });
    },
  });
  await server.listen();
  const env = shimEnv(shim, server.socketPath, path.join(dir, 'debugfs'));

  const live = new Set<ChildProcess>();
  let started = 0;
  let finished = 0;
  let kills = 0;
  let crashes = 0;
  let clientCalls = 0;
  const crashNotes: string[] = [];
  const killed = new WeakSet<ChildProcess>();
  const killedPids = new Set<number>();
  function startClient(): void {
    const ms = 1000 + rand(5000);
    const p = spawn(client, ['soak', String(rand(0x7fffffff)), String(ms)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    started++;
    live.add(p);
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.stderr!.on('data', (d) => (out += d));
    p.on('exit', (code, signal) => {
      live.delete(p);
      finished++;
      const m = /OK soak calls=(\d+)/.exec(out);
      if (m) clientCalls += Number(m[1]);
      if (!killed.has(p) && (signal || code !== 0)) {
        crashes++;
        if (crashNotes.length < 5) crashNotes.push(`client ${p.pid}: ${signal ?? `exit ${code}`}: ${out.slice(-300)}`);
      }
    });
  }

  const t0 = Date.now();
  const warmAt = t0 + Math.min(30_000, SECONDS * 200);
  let warm = 0;
  let peak = 0;
  const start = process.memoryUsage().rss;
  const fdStart = openFds();
  let fdPeak = fdStart;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
    fdPeak = Math.max(fdPeak, openFds());
  }, 250);
  process.stdout.write(`soak: ${SECONDS} s, ${CLIENTS} clients at a time, server RSS at start ${mib(start)} MiB\n`);
  let lastReport = t0;
  while (Date.now() - t0 < SECONDS * 1000) {
    while (live.size < CLIENTS) startClient();
    await sleep(50 + rand(200));
    if (rand(4) === 0 && live.size) {
      const victims = [...live];
      const v = victims[rand(victims.length)]!;
      killed.add(v);
      killedPids.add(v.pid!);
      v.kill('SIGKILL');
      kills++;
    }
    if (!warm && Date.now() >= warmAt) {
      gc();
      warm = process.memoryUsage().rss;
      process.stdout.write(`soak: warm baseline RSS ${mib(warm)} MiB after ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    }
    if (Date.now() - lastReport > 30_000) {
      lastReport = Date.now();
      process.stdout.write(`soak: ${((lastReport - t0) / 1000).toFixed(0)} s: ${server.calls} calls, ${started} clients, ${kills} kills, `
        + `RSS ${mib(process.memoryUsage().rss)} MiB, ${openFds()} fds, ${bugLines.length} emulator-bug logs\n`);
    }
  }
  // Let the last clients finish (or kill them), then wait for every teardown.
  const deadline = Date.now() + 15_000;
  while (live.size && Date.now() < deadline) await sleep(100);
  for (const p of live) {
    killed.add(p);
    killedPids.add(p.pid!);
    p.kill('SIGKILL');
    kills++;
  }
  while (live.size) await sleep(50);
  const idle = Date.now() + 10_000;
  while ((server.liveContexts || server.procs.size) && Date.now() < idle) await sleep(50);
  await sleep(500);
  gc();
  await sleep(200);
  gc();
  clearInterval(sampler);
  const end = process.memoryUsage().rss;
  const fdEnd = openFds();
  const leftCtx = server.liveContexts;
  const leftProcs = server.procs.size;
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });

  const ratio = warm ? end / warm : 1;
  const lines = [
    `soak: ${((Date.now() - t0) / 1000).toFixed(0)} s, ${server.calls} calls served (${clientCalls} ops reported by clients that finished)`,
    `soak: ${started} clients started, ${kills} SIGKILLed, ${crashes} crashed, ${finished} exited`,
    `soak: server RSS start ${mib(start)} MiB, warm baseline ${mib(warm)} MiB, peak ${mib(peak)} MiB, end ${mib(end)} MiB `
      + `(${((ratio - 1) * 100).toFixed(1)}% vs warm)`,
    `soak: server fds start ${fdStart}, peak ${fdPeak}, end ${fdEnd}`,
    `soak: left behind: ${leftCtx} contexts, ${leftProcs} processes; ${logLines} log lines, ${bugLines.length} emulator-bug logs`,
  ];
  for (const l of lines) process.stdout.write(`${l}\n`);
  for (const o of otherLines) process.stdout.write(`log${killedPids.has(o.pid) ? ' (a SIGKILLed client)' : ''}: ${o.line}\n`);
  for (const b of bugLines) process.stdout.write(`EMULATOR BUG: ${b}\n`);
  for (const c of crashNotes) process.stdout.write(`CRASH: ${c}\n`);
  const ok = bugLines.length === 0 && crashes === 0 && ratio <= 1.1 && leftCtx === 0 && leftProcs === 0 && fdEnd <= fdStart + 2;
  process.stdout.write(`soak: ${ok ? 'PASS' : 'FAIL'}\n`);
  return ok ? 0 : 1;
}

main().then((code) => process.exit(code), (e: Error) => {
  process.stderr.write(`soak: ${e.stack ?? e}\n`);
  process.exit(2);
});
