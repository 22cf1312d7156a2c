// One context's object graph: nodes by kind, edges by reference kind, laid out
// by ELK's layered algorithm (holders above what they hold), drawn as SVG.
import ELK, { type ElkExtendedEdge, type ElkNode } from 'elkjs/lib/elk.bundled.js';
import { useEffect, useRef, useState } from 'preact/hooks';
import { subtitle, type Blockers } from '../model.js';
import type { JsonGraph } from '../protocol.js';

type ContextG = JsonGraph['contexts'][number];

export const KIND_NAMES: Record<string, string> = {
  IOAS: 'IOAS', HWPT_PAGING: 'HWPT paging', HWPT_NESTED: 'HWPT nested', DEVICE: 'DEVICE', VIOMMU: 'vIOMMU',
  VDEVICE: 'vDEVICE', VEVENTQ: 'vEVENTQ', FAULT: 'FAULT', HW_QUEUE: 'HW queue', ACCESS: 'ACCESS',
  SELFTEST: 'selftest dev', TOMBSTONE: 'tombstone',
};

export const EDGE_KINDS: Record<string, string> = {
  attach: 'attached to', ioas: 'on IOAS', parent: 'nesting parent', viommu: 'on vIOMMU', device: 'vDEVICE of',
  bind: 'binds', fault: 'fault queue', file: 'fd holds', mmap: 'mmap holds', depend: 'depends on',
  access: 'access on', owner: 'owns', attachment: 'attachment', unknown: 'reference', shortterm: 'lookup',
};

const NODE_W = 172;
const NODE_H = 58;
const EXT_W = 168;
const EXT_H = 30;

interface Layout {
  width: number;
  height: number;
  nodes: Map<string, { x: number; y: number; w: number; h: number }>;
  edges: Map<string, { points: { x: number; y: number }[]; label?: { x: number; y: number; text: string } }>;
}

const elk = new ELK();
const cache = new Map<string, Layout>();

function nodeKey(id: number | string): string {
  return typeof id === 'number' ? `n${id}` : id;
}

function edgeKey(e: ContextG['edges'][number], i: number): string {
  return `e${i}:${e.from}>${e.to}:${e.kind}`;
}

/** Structure only: the same objects and edges lay out the same way. */
function signature(c: ContextG): string {
  return JSON.stringify([c.objects.map((o) => [o.id, o.kind]), c.externals.map((x) => [x.key, x.label]),
    c.edges.map((e) => [e.from, e.to, e.kind, e.label ?? ''])]);
}

async function layoutOf(c: ContextG): Promise<Layout> {
  const sig = signature(c);
  const hit = cache.get(sig);
  if (hit) return hit;
  const children: ElkNode[] = [
    ...c.objects.map((o) => ({ id: nodeKey(o.id), width: NODE_W, height: NODE_H })),
    ...c.externals.map((x) => ({ id: x.key, width: EXT_W, height: EXT_H })),
  ];
  const edges: ElkExtendedEdge[] = c.edges.map((e, i) => {
    const text = e.label ? `${e.kind} (${e.label})` : e.kind;
    return {
      id: edgeKey(e, i), sources: [nodeKey(e.from)], targets: [nodeKey(e.to)],
      labels: [{ text, width: text.length * 6.2 + 6, height: 13 }],
    };
  });
  const root: ElkNode = {
    id: 'root',
    layoutOptions: {
      'elk.algorithm': 'layered',
      'elk.direction': 'DOWN',
      'elk.edgeRouting': 'ORTHOGONAL',
      'elk.layered.spacing.nodeNodeBetweenLayers': '56',
      'elk.spacing.nodeNode': '28',
      'elk.spacing.edgeLabel': '2',
      'elk.layered.nodePlacement.strategy': 'NETWORK_SIMPLEX',
      'elk.edgeLabels.placement': 'CENTER',
      'elk.padding': '[top=12,left=12,bottom=12,right=12]',
    },
    children,
    edges,
  };
  const g = await elk.layout(root);
  const out: Layout = { width: g.width ?? 0, height: g.height ?? 0, nodes: new Map(), edges: new Map() };
  for (const n of g.children ?? []) out.nodes.set(n.id, { x: n.x ?? 0, y: n.y ?? 0, w: n.width ?? 0, h: n.height ?? 0 });
  for (const e of (g.edges ?? []) as ElkExtendedEdge[]) {
    const s = e.sections?.[0];
    if (!s) continue;
    const l = e.labels?.[0];
    out.edges.set(e.id, {
      points: [s.startPoint, ...(s.bendPoints ?? []), s.endPoint],
      label: l && l.text ? { x: (l.x ?? 0) + (l.width ?? 0) / 2, y: (l.y ?? 0) + (l.height ?? 0) / 2, text: l.text } : undefined,
    });
  }
  cache.set(sig, out);
  if (cache.size > 200) cache.delete(cache.keys().next().value!); // the oldest; this one is the newest
  return out;
}

export interface GraphProps {
  ctx: ContextG;
  selected: number | null;
  blockers: Blockers | null;
  onSelect(id: number): void;
}

