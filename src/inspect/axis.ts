// A compressed IOVA axis for the IOAS view: 64 bits of address space with a
// few small areas in it cannot be drawn to scale, so the axis is cut at every
// boundary of what is drawn; pieces covered by an area get the most room,
// pieces covered only by a reserved or allowed range less, empty pieces a
// narrow gap. Positions inside a piece are linear.
export const U64_END = 1n << 64n;

export interface Span {
  readonly start: bigint;
  /** Inclusive. */
  readonly last: bigint;
}

export interface Piece {
  readonly start: bigint;
  /** Exclusive. */
  readonly end: bigint;
  readonly x: number;
  readonly w: number;
  /** Nothing drawn here: shown as a break in the axis. */
  readonly gap: boolean;
}

export interface Axis {
  readonly pieces: readonly Piece[];
  /** x of an address (inclusive start of a byte); `end` = U64_END maps to the right edge. */
  x(v: bigint): number;
}

const WEIGHT = { area: 6, range: 2, gap: 1 };

/** Lay out [0, 2^64) over `width` pixels around `areas` and `ranges` (reserved, allowed). */
export function compressAxis(areas: readonly Span[], ranges: readonly Span[], width: number): Axis {
  const cuts = new Set<bigint>([0n, U64_END]);
  for (const s of [...areas, ...ranges]) {
    cuts.add(s.start);
    cuts.add(s.last + 1n);
  }
  const pts = [...cuts].filter((p) => p >= 0n && p <= U64_END).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const covered = (spans: readonly Span[], a: bigint, b: bigint): boolean => spans.some((s) => s.start < b && s.last >= a);
  const raw = pts.slice(0, -1).map((start, i) => {
    const end = pts[i + 1]!;
    const kind = covered(areas, start, end) ? 'area' : covered(ranges, start, end) ? 'range' : 'gap';
    return { start, end, weight: WEIGHT[kind], gap: kind === 'gap' };
  });
  const total = raw.reduce((n, p) => n + p.weight, 0);
  let x = 0;
  const pieces: Piece[] = raw.map((p) => {
    const w = (p.weight / total) * width;
    const piece = { start: p.start, end: p.end, x, w, gap: p.gap };
    x += w;
    return piece;
  });
  return {
    pieces,
    x(v: bigint): number {
      if (v >= U64_END) return width;
      // Binary search for the piece holding v.
      let lo = 0;
      let hi = pieces.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (pieces[mid]!.start <= v) lo = mid;
        else hi = mid - 1;
      }
      const p = pieces[lo]!;
      const frac = Number(((v - p.start) * 1_000_000n) / (p.end - p.start)) / 1_000_000;
      return p.x + frac * p.w;
    },
  };
}

/** "64 KiB", "2 MiB", "0x1_0000_0000 B" ... a size for labels. */
export function sizeText(n: bigint): string {
  const units: [bigint, string][] = [[1n << 60n, 'EiB'], [1n << 50n, 'PiB'], [1n << 40n, 'TiB'], [1n << 30n, 'GiB'], [1n << 20n, 'MiB'], [1n << 10n, 'KiB']];
  for (const [u, name] of units) if (n >= u && n % u === 0n) return `${n / u} ${name}`;
  for (const [u, name] of units) if (n >= u) return `${(Number(n) / Number(u)).toFixed(1)} ${name}`;
  return `${n} B`;
}

/** Parse "0x..." (how JSON carries 64-bit values). */
export function big(v: string | number | bigint): bigint {
  return typeof v === 'bigint' ? v : BigInt(v);
}
