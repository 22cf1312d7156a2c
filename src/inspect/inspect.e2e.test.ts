// End to end: the bundled C demo (examples/demo.c, the vIOMMU flow) runs
// through `iommufd-emu run --inspect`, the page is opened in headless Chromium
// (Debian's chromium, driven by playwright-core), and what a person would see
// is checked: the graph at the demo's vEVENT step shows the IOAS, the HWPTs,
// the vIOMMU and the vDEVICE with their edges. Screenshots go to the test
// output directory (TEST_OUTPUT_DIR, default test-output/inspect/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { buildDemo } from '../cli/demo.js';
import { findCompiler, PACKAGE_ROOT, procMemAccessible } from '../server/native.js';

const CHROMIUM = '/usr/bin/chromium';
const CLI = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
const OUT = process.env.TEST_OUTPUT_DIR ? path.resolve(process.env.TEST_OUTPUT_DIR, 'inspect') : path.join(PACKAGE_ROOT, 'test-output', 'inspect');
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Install Debian's chromium when it is missing; the reason it cannot be had, or null. */
function ensureChromium(): string | null {
  if (fs.existsSync(CHROMIUM)) return null;
  if (process.getuid?.() !== 0) return `${CHROMIUM} is missing and installing it (apt-get install chromium) needs root`;
  if (!fs.existsSync('/usr/bin/apt-get')) return `${CHROMIUM} is missing and there is no apt-get to install it`;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const upd = spawnSync('apt-get', ['update'], { encoding: 'utf8', env, timeout: 600_000 });
  const inst = spawnSync('apt-get', ['install', '-y', 'chromium'], { encoding: 'utf8', env, timeout: 900_000 });
  if (inst.status !== 0 || !fs.existsSync(CHROMIUM)) {
    return `apt-get install chromium failed: ${(inst.stderr || upd.stderr || inst.error?.message || '').trim().split('\n').pop()}`;
  }
  return null;
}

const skip = !findCompiler() ? 'no C compiler (cc): the shim and the demo cannot be built'
  : !procMemAccessible() ? 'cannot open a child\'s /proc/<pid>/mem here (ptrace restricted)'
  : ensureChromium() ?? false;

async function browser(): Promise<BrowserContext> {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-chromium-'));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1600, height: 1000 },
  });
}

