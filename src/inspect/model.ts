// The page's view of a session, without the DOM (so it is tested in Node):
// messages folded into steps, each with the graph in force after it; the
// objects that block a failed DESTROY; one-line summaries of events.
import type { HelloMessage, JsonEvent, JsonGraph, Message, StatusMessage, StepMessage } from './protocol.js';
import { driverEventText } from '../core/driver_trace.js';

type ContextG = JsonGraph['contexts'][number];
type ObjectN = ContextG['objects'][number];

export interface Step extends Omit<StepMessage, 'graph'> {
  /** The graph after this step (the latest one sent at or before it). */
  readonly graph: JsonGraph;
}

const EMPTY: JsonGraph = { profile: '', contexts: [] };

export class Model {
  hello: HelloMessage | null = null;
  status: StatusMessage | null = null;
  readonly steps: Step[] = [];
  private graph: JsonGraph = EMPTY;

  /** Fold one message in; returns false for a line that is not a message. */
  add(m: Message): boolean {
    if (m.type === 'hello') {
      this.hello = m;
      this.graph = { profile: m.profile, contexts: [] };
    } else if (m.type === 'status') {
      this.status = m;
    } else if (m.type === 'step') {
      if (m.graph) this.graph = m.graph;
      const { graph: _g, ...rest } = m;
      this.steps.push({ ...rest, graph: this.graph });
    } else {
      return false;
    }
    return true;
  }

  addLine(line: string): boolean {
    try {
      return this.add(JSON.parse(line) as Message);
    } catch {
      return false;
    }
  }
}

/** `name=value` -> value, from a formatted field list. */
export function field(parts: readonly string[] | null | undefined, name: string): string | undefined {
  const p = parts?.find((x) => x.startsWith(`${name}=`));
  return p?.slice(name.length + 1);
}

export interface Blockers {
  readonly ctx: number;
  /** The object DESTROY could not remove. */
  readonly target: number;
  /** Who holds it: object IDs, or external holder keys. */
  readonly holders: (number | string)[];
}

/** For a DESTROY that failed with EBUSY: its target and the holders that kept it. */
export function blockersOf(step: Step): Blockers | null {
  const h = step.head;
  if (!h || h.t !== 'ioctl' || h.name !== 'DESTROY' || h.errno !== 'EBUSY') return null;
  const id = Number(field(step.ioctl?.input, 'id'));
  const ctx = step.graph.contexts.find((c) => c.ctx === h.ctx);
  if (!ctx || !Number.isFinite(id)) return null;
  return { ctx: h.ctx, target: id, holders: ctx.edges.filter((e) => e.to === id && e.ref).map((e) => e.from) };
}

/** The objects of one context, by ID. */
export function objectsById(c: ContextG): Map<number, ObjectN> {
  return new Map(c.objects.map((o) => [o.id, o]));
}

/** A short headline of an object's state, by kind (shown under its name in the graph). */
export function subtitle(o: ObjectN): string {
  const f = o.fields;
  switch (o.kind) {
    case 'IOAS': return `${f.areas} area${f.areas === 1 ? '' : 's'}, ${f.domains} domain${f.domains === 1 ? '' : 's'}`;
    case 'HWPT_PAGING': return [f.auto_domain ? 'auto-domain' : null, f.nest_parent ? 'nest parent' : null, f.dirty_tracking ? 'dirty' : null]
      .filter(Boolean).join(', ') || 'paging';
    case 'HWPT_NESTED': return f.viommu !== null && f.viommu !== undefined ? `on vIOMMU ${f.viommu}` : `parent ${f.parent}`;
    case 'DEVICE': return f.attached ? `attached ${f.attached}` : 'not attached';
    case 'VIOMMU': return `type ${f.type}`;
    case 'VDEVICE': return `virt_id ${f.virt_id}`;
    case 'VEVENTQ': return `${f.pending}/${f.depth} pending${f.lost_marker ? ', lost' : ''}`;
    case 'FAULT': return `${f.pending_groups} pending, ${f.awaiting_response} awaiting`;
    case 'HW_QUEUE': return `index ${f.index}`;
    case 'ACCESS': return f.internal ? 'internal' : 'driver access';
    case 'SELFTEST': return 'mock device';
    default: return '';
  }
}

