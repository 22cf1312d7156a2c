// Starting the inspector from the command line: a session on an emulator,
// optionally recording, optionally served on loopback; and serving a
// recording for replay.
import type { Emulator } from '../core/emulator.js';
import { serveInspector, type InspectorServer } from './http.js';
import { InspectSession, Recording, type MessageSource } from './session.js';

/** The port `--inspect` uses when none is given (a free one is taken if it is busy). */
export const DEFAULT_PORT = 7373;

export interface InspectOptions {
  /** `--inspect[=PORT]`: true = the default port. Absent: no server. */
  inspect?: boolean | string;
  /** `--inspect-record FILE`. */
  record?: string;
  argv?: string[];
}

export interface Inspector {
  readonly session: InspectSession;
  readonly server: InspectorServer | null;
  close(): Promise<void>;
}

/** Parse a `--inspect` value: true -> the default port; "0" -> any free port. */
export function inspectPort(v: boolean | string): number {
  if (v === true) return DEFAULT_PORT;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`--inspect: bad port ${JSON.stringify(v)}`);
  return n;
}

/** Serve `source` on `port`; the default port falls back to a free one when taken. */
export async function serveOn(source: MessageSource, port: number, log: (m: string) => void): Promise<InspectorServer> {
  try {
    return await serveInspector(source, port);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || port !== DEFAULT_PORT) throw e;
    log(`port ${port} is in use; taking a free one`);
    return serveInspector(source, 0);
  }
}

/** Attach a session to `emu` (recording if asked) and serve it (if asked). */
export async function startInspector(emu: Emulator, opts: InspectOptions, log: (m: string) => void): Promise<Inspector> {
  const session = new InspectSession(emu, { argv: opts.argv, record: opts.record });
  let server: InspectorServer | null = null;
  try {
    if (opts.inspect) server = await serveOn(session, inspectPort(opts.inspect), log);
  } catch (e) {
    session.close();
    throw e;
  }
  return {
    session,
    server,
    async close() {
      session.close();
      await server?.close();
    },
  };
}

/** `iommufd-emu inspect FILE`: serve a recording for replay. */
export async function serveRecording(file: string, port: number, log: (m: string) => void): Promise<InspectorServer> {
  return serveOn(Recording.load(file), port, log);
}
