// An inspection session: subscribes to an emulator's trace bus, groups events
// into steps (one per ioctl, front-end note, context open/release, or burst of
// events outside any call), attaches the object graph after each step, and
// keeps the stream for pages (and, optionally, a recording file).
import * as fs from 'node:fs';
import type { Emulator } from '../core/emulator.js';
import { emulatorGraph } from '../core/graph.js';
import type { TraceEvent } from '../core/trace_bus.js';
import { formatIoctl, ioctlParts } from '../uapi/trace.js';
import {
  FORMAT_VERSION, type HelloMessage, type IoctlText, type Message, type StatusMessage, type StepMessage,
} from './protocol.js';

/** Events kept per step (the rest are counted). */
const STEP_EVENTS = 1000;

/** JSON for messages: bigints as "0x..." strings, byte arrays as hex strings. */
export function toJson(m: unknown): string {
  return JSON.stringify(m, (_k, v: unknown) => {
    if (typeof v === 'bigint') return `0x${v.toString(16)}`;
    if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
    return v;
  });
}

/** A source of messages a page can follow: the ones so far, then each new one. */
export interface MessageSource {
  messages(): readonly string[];
  subscribe(fn: (line: string) => void): () => void;
}

export interface SessionOptions {
  /** The program being run (shown by the page). */
  argv?: string[];
  /** Also write every message to this file (one JSON line each), for `iommufd-emu inspect FILE`. */
  record?: string;
  /** Keep at most this many bytes of messages in memory (older steps are dropped; a recording keeps all). */
  memoryLimit?: number;
}

interface Kept {
  line: string;
  /** The graph in force after this step (shared string), for re-basing the history when it is trimmed. */
  graph: string | null;
  /** The line carries that graph itself. */
  hasGraph: boolean;
  msg: StepMessage | null;
}

export class InspectSession implements MessageSource {
  private readonly kept: Kept[] = [];
  private hello: string;
  private bytes = 0;
  private readonly clients = new Set<(line: string) => void>();
  private buffer: TraceEvent[] = [];
  private bufferDropped = 0;
  private inside = false;
  private step = 0;
  private lastGraph: string | null = null;
  private t0 = performance.now();
  private recordFd: number | null = null;
  private flushQueued = false;
  private readonly unsubscribe: () => void;
  private readonly memoryLimit: number;
  /** Steps dropped from memory (a page joining late sees it). */
  dropped = 0;

  constructor(readonly emu: Emulator, opts: SessionOptions = {}) {
    this.memoryLimit = opts.memoryLimit ?? 128 * 2 ** 20;
    if (opts.record) this.recordFd = fs.openSync(opts.record, 'w');
    const hello: HelloMessage = {
      type: 'hello', version: FORMAT_VERSION, mode: 'live', profile: emu.profile.name, argv: opts.argv,
      started: new Date().toISOString(),
    };
    this.hello = toJson(hello);
    this.record(this.hello);
    this.unsubscribe = emu.bus.subscribe((e) => this.onEvent(e));
  }

  messages(): readonly string[] {
    return [this.hello, ...this.kept.map((k) => k.line)];
  }

  subscribe(fn: (line: string) => void): () => void {
    this.clients.add(fn);
    return () => this.clients.delete(fn);
  }

  setStatus(state: StatusMessage['state'], extra: { exitStatus?: number; text?: string } = {}): void {
    this.flush();
    if (state === 'running' && this.step === 0) this.t0 = performance.now(); // step times count from the start
    const m: StatusMessage = { type: 'status', state, ...extra };
    const line = toJson(m);
    this.keep({ line, graph: this.lastGraph, hasGraph: false, msg: null });
    this.publish(line);
  }

  /** Close the current step (if any events are pending). */
  flush(): void {
    if (this.buffer.length) this.closeStep(null);
  }

  /** Stop listening; the recording is complete. */
  close(): void {
    this.flush();
    this.unsubscribe();
    if (this.recordFd !== null) {
      fs.closeSync(this.recordFd);
      this.recordFd = null;
    }
  }

