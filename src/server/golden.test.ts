// Golden traces: native/golden/golden.c (seeded random calls on /dev/iommu, every
// request and selftest op of a profile, struct-aware from the generated uAPI tables)
// was run on a real kernel in the oracle VM and its output recorded per seed in
// .ci/golden/<profile>/ (scripts/record-golden.sh). Here the same program, built
// against the same tables, runs through the shim under that profile: every line
// must be identical. A failure names the seed and the first call that differs.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Emulator } from '../core/emulator.js';
import { generateTables, TABLES_HEADER } from '../uapi/ctables.js';
import { getProfile } from '../uapi/profiles.js';
import { buildProgram, cacheDir, ensureShim, findCompiler, PACKAGE_ROOT, procMemAccessible } from './native.js';
import { shimEnv } from './run.js';
import { IommufdServer, loadHandlers } from './server.js';

const GOLDEN = path.join(PACKAGE_ROOT, '.ci', 'golden');
const SOURCE = path.join(PACKAGE_ROOT, 'native', 'golden', 'golden.c');

interface Manifest { kernel: string; profile: string; calls: number; seeds: string[]; program: string }

function readManifest(dir: string): Manifest | null {
  const file = path.join(dir, 'MANIFEST');
  if (!fs.existsSync(file)) return null;
  const kv = new Map<string, string>();
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = /^(\S+) (.*)$/.exec(line);
    if (m) kv.set(m[1]!, m[2]!);
  }
  return {
    kernel: kv.get('kernel') ?? '?', profile: kv.get('profile') ?? '', calls: Number(kv.get('calls')),
    seeds: (kv.get('seeds') ?? '').split(/\s+/).filter(Boolean), program: kv.get('program') ?? '',
  };
}

/** The program's identity: golden.c and the tables it was built against (as record-golden.sh computes it). */
export function programDigest(tables: string): string {
  return createHash('sha256').update(fs.readFileSync(SOURCE)).update(tables).digest('hex').slice(0, 16);
}

/** Split the -m output into seed -> lines. */
export function splitSeeds(out: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  let cur: string[] | null = null;
  for (const line of out.split('\n')) {
    const s = /^== seed (\S+)$/.exec(line);
    if (s) {
      cur = [];
      m.set(String(Number(s[1])), cur);
    } else if (cur && line !== '') {
      cur.push(line);
    }
  }
  return m;
}

/** First difference between the kernel's lines and ours, described; null when identical. */
export function firstDifference(want: string[], got: string[]): string | null {
  const n = Math.max(want.length, got.length);
  for (let i = 0; i < n; i++) {
    if (want[i] !== got[i]) {
      return `line ${i + 1} (call ${/^(\d+) /.exec(want[i] ?? got[i] ?? '')?.[1] ?? '?'}):\n  kernel: ${want[i] ?? '(end)'}\n  shim:   ${got[i] ?? '(end)'}`;
    }
  }
  return null;
}

const cc = findCompiler();
const skipWhy = !cc ? 'no C compiler (cc)' : !procMemAccessible() ? 'cannot reach a child\'s /proc/<pid>/mem here' : false;

describe('firstDifference', () => {
  test('names the first differing line and its call', () => {
    assert.equal(firstDifference(['a', '7 X rc=0 e=0'], ['a', '7 X rc=-1 e=22']),
      'line 2 (call 7):\n  kernel: 7 X rc=0 e=0\n  shim:   7 X rc=-1 e=22');
    assert.equal(firstDifference(['a'], ['a']), null);
    assert.match(firstDifference(['a', '1 Y rc=0 e=0'], ['a']) ?? '', /shim: {3}\(end\)/);
  });
});

for (const profileName of fs.existsSync(GOLDEN) ? fs.readdirSync(GOLDEN).sort() : []) {
  const dir = path.join(GOLDEN, profileName);
  const manifest = fs.statSync(dir).isDirectory() ? readManifest(dir) : null;
  if (!manifest) continue;
  describe(`golden traces of ${manifest.kernel} replay identically through the shim under ${manifest.profile}`, { skip: skipWhy }, () => {
    let server: IommufdServer;
    let tmp: string;
    let prog: string;
    let shim: string;
    let tables: string;
    before(async () => {
      assert.ok(await loadHandlers());
      shim = ensureShim();
      tables = generateTables(getProfile(manifest.profile));
      const inc = path.join(cacheDir(), 'golden', manifest.profile);
      fs.mkdirSync(inc, { recursive: true });
      const hdr = path.join(inc, TABLES_HEADER);
      if (!fs.existsSync(hdr) || fs.readFileSync(hdr, 'utf8') !== tables) fs.writeFileSync(hdr, tables);
      prog = buildProgram([SOURCE], { includeDirs: [inc], name: `golden-${manifest.profile}` });
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-golden-'));
      server = new IommufdServer({
        socketPath: path.join(tmp, 'sock'), emulator: new Emulator({ profile: getProfile(manifest.profile).name }), log: () => {},
      });
      await server.listen();
    });
    after(async () => {
      await server?.close();
      if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    });

    test('the recordings were made by this program and these tables', () => {
      assert.equal(programDigest(tables), manifest.program,
        `native/golden/golden.c or the ${manifest.profile} uAPI tables changed since .ci/golden/${profileName} was recorded: ` +
        `re-record with scripts/record-golden.sh --kver ${manifest.profile} (README, "Golden traces")`);
    });

    test(`${manifest.seeds.length} seeds x ${manifest.calls} calls, line for line`, async () => {
      const r = await new Promise<{ out: string; code: number | null }>((resolve) => {
        const p = spawn(prog, ['-m', String(manifest.calls), ...manifest.seeds], {
          env: shimEnv(shim, server.socketPath, path.join(tmp, 'debugfs')), stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        p.stdout!.on('data', (d: Buffer) => (out += d));
        p.stderr!.on('data', (d: Buffer) => (out += d));
        p.on('exit', (code: number | null) => resolve({ out, code }));
      });
      assert.equal(r.code, 0, r.out.slice(-2000));
      const got = splitSeeds(r.out);
      const failures: string[] = [];
      let lines = 0;
      for (const seed of manifest.seeds) {
        const file = path.join(dir, `seed-${seed.padStart(3, '0')}.txt.gz`);
        const want = gunzipSync(fs.readFileSync(file)).toString('utf8').trimEnd().split('\n');
        lines += want.length;
        const d = firstDifference(want, got.get(String(Number(seed))) ?? []);
        if (d) failures.push(`seed ${seed}, ${d}`);
      }
      assert.deepEqual(failures, [], `${failures.length} of ${manifest.seeds.length} seeds differ from ${manifest.kernel} ` +
        `(${lines} recorded lines; rerun one with: golden SEED ${manifest.calls} -v for the inputs)`);
    });
  });
}
