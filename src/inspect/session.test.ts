// The inspector's session (steps, graphs, recording), its HTTP server, and the
// page's model and IOVA axis (the parts that need no browser).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { openIommufd } from '../api.js';
import { Emulator } from '../core/emulator.js';
import { viommuDemo } from '../core/trace_test_helpers.js';
import { TEST_OP } from '../uapi/enums.js';
import { isErrno } from '../uapi/errno.js';
import { compressAxis, sizeText, U64_END } from './axis.js';
import { serveInspector } from './http.js';
import { blockersOf, Model, stepTitle } from './model.js';
import type { Message, StepMessage } from './protocol.js';
import { InspectSession, Recording } from './session.js';

const parse = (lines: readonly string[]): Message[] => lines.map((l) => JSON.parse(l) as Message);
const stepsOf = (lines: readonly string[]): StepMessage[] => parse(lines).filter((m): m is StepMessage => m.type === 'step');

test('each ioctl is one step with its trace line, inner events and the graph after it (omitted when unchanged)', () => {
  const emu = new Emulator();
  const s = new InspectSession(emu, { argv: ['demo'] });
  const fd = openIommufd({ emu });
  const ids = viommuDemo(fd);
  assert.throws(() => fd.destroy(ids.viommu), (e) => isErrno(e, 'EBUSY'));
  s.close();
  const msgs = parse(s.messages());
  assert.equal(msgs[0]!.type, 'hello');
  const steps = stepsOf(s.messages());
  assert.deepEqual(steps.map((m) => m.step), steps.map((_, i) => i + 1));
  const alloc = steps.find((m) => m.ioctl?.name === 'IOMMU_VIOMMU_ALLOC')!;
  assert.match(alloc.ioctl!.line, /^IOMMU_VIOMMU_ALLOC \{flags=0 type=SELFTEST dev_id=\d+ hwpt_id=\d+ .*\} = 0 -> \{out_viommu_id=\d+\}$/);
  assert.ok(alloc.events.some((e) => e.t === 'obj' && e.op === 'finalize' && e.kind === 'VIOMMU'));
  assert.ok(alloc.events.some((e) => e.t === 'ref' && e.ref === 'parent'));
  assert.ok(alloc.graph, 'a new object: the graph is sent');
  const busy = steps.at(-1)!;
  assert.equal(busy.ioctl!.result, 'EBUSY');
  assert.equal(busy.graph, undefined, 'a failed DESTROY changes nothing: no graph');
  // The page's model resolves every step's graph and finds the blockers of the failed DESTROY.
  const model = new Model();
  for (const l of s.messages()) assert.ok(model.addLine(l));
  const last = model.steps.at(-1)!;
  assert.equal(last.graph.contexts[0]!.objects.length, 8);
  const b = blockersOf(last)!;
  assert.equal(b.target, ids.viommu);
  assert.deepEqual(b.holders.sort(), [ids.vdev, ids.nested, ids.veventq].sort());
});

test('events outside any call (an fd closed) become a step of their own', async () => {
  const emu = new Emulator();
  const s = new InspectSession(emu);
  const fd = openIommufd({ emu });
  const ids = viommuDemo(fd);
  fd.closeFd(ids.veventqFd);
  fd.destroy(ids.veventq);
  await new Promise((r) => setImmediate(r));
  s.close();
  const steps = stepsOf(s.messages());
  const outside = steps.at(-2)!;
  assert.equal(outside.head, null);
  assert.ok(outside.events.some((e) => e.t === 'fd' && e.op === 'close'));
  assert.ok(outside.events.some((e) => e.t === 'ref' && e.op === 'put' && e.ref === 'file'));
  assert.equal(steps.at(-1)!.ioctl!.name, 'IOMMU_DESTROY');
  const model = new Model();
  for (const l of s.messages()) model.addLine(l);
  assert.match(stepTitle(model.steps.at(-2)!), /^outside any call: fd closed: \[iommufd-viommu-event\]/);
});