  private onEvent(e: TraceEvent): void {
    switch (e.t) {
      case 'begin':
        this.flush();
        this.inside = true;
        return;
      case 'ioctl':
        this.inside = false;
        this.closeStep(e);
        return;
      case 'note':
      case 'ctx':
        if (!this.inside) {
          this.closeStep(e);
          return;
        }
        break;
      default:
        break;
    }
    if (this.buffer.length < STEP_EVENTS) this.buffer.push(e);
    else this.bufferDropped++;
    // Events outside any call (an fd closed, a client gone) make a step of their own
    // once the front end's current callback is done.
    if (!this.inside && !this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(() => {
        this.flushQueued = false;
        if (!this.inside) this.flush();
      });
    }
  }

  private ioctlText(e: Extract<TraceEvent, { t: 'ioctl' }>): IoctlText {
    const res = e.errno ?? e.ret ?? 0;
    const p = ioctlParts(this.emu.profile, e.request, e.inBytes, e.outBytes, res, e.file);
    return {
      line: formatIoctl(this.emu.profile, e.request, e.inBytes, e.outBytes, res, e.file),
      name: p.name, input: p.input ? [...p.input] : null, output: p.output ? [...p.output] : null, result: p.result,
    };
  }

  private closeStep(head: TraceEvent | null): void {
    const events = this.buffer;
    const dropped = this.bufferDropped;
    this.buffer = [];
    this.bufferDropped = 0;
    const graph = toJson(emulatorGraph(this.emu));
    const changed = graph !== this.lastGraph;
    this.lastGraph = graph;
    const msg: StepMessage = {
      type: 'step', step: ++this.step, time: Math.round((performance.now() - this.t0) * 1000) / 1000,
      head: head as StepMessage['head'], ioctl: head?.t === 'ioctl' ? this.ioctlText(head) : undefined,
      events: events as StepMessage['events'], ...(dropped ? { eventsDropped: dropped } : {}),
    };
    const line = this.stepLine(msg, changed ? graph : null);
    this.keep({ line, graph, hasGraph: changed, msg });
    this.publish(line);
  }

  private stepLine(msg: StepMessage, graph: string | null): string {
    const base = toJson(msg);
    return graph ? `${base.slice(0, -1)},"graph":${graph}}` : base;
  }

  private keep(k: Kept): void {
    this.kept.push(k);
    this.bytes += k.line.length;
    while (this.bytes > this.memoryLimit && this.kept.length > 1) {
      const old = this.kept.shift()!;
      this.bytes -= old.line.length;
      this.dropped++;
      const first = this.kept.find((x) => x.msg !== null);
      if (first && !first.hasGraph && first.msg && first.graph) {
        // The oldest step kept must carry the graph the ones after it build on.
        this.bytes -= first.line.length;
        first.line = this.stepLine(first.msg, first.graph);
        first.hasGraph = true;
        this.bytes += first.line.length;
      }
    }
  }

  private record(line: string): void {
    if (this.recordFd !== null) fs.writeSync(this.recordFd, `${line}\n`);
  }

  private publish(line: string): void {
    this.record(line);
    for (const c of this.clients) c(line);
  }
}

/** A finished run's messages, from a recording: the page replays them. */
export class Recording implements MessageSource {
  private constructor(private readonly lines: string[]) {}

  /** Read `file` (written by --inspect-record); a file that is not one is an error naming it. */
  static load(file: string): Recording {
    const text = fs.readFileSync(file, 'utf8');
    const lines = text.split('\n').filter((l) => l.trim() !== '');
    let hello: Message | undefined;
    try {
      hello = JSON.parse(lines[0] ?? '') as Message;
    } catch { /* below */ }
    if (!hello || hello.type !== 'hello') throw new Error(`${file}: not an inspector recording (no hello line)`);
    if (hello.version !== FORMAT_VERSION) throw new Error(`${file}: recording format ${hello.version}, this version reads ${FORMAT_VERSION}`);
    lines[0] = JSON.stringify({ ...hello, mode: 'replay' });
    return new Recording(lines);
  }

  messages(): readonly string[] {
    return this.lines;
  }

  subscribe(): () => void {
    return () => {};
  }
}