function holderText(h: { obj: number; kind: string } | { label: string }): string {
  return 'obj' in h ? `${h.kind} ${h.obj}` : h.label;
}

/** One line per event, for the stream's details. */
export function eventText(e: JsonEvent): string {
  switch (e.t) {
    case 'ctx': return `context ${e.ctx} ${e.op === 'open' ? 'opened' : 'released'} (pid ${e.pid})`;
    case 'obj': return `${e.op} ${e.kind} ${e.id}`;
    case 'ref': return `${e.op === 'get' ? '+' : '-'}ref ${holderText(e.holder)} -${e.ref}-> ${e.kind} ${e.id} (users ${e.users})`;
    case 'attach': return e.op === 'replace'
      ? `replace DEVICE ${e.dev}${e.pasid ? ` pasid ${e.pasid}` : ''}: HWPT ${e.old} -> ${e.hwpt}`
      : `${e.op} DEVICE ${e.dev}${e.pasid ? ` pasid ${e.pasid}` : ''} ${e.op === 'attach' ? 'to' : 'from'} HWPT ${e.hwpt}`;
    case 'ioas': return `IOAS ${e.ioas} ${e.op} ${e.iova} +${e.length}${e.src !== undefined ? ` from IOAS ${e.src} ${e.srcIova}` : ''}`;
    case 'area': return `IOAS ${e.ioas} area ${e.op} [${e.iova}, ${e.last}]${e.at ? ` at ${e.at}` : ''}`;
    case 'pin': return `IOAS ${e.ioas} ${e.op} [${e.iova}, ${e.last}] by ${e.by}${e.lock ? ' (locked)' : ''}`;
    case 'invalidate': return `invalidate ${e.target === 'hwpt' ? 'HWPT' : 'vIOMMU'} ${e.id}: ${e.handled}/${e.entries} entries${e.errno ? `, ${e.errno}` : ''}`;
    case 'fault': return `fault ${e.op} DEVICE ${e.dev} grpid ${e.grpid}${e.fault !== undefined ? ` FAULT ${e.fault}` : ''}${e.code !== undefined ? ` code ${e.code}` : ''}`;
    case 'vevent': return `vEVENT ${e.lost ? 'lost-events marker' : `seq ${e.sequence}`} on VEVENTQ ${e.veventq} (vIOMMU ${e.viommu})`;
    case 'fd': return `${e.op === 'open' ? `fd ${e.fd} opened` : 'fd closed'}: ${e.file}${e.obj ? ` (object ${e.obj})` : ''}`;
    case 'mmap': return `${e.op} of region ${e.offset} +${e.length} (owner ${e.owner})`;
    case 'fail': return `check failed: ${e.errno}${e.reason ? ` ${e.reason}` : ''}`;
    case 'note': return e.text;
    case 'driver': return driverEventText(e);
    case 'begin': return `begin ${e.name ?? 'ioctl'}`;
    case 'ioctl': return `${e.name ?? 'ioctl'} = ${e.errno ?? e.ret}`;
  }
}

/** The step's headline: the ioctl line, the note, or what happened outside any call. */
export function stepTitle(s: Step): string {
  const h = s.head;
  if (s.ioctl) return s.ioctl.line;
  if (!h) return s.events.length ? `outside any call: ${eventText(s.events[0]!)}${s.events.length > 1 ? ` (+${s.events.length - 1})` : ''}` : 'outside any call';
  return eventText(h);
}

/** The failure of a step, if it failed: errno and reason. */
export function stepFailure(s: Step): { errno: string; reason?: string } | null {
  const h = s.head;
  if (h && h.t === 'ioctl' && h.errno) return { errno: h.errno, reason: h.reason };
  return null;
}
