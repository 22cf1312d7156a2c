// Trace bus cost (`npm run bench`): in-process IOAS_ALLOC+DESTROY with nobody
// subscribed, with one subscriber that only counts, and with the inspector's
// recorder; and, when IOMMUFD_BENCH_BASELINE names another build of the
// project (scripts/bench-baseline.sh builds one from a git ref without the
// bus), the same loop on that build, interleaved round by round in this
// process so the ratio is measured in one run (best round of each).
import { openIommufd } from '../api.js';
import type { Emulator } from '../core/emulator.js';

type Open = () => { ioasAlloc(): number; destroy(id: number): void; close(): void; ctx: { emu: Emulator } };

const N = 200_000;
const ROUNDS = 15;

function rateOf(open: Open, setup?: (emu: Emulator) => () => void, n = N): number {
  const fd = open();
  const undo = setup?.(fd.ctx.emu);
  for (let i = 0; i < 5_000; i++) fd.destroy(fd.ioasAlloc());
  const t0 = performance.now();
  for (let i = 0; i < n; i++) fd.destroy(fd.ioasAlloc());
  const ms = performance.now() - t0;
  undo?.();
  fd.close();
  return (n / ms) * 1000;
}

/** Best round: on a shared machine interference only ever slows a round down. */
function best(xs: number[]): number {
  return Math.max(...xs);
}

export interface BusBench {
  off: number;
  counting: number;
  recording: number | null;
  baseline: number | null;
  baselineError?: string;
}

export async function busBench(recorder?: (emu: Emulator) => () => void): Promise<BusBench> {
  const modes: [keyof BusBench, Open, ((emu: Emulator) => () => void) | undefined][] = [
    ['off', () => openIommufd(), undefined],
    ['counting', () => openIommufd(), (emu) => {
      let n = 0;
      return emu.bus.subscribe(() => { n++; });
    }],
  ];
  if (recorder) modes.push(['recording', () => openIommufd(), recorder]);
  let baselineError: string | undefined;
  const base = process.env.IOMMUFD_BENCH_BASELINE;
  if (base) {
    try {
      const mod = await import(`${base.replace(/\/$/, '')}/dist/api.js`) as { openIommufd: Open };
      modes.push(['baseline', () => mod.openIommufd(), undefined]);
    } catch (e) {
      baselineError = (e as Error).message.split('\n')[0];
    }
  }
  const rates = new Map<string, number[]>(modes.map(([k]) => [k, []]));
  // Unsubscribed and baseline first, alternating with a rotating start; the
  // subscribed modes after them, so their traced paths cannot reshape the JIT's
  // view of the unsubscribed loop before it is measured.
  const phases = [modes.filter(([k]) => k === 'off' || k === 'baseline'), modes.filter(([k]) => k !== 'off' && k !== 'baseline')];
  for (const [p, phase] of phases.entries()) {
    // The subscribed modes are slower (the recorder snapshots the graph per call): fewer, shorter rounds.
    for (let r = 0; r < (p ? 3 : ROUNDS); r++) {
      for (let i = 0; i < phase.length; i++) {
        const [k, open, setup] = phase[(i + r) % phase.length]!;
        rates.get(k)!.push(rateOf(open, setup, k === 'recording' ? N / 20 : N));
      }
    }
  }
  const m = (k: string): number | null => (rates.get(k)?.length ? best(rates.get(k)!) : null);
  return { off: m('off')!, counting: m('counting')!, recording: m('recording'), baseline: m('baseline'), baselineError };
}