/** Start the CLI and wait for the URL it prints (`inspector at URL` / `replaying FILE at URL`). */
function startCli(args: string[]): Promise<{ proc: ChildProcess; url: string; stderr: () => string }> {
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stdout!.resume();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no inspector URL after 60 s:\n${err}`)), 60_000);
    proc.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = / at (http:\/\/127\.0\.0\.1:\d+\/)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, url: m[1]!, stderr: () => err });
      }
    });
    proc.on('exit', (code) => reject(new Error(`CLI exited (${code}) before serving:\n${err}`)));
  });
}

async function stop(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null) return proc.exitCode;
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  proc.kill('SIGINT');
  return exited;
}

/** The node of `kind` in the drawn graph (the demo has one of each at its vEVENT step). */
async function nodeId(page: Page, kind: string): Promise<string> {
  const ids = await page.locator(`svg.graph g.node[data-kind="${kind}"]`).evaluateAll((els) => els.map((e) => e.getAttribute('data-id')!));
  assert.equal(ids.length, 1, `one ${kind} node, got ${ids.length}`);
  return ids[0]!;
}

async function assertEdge(page: Page, kind: string, from: string, to: string): Promise<void> {
  const n = await page.locator(`svg.graph g.edge[data-kind="${kind}"][data-from="${from}"][data-to="${to}"]`).count();
  assert.equal(n, 1, `edge ${from} -${kind}-> ${to}`);
}

/** The demo at its fullest point: every vIOMMU object and the kernel's edges between them. */
async function checkViommuGraph(page: Page): Promise<void> {
  // Drawn once laid out: the vEVENTQ is there and the auto-domain is gone (the device moved to the nested HWPT).
  await page.waitForFunction(() => !!document.querySelector('svg.graph g.node[data-kind="VEVENTQ"]') &&
    document.querySelectorAll('svg.graph g.node[data-kind="HWPT_PAGING"]').length === 1, undefined, { timeout: 30_000 });
  const ioas = await nodeId(page, 'IOAS');
  const parent = await nodeId(page, 'HWPT_PAGING');
  const nested = await nodeId(page, 'HWPT_NESTED');
  const viommu = await nodeId(page, 'VIOMMU');
  const vdev = await nodeId(page, 'VDEVICE');
  const dev = await nodeId(page, 'DEVICE');
  await assertEdge(page, 'ioas', parent, ioas);
  await assertEdge(page, 'parent', viommu, parent);
  await assertEdge(page, 'viommu', nested, viommu);
  await assertEdge(page, 'viommu', vdev, viommu);
  await assertEdge(page, 'device', vdev, dev);
  await assertEdge(page, 'attach', dev, nested);
  // The vIOMMU's badge counts its users: the table, the vDEVICE, the nested HWPT, the vEVENTQ.
  assert.equal((await page.locator(`svg.graph g.node[data-id="${viommu}"] .badge text`).textContent())?.trim(), '4');
  // Clicking it shows who holds it and what DESTROY would answer.
  await page.locator(`svg.graph g.node[data-id="${viommu}"]`).click();
  const details = page.locator(`.obj-details[data-id="${viommu}"]`);
  await details.waitFor();
  const text = await details.textContent();
  assert.match(text!, /EBUSY/);
  assert.match(text!, new RegExp(`VDEVICE ${vdev}`));
}

test('run --inspect: the page follows the vIOMMU demo and shows its object graph', { skip, timeout: 240_000 }, async () => {
  const exe = await buildDemo('mainline');
  fs.mkdirSync(OUT, { recursive: true });
  const cli = await startCli(['run', '--inspect=0', '--', exe]);
  const ctx = await browser();
  try {
    const page = await ctx.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(cli.url);
    // The program starts once the page is open; wait for it to finish.
    await page.locator('[data-state="exited"]').waitFor({ timeout: 60_000 });
    assert.match(cli.stderr(), /exited with status 0/);
    // Step to the vEVENT the demo triggers: every object of the vIOMMU flow is alive.
    await page.locator('.stream .row', { hasText: 'IOMMU_TEST_CMD {op=TRIGGER_VEVENT' }).click();
    await checkViommuGraph(page);
    await page.screenshot({ path: path.join(OUT, 'viommu-demo.png'), fullPage: true });
    // The stream decodes each ioctl from the uAPI table.
    await page.locator('.stream .row', { hasText: 'IOMMU_VIOMMU_ALLOC {flags=0 type=SELFTEST' }).waitFor();
    // At the end everything was torn down.
    await page.keyboard.press('End');
    await page.locator('.left .empty', { hasText: 'no context open at this step' }).waitFor();
    assert.deepEqual(errors, []);
  } finally {
    await ctx.close();
    await stop(cli.proc);
  }
});

test('--inspect-record then `inspect FILE`: the page replays the run, opening at its fullest point', { skip, timeout: 240_000 }, async () => {
  const exe = await buildDemo('mainline');
  fs.mkdirSync(OUT, { recursive: true });
  const file = path.join(OUT, 'viommu-demo.jsonl');
  const rec = spawnSync(process.execPath, [CLI, 'run', '--inspect-record', file, '--', exe], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(rec.status, 0, rec.stderr);
  const cli = await startCli(['inspect', file, '--port', '0']);
  const ctx = await browser();
  try {
    const page = await ctx.newPage();
    await page.goto(cli.url);
    await page.locator('.status', { hasText: 'replaying a recording' }).waitFor({ timeout: 30_000 });
    // The fullest point: the nested HWPT allocated, the device not yet moved off its auto-domain.
    await page.locator('.stream .row.current', { hasText: 'IOMMU_HWPT_ALLOC {flags=0' }).waitFor();
    await page.waitForFunction(() => document.querySelectorAll('svg.graph g.node[data-kind="HWPT_PAGING"]').length === 2,
      undefined, { timeout: 30_000 });
    await page.locator('.stream .row', { hasText: 'IOMMU_TEST_CMD {op=TRIGGER_VEVENT' }).click();
    await checkViommuGraph(page);
    await page.screenshot({ path: path.join(OUT, 'viommu-demo-replay.png'), fullPage: true });
  } finally {
    await ctx.close();
    await stop(cli.proc);
  }
});
