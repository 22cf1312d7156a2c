// The IOAS view: the address space on a compressed IOVA axis -- allowed and
// reserved ranges, areas (filled = in the domains), pinned pages inside them.
import { big, compressAxis, sizeText, U64_END } from '../axis.js';
import type { JsonGraph } from '../protocol.js';

type IoasV = JsonGraph['contexts'][number]['ioas'][number];

const W = 860;
const PAD = 8;

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

export function IoasView({ ioas }: { ioas: IoasV }) {
  const areas = ioas.areas.map((a) => ({ ...a, start: big(a.iova), lastB: big(a.last) }));
  const reserved = ioas.reserved.map((r) => ({ start: big(r.start), last: big(r.last), owner: r.owner }));
  const allowed = ioas.allowed.map(([s, l]) => ({ start: big(s), last: big(l) }));
  const axis = compressAxis(areas.map((a) => ({ start: a.start, last: a.lastB })), [...reserved, ...allowed], W - 2 * PAD);
  const x = (v: bigint): number => PAD + axis.x(v);
  const rows = { allowed: 16, reserved: 46, areas: 76, axis: 118 };
  const ticks = axis.pieces.filter((p) => !p.gap || p.start === 0n).map((p) => p.start);
  let lastTick = -Infinity;
  return (
    <div class="ioas" data-ioas={ioas.id}>
      <div class="ioas-head">
        <b>IOAS {ioas.id}</b>
        <span>{ioas.areaCount} area{ioas.areaCount === 1 ? '' : 's'}</span>
        <span>alignment {hex(big(ioas.alignment))}</span>
        <span>{ioas.hugePages ? 'huge pages' : 'huge pages off'}</span>
        <span>HWPTs {ioas.hwpts.join(', ') || '—'}</span>
        {ioas.accesses > 0 && <span>{ioas.accesses} access{ioas.accesses === 1 ? '' : 'es'}</span>}
        {ioas.areaCount > ioas.areas.length && <span class="warn">first {ioas.areas.length} areas shown</span>}
      </div>
      <svg viewBox={`0 0 ${W} 142`} width={W} height="142" class="iova">
        <text x={PAD} y={rows.allowed + 8} class="track">allowed</text>
        <text x={PAD} y={rows.reserved - 3} class="track">reserved</text>
        <text x={PAD} y={rows.areas - 3} class="track">areas (dark strip: pinned pages)</text>
        {axis.pieces.filter((p) => p.gap).map((p) => (
          <g class="gap"><rect x={PAD + p.x} y={rows.allowed} width={p.w} height={rows.axis - rows.allowed} /></g>
        ))}
        {allowed.length === 0
          ? <text x={PAD + 52} y={rows.allowed + 8} class="note">no allowed ranges set: any IOVA outside reserved ranges</text>
          : allowed.map((r) => (
            <rect class="allowed" x={x(r.start)} y={rows.allowed} width={Math.max(1, x(r.last + 1n) - x(r.start))} height="10">
              <title>{`allowed [${hex(r.start)}, ${hex(r.last)}]`}</title>
            </rect>
          ))}
        {reserved.map((r) => (
          <rect class="reserved" x={x(r.start)} y={rows.reserved} width={Math.max(1, x(r.last + 1n) - x(r.start))} height="12">
            <title>{`reserved [${hex(r.start)}, ${hex(r.last)}] by ${r.owner}`}</title>
          </rect>
        ))}
        {areas.map((a) => {
          const x0 = x(a.start);
          const w = Math.max(2, x(a.lastB + 1n) - x0);
          const pageW = w / a.pages;
          return (
            <g class={`area${a.filled ? ' filled' : ''}${a.busy ? ' busy' : ''}${a.locks ? ' locked' : ''}`} data-iova={a.iova}>
              <rect x={x0} y={rows.areas} width={w} height="22" />
              {a.pinnedRuns.map(([first, n]) => (
                <rect class="pinned" x={x0 + first * pageW} y={rows.areas + 16} width={Math.max(1, n * pageW)} height="6" />
              ))}
              {w > 70 && <text x={x0 + 4} y={rows.areas + 12} class="alabel">{sizeText(a.lastB - a.start + 1n)} {a.prot}</text>}
              <title>{`[${a.iova}, ${a.last}] ${a.prot} ${a.source}\n${a.pages} pages, ${a.pinned} pinned` +
                `${a.accessPins ? `, ${a.accessPins} access pins` : ''}${a.locks ? `, ${a.locks} locks` : ''}` +
                `${a.filled ? ', mapped in the domains' : ', not in any domain'}${a.busy ? ', being established' : ''}`}</title>
            </g>
          );
        })}
        <line x1={PAD} x2={W - PAD} y1={rows.axis} y2={rows.axis} class="axis" />
        {ticks.map((t) => {
          const tx = x(t);
          if (tx - lastTick < 74 && t !== 0n) return null;
          lastTick = tx;
          return (
            <g>
              <line x1={tx} x2={tx} y1={rows.axis - 3} y2={rows.axis + 3} class="axis" />
              <text x={tx + 2} y={rows.axis + 14} class="tick">{t === U64_END ? '2^64' : hex(t)}</text>
            </g>
          );
        })}
      </svg>
      {areas.length > 0 && (
        <table class="areas">
          <thead><tr><th>IOVA</th><th>last</th><th>prot</th><th>pages</th><th>pinned</th><th>in domains</th><th>access pins</th><th>source</th></tr></thead>
          <tbody>
            {areas.slice(0, 12).map((a) => (
              <tr><td>{a.iova}</td><td>{a.last}</td><td>{a.prot}</td><td>{a.pages}</td><td>{a.pinned}</td>
                <td>{a.filled ? 'yes' : 'no'}</td><td>{a.accessPins}{a.locks ? ` (${a.locks} locked)` : ''}</td><td>{a.source}</td></tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
