// Page lookups of ProcMemory (the server's view of a client's memory) answer the same
// whether the VMAs come from PROCMAP_QUERY (the server addon) or from the text of
// /proc/<pid>/maps (the fallback): this process is the "client" here.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { ClientProcess } from './credentials.js';
import { findCompiler, loadServerAddon, procMemAccessible } from './native.js';
import { PageRegistry, ProcMemory } from './procmem.js';
import { isErrno } from '../uapi/errno.js';

const addon = findCompiler() ? loadServerAddon() : 'no C compiler';
const skip = !procMemAccessible() ? 'cannot open /proc/<pid>/mem here'
  : typeof addon === 'string' ? `the server addon cannot be built here: ${addon}` : false;

interface Line { s: number; e: number; perms: string; path: string }
const PAGE = 4096;

function ownMaps(): Line[] {
  return fs.readFileSync('/proc/self/maps', 'utf8').trim().split('\n').map((l) => {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(l)!;
    return { s: parseInt(m[1]!, 16), e: parseInt(m[2]!, 16), perms: m[3]!, path: m[4] ?? '' };
  });
}

/** What getPages answers: the number of pages, or the errno. */
function lookup(mem: ProcMemory, addr: number, npages: number, write: boolean): string {
  try {
    return `${mem.getPages(BigInt(addr), npages, write).length} pages`;
  } catch (e) {
    if (!isErrno(e)) throw e;
    return e.code;
  }
}

describe('ProcMemory page lookups: PROCMAP_QUERY and the maps text agree', { skip }, () => {
  test('readable, writable, read-only, holes, ranges across VMAs and beyond every address', () => {
    // File mappings (the executable's and libraries' sections): they stay put while the test
    // runs, where anonymous ones may come and go with the JS heap.
    const maps = ownMaps().filter((v) => v.path.startsWith('/'));
    const rw = maps.find((v) => v.perms.startsWith('rw') && v.e - v.s >= 4 * PAGE)!;
    const ro = maps.find((v) => v.perms.startsWith('r-'))!;
    // Two VMAs touching each other, and one with a hole after it.
    const touching = maps.findIndex((v, i) => i + 1 < maps.length && maps[i + 1]!.s === v.e && maps[i + 1]!.perms[0] === 'r' && v.perms[0] === 'r');
    // A hole of a GiB or more above a file mapping: nothing fills it while the test runs (the
    // heap grows up from its own end, new mappings come in at the top of a hole).
    const all = ownMaps();
    const holed = all.findIndex((v, i) => i + 1 < all.length && all[i + 1]!.s - v.e >= 2 ** 30 && v.perms[0] === 'r'
      && v.path.startsWith('/'));
    assert.ok(rw && ro && touching >= 0 && holed >= 0, 'this process has the VMAs the cases need');
    const cases: [number, number, boolean][] = [
      [rw.s, 4, true], [rw.s, 4, false], [rw.e - PAGE, 1, true],
      [ro.s, 1, false], [ro.s, 1, true],
      [maps[touching]!.e - PAGE, 2, false],
      [all[holed]!.e - PAGE, 2, false], [all[holed]!.e, 1, false],
      [0, 1, false], [2 ** 52, 1, false], [2 ** 53 - PAGE, 2, false],
    ];
    const answers = (query: boolean): string[] => {
      const registry = new PageRegistry();
      if (query) registry.vmaQuery = (addon as Exclude<typeof addon, string>).vmas;
      const mem = new ProcMemory(new ClientProcess(process.pid, process.getuid!(), 0, 0n), registry);
      try {
        return cases.map(([a, n, w]) => lookup(mem, a, n, w));
      } finally {
        mem.exit();
      }
    };
    const byQuery = answers(true);
    assert.deepEqual(byQuery, answers(false));
    assert.deepEqual(byQuery.slice(0, 4), ['4 pages', '4 pages', '1 pages', '1 pages']);
    assert.deepEqual(byQuery.slice(4), ['EFAULT', '2 pages', 'EFAULT', 'EFAULT', 'EFAULT', 'EFAULT', 'EFAULT']);
  });
});