export function GraphView({ ctx, selected, blockers, onSelect }: GraphProps) {
  const [, setDone] = useState('');
  const [error, setError] = useState<string | null>(null);
  const pending = useRef('');
  const sig = signature(ctx);
  useEffect(() => {
    // After every render: lay out a structure not in the cache (new, or evicted since).
    if (cache.has(sig) || pending.current === sig) return;
    pending.current = sig;
    layoutOf(ctx).then(() => setDone(sig), (e: Error) => setError(e.message)).finally(() => {
      if (pending.current === sig) pending.current = '';
    });
  });
  if (error) return <p class="error">layout failed: {error}</p>;
  if (ctx.objects.length === 0) return <p class="empty">no objects</p>;
  // A step whose structure was laid out before is drawn at once; a new one when ELK is done.
  const layout = cache.get(sig);
  if (!layout) return <p class="empty">laying out…</p>;
  const blocked = blockers && blockers.ctx === ctx.ctx ? blockers : null;
  const isBlocker = (k: number | string): boolean => !!blocked && blocked.holders.includes(k);
  return (
    <svg class="graph" viewBox={`0 0 ${layout.width} ${layout.height}`} style={{ width: `min(100%, ${layout.width}px)` }}
      data-ctx={ctx.ctx} role="img" aria-label={`object graph of context ${ctx.ctx}`}>
      <defs>
        {Object.keys(EDGE_KINDS).map((k) => (
          <marker id={`arrow-${k}`} viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M0,0 L10,5 L0,10 z" class={`arrowhead k-${k}`} />
          </marker>
        ))}
        <marker id="arrow-blocker" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
          <path d="M0,0 L10,5 L0,10 z" class="arrowhead blocker" />
        </marker>
      </defs>
      {ctx.edges.map((e, i) => {
        const l = layout.edges.get(edgeKey(e, i));
        if (!l) return null;
        const hot = !!blocked && e.to === blocked.target && e.ref;
        const near = selected !== null && (e.to === selected || e.from === selected);
        const d = l.points.map((p, j) => `${j ? 'L' : 'M'}${p.x},${p.y}`).join(' ');
        return (
          <g class={`edge k-${e.kind}${e.ref ? '' : ' noref'}${hot ? ' blocker' : ''}${near ? ' near' : ''}`}
            data-kind={e.kind} data-from={String(e.from)} data-to={String(e.to)} data-ref={String(e.ref)}>
            <path d={d} marker-end={`url(#arrow-${hot ? 'blocker' : e.kind})`} />
            {l.label && <text x={l.label.x} y={l.label.y + 4} class="elabel">{l.label.text}</text>}
            <title>{`${e.from} ${EDGE_KINDS[e.kind] ?? e.kind} ${e.to}${e.ref ? '' : ' (no reference)'}`}</title>
          </g>
        );
      })}
      {ctx.externals.map((x) => {
        const n = layout.nodes.get(x.key)!;
        return (
          <g class={`ext${isBlocker(x.key) ? ' blocker' : ''}`} transform={`translate(${n.x},${n.y})`} data-kind="EXTERNAL" data-key={x.key}>
            <rect width={n.w} height={n.h} rx={n.h / 2} />
            <text x={n.w / 2} y={n.h / 2 + 4} class="ext-label">{x.label}</text>
          </g>
        );
      })}
      {ctx.objects.map((o) => {
        const n = layout.nodes.get(nodeKey(o.id))!;
        const cls = ['node', `kind-${o.kind}`, selected === o.id ? 'selected' : '', blocked?.target === o.id ? 'target' : '',
          isBlocker(o.id) ? 'blocker' : '', o.published ? '' : 'unpublished'].filter(Boolean).join(' ');
        return (
          <g class={cls} transform={`translate(${n.x},${n.y})`} data-kind={o.kind} data-id={o.id} data-ctx={ctx.ctx}
            onClick={() => onSelect(o.id)}>
            <rect class="body" width={n.w} height={n.h} rx="7" />
            <path class="band" d={`M0,7 a7,7 0 0 1 7,-7 h${n.w - 14} a7,7 0 0 1 7,7 v13 h-${n.w} z`} />
            <text x="9" y="14" class="kind">{KIND_NAMES[o.kind] ?? o.kind}</text>
            <text x={n.w - 30} y="14" class="id">#{o.id}</text>
            <text x="9" y="38" class="sub">{clip(subtitle(o), 27)}</text>
            <g class="badge" transform={`translate(${n.w - 13},${n.h - 13})`}>
              <circle r="10" />
              <text y="4">{o.users}</text>
              <title>{`${o.users} user${o.users === 1 ? '' : 's'} (the table's + ${o.users - 1})${o.shortUsers ? `, ${o.shortUsers} short-term` : ''}`}</title>
            </g>
            {o.shortUsers > 0 && <text x="9" y="52" class="short">{o.shortUsers} short-term</text>}
            <title>{`${KIND_NAMES[o.kind] ?? o.kind} ${o.id}: ${o.users} users${o.destroy ? `; DESTROY -> ${o.destroy.errno}` : ''}`}</title>
          </g>
        );
      })}
    </svg>
  );
}

function clip(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

/** The edge kinds in use, for the legend. */
export function Legend({ graph }: { graph: JsonGraph }) {
  const kinds = [...new Set(graph.contexts.flatMap((c) => c.edges.map((e) => e.kind)))];
  if (!kinds.length) return null;
  return (
    <div class="legend">
      {kinds.map((k) => (
        <span class={`lg k-${k}`}><svg width="22" height="8"><line x1="0" y1="4" x2="22" y2="4" /></svg>{k}</span>
      ))}
      <span class="lg noref"><svg width="22" height="8"><line x1="0" y1="4" x2="22" y2="4" /></svg>no reference</span>
      <span class="lg blocker"><svg width="22" height="8"><line x1="0" y1="4" x2="22" y2="4" /></svg>EBUSY blocker</span>
    </div>
  );
}