test('a recording holds the whole stream and replays as the same steps', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-inspect-'));
  try {
    const file = path.join(dir, 'run.jsonl');
    const emu = new Emulator({ profile: '6.15' });
    const s = new InspectSession(emu, { record: file, argv: ['x'] });
    s.setStatus('running');
    viommuDemo(openIommufd({ emu }));
    s.setStatus('exited', { exitStatus: 0 });
    s.close();
    const rec = Recording.load(file);
    const live = s.messages();
    assert.equal(rec.messages().length, live.length);
    assert.equal((JSON.parse(rec.messages()[0]!) as Message & { mode: string }).mode, 'replay');
    assert.deepEqual(rec.messages().slice(1), live.slice(1));
    fs.writeFileSync(path.join(dir, 'bad.jsonl'), '{"type":"step"}\n');
    assert.throws(() => Recording.load(path.join(dir, 'bad.jsonl')), /not an inspector recording/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('past its memory limit a session drops its oldest steps but the first kept one carries a graph', () => {
  const emu = new Emulator();
  const s = new InspectSession(emu, { memoryLimit: 20_000 });
  const fd = openIommufd({ emu });
  const ids = viommuDemo(fd);
  for (let i = 0; i < 30; i++) fd.testCmd(TEST_OP.TRIGGER_VEVENT, 0, { dev_id: ids.idev });
  s.close();
  assert.ok(s.dropped > 0);
  const steps = stepsOf(s.messages());
  assert.ok(steps[0]!.graph, 'the oldest kept step has the graph the later ones build on');
  const model = new Model();
  for (const l of s.messages()) model.addLine(l);
  assert.equal(model.steps.at(-1)!.graph.contexts[0]!.objects.length, 8);
});

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, { headers }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode!, body, type: String(res.headers['content-type']) }));
    }).on('error', reject);
  });
}

test('the HTTP server serves the page from the package and the stream as server-sent events, on loopback only', async () => {
  const emu = new Emulator();
  const s = new InspectSession(emu);
  const srv = await serveInspector(s, 0);
  try {
    assert.match(srv.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const page = await get(srv.url);
    assert.equal(page.status, 200);
    assert.match(page.body, /<script type="module" src="app\.js">/);
    assert.equal((await get(`${srv.url}app.js`)).status, 200);
    assert.equal((await get(`${srv.url}..%2fhttp.js`)).status, 404);
    assert.equal((await get(srv.url, { host: 'evil.example:80' })).status, 421);
    // The stream: history first, then live steps.
    const seen: string[] = [];
    const req = http.get(`${srv.url}events`, (res) => {
      assert.equal(res.headers['content-type'], 'text/event-stream');
      res.on('data', (d: Buffer) => seen.push(d.toString()));
    });
    await srv.connected;
    openIommufd({ emu }).ioasAlloc();
    for (let i = 0; i < 50 && !seen.join('').includes('IOMMU_IOAS_ALLOC'); i++) await new Promise((r) => setTimeout(r, 20));
    req.destroy();
    const data = seen.join('').split('\n\n').filter(Boolean).map((b) => JSON.parse(b.replace(/^data: /, '')) as Message);
    assert.equal(data[0]!.type, 'hello');
    assert.ok(data.some((m) => m.type === 'step' && m.ioctl?.name === 'IOMMU_IOAS_ALLOC'));
  } finally {
    s.close();
    await srv.close();
  }
});

test('the IOVA axis gives areas the room, keeps order, and spans [0, 2^64)', () => {
  const areas = [{ start: 0x1000000n, last: 0x100ffffn }];
  const ranges = [{ start: 0n, last: 0xffffffn }, { start: 0x80000000n, last: U64_END - 1n }];
  const ax = compressAxis(areas, ranges, 1000);
  assert.equal(ax.x(0n), 0);
  assert.equal(ax.x(U64_END), 1000);
  const xs = [0n, 0x800000n, 0x1000000n, 0x1008000n, 0x1010000n, 0x80000000n, 1n << 63n].map((v) => ax.x(v));
  assert.deepEqual(xs, [...xs].sort((a, b) => a - b));
  const areaW = ax.x(0x1010000n) - ax.x(0x1000000n);
  const gap = ax.pieces.find((p) => p.gap)!;
  assert.ok(areaW > 2 * gap.w, `area ${areaW}px vs gap ${gap.w}px`);
  assert.deepEqual([sizeText(65536n), sizeText(3n << 20n), sizeText(1536n)], ['64 KiB', '3 MiB', '1.5 KiB']);
});
