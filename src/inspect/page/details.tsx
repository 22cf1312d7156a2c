// The selected object: its fields, who holds it, what IOMMU_DESTROY would answer.
import { KIND_NAMES } from './graph.js';
import type { JsonGraph } from '../protocol.js';

type ContextG = JsonGraph['contexts'][number];

export function Details({ ctx, id, onSelect }: { ctx: ContextG | undefined; id: number; onSelect(id: number): void }) {
  const o = ctx?.objects.find((x) => x.id === id);
  if (!ctx || !o) return <div class="obj-details"><p class="empty">object {id} does not exist at this step</p></div>;
  const out = ctx.edges.filter((e) => e.from === id);
  return (
    <div class="obj-details" data-id={o.id} data-kind={o.kind}>
      <h3>{KIND_NAMES[o.kind] ?? o.kind} {o.id} <small>context {ctx.ctx}</small></h3>
      <div class="badges">
        <span class="pill">users {o.users}</span>
        <span class="pill">short-term {o.shortUsers}</span>
        {!o.published && <span class="pill warn">not published</span>}
        {o.tombstone && <span class="pill warn">tombstone</span>}
      </div>
      <p class={`destroy${o.destroy ? ' busy' : ''}`}>
        IOMMU_DESTROY now: {o.destroy ? <><b>{o.destroy.errno}</b> — {o.destroy.reason}</> : 'would destroy it'}
      </p>
      <table class="fields">
        <caption>fields</caption>
        <tbody>
          {Object.entries(o.fields).map(([k, v]) => <tr><th>{k}</th><td>{v === null ? '—' : String(v)}</td></tr>)}
        </tbody>
      </table>
      <table class="fields">
        <caption>held by (one row per user beyond the table's)</caption>
        <tbody>
          {o.holders.length === 0 && <tr><td colSpan={2}>only the object table</td></tr>}
          {o.holders.map((h) => (
            <tr>
              <th>{h.kind}</th>
              <td>{'obj' in h.holder
                ? <a href="#" onClick={(ev) => { ev.preventDefault(); onSelect((h.holder as { obj: number }).obj); }}>{h.holder.kind} {h.holder.obj}</a>
                : h.holder.label}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {out.length > 0 && (
        <table class="fields">
          <caption>holds</caption>
          <tbody>
            {out.map((e) => (
              <tr><th>{e.kind}{e.label ? ` (${e.label})` : ''}</th>
                <td><a href="#" onClick={(ev) => { ev.preventDefault(); onSelect(e.to); }}>
                  {KIND_NAMES[ctx.objects.find((x) => x.id === e.to)?.kind ?? ''] ?? ''} {e.to}</a>{e.ref ? '' : ' (no reference)'}</td></tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
