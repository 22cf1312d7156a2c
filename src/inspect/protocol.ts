// What the inspector streams to its page and writes to a recording: one JSON
// message per line. A recording is exactly the stream of a live session, so
// the page replays a finished run the same way it follows a live one.
import type { EmulatorGraph } from '../core/graph.js';
import type { TraceEvent } from '../core/trace_bus.js';

/** Version of the message format (a recording says which it was written in). */
export const FORMAT_VERSION = 1;

/** T as JSON carries it: 64-bit values as "0x..." strings, byte arrays as hex strings. */
export type Json<T> = T extends bigint ? string
  : T extends Uint8Array ? string
  : T extends readonly (infer U)[] ? Json<U>[]
  : T extends object ? { -readonly [K in keyof T]: Json<T[K]> }
  : T;

export type JsonEvent = Json<TraceEvent>;
export type JsonGraph = Json<EmulatorGraph>;

export interface HelloMessage {
  readonly type: 'hello';
  readonly version: number;
  /** live: a running emulator; replay: a recording being served. */
  readonly mode: 'live' | 'replay';
  readonly profile: string;
  /** The program being run, if the inspector runs one. */
  readonly argv?: string[];
  readonly started: string;
}

/** A formatted ioctl: the trace line and its fields as `name=value` strings. */
export interface IoctlText {
  readonly line: string;
  readonly name: string;
  readonly input: string[] | null;
  readonly output: string[] | null;
  readonly result: string;
}

/**
 * One step: an ioctl, a front end's note (open, read, mmap...), a context
 * opened or released, or what happened outside any call (an fd closed);
 * with the events that happened inside it and the graph after it.
 */
export interface StepMessage {
  readonly type: 'step';
  readonly step: number;
  /** Milliseconds since the session started. */
  readonly time: number;
  /** The event that closes the step (null: events outside any call). */
  readonly head: JsonEvent | null;
  readonly ioctl?: IoctlText;
  readonly events: JsonEvent[];
  /** Events of this step left out past the per-step limit (a huge unmap, a driver's trace points). */
  readonly eventsDropped?: number;
  /** The graph after the step; omitted when unchanged since the previous step. */
  readonly graph?: JsonGraph;
}

export interface StatusMessage {
  readonly type: 'status';
  /** waiting: for a page to connect before the program starts. */
  readonly state: 'waiting' | 'running' | 'exited' | 'serving';
  readonly exitStatus?: number;
  readonly text?: string;
}

export type Message = HelloMessage | StepMessage | StatusMessage;
