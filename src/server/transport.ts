// How frames move between shim and server, behind a small interface so that
// another transport (busy-polled shared memory, say) can replace the Unix
// socket without touching the server's logic. A transport delivers whole
// frames (u32 length first, see wire.ts) in order, per link, and reports the
// link's end once.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { MAX_FRAME } from './wire.js';

/** One peer connection. */
export interface Link {
  readonly id: number;
  send(frame: Uint8Array): void;
  /** Drop the connection; no more events are delivered. */
  destroy(): void;
}

/** What the server does with a link's traffic. */
export interface LinkEvents {
  /** A header (length, type) has arrived: a reason to refuse the frame, or null to wait for the rest of it. */
  header(len: number, type: number): string | null;
  frame(frame: Buffer): void;
  /** The peer sent something that is not a frame (or header() refused it). */
  malformed(reason: string): void;
  /** The link is gone (peer closed, error, or destroy()); `truncated`: bytes of an unfinished frame left. */
  end(truncated: number): void;
}

export interface Transport {
  listen(accept: (link: Link) => LinkEvents): Promise<void>;
  close(): Promise<void>;
}

let linkSeq = 0;

/** The Unix-socket transport: a private socket file (mode 0600), one stream per link. */
export class UnixTransport implements Transport {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();

  constructor(readonly socketPath: string) {}

  async listen(accept: (link: Link) => LinkEvents): Promise<void> {
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o700 });
    try {
      if (fs.statSync(this.socketPath).isSocket()) fs.unlinkSync(this.socketPath);
    } catch { /* absent */ }
    const srv = net.createServer({ allowHalfOpen: false }, (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      streamLink(s, accept);
    });
    this.server = srv;
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(this.socketPath, () => resolve());
      });
    } finally {
      process.umask(oldMask);
    }
    fs.chmodSync(this.socketPath, 0o600);
  }

  async close(): Promise<void> {
    for (const s of [...this.sockets]) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    try {
      fs.unlinkSync(this.socketPath);
    } catch { /* gone */ }
  }
}

/** Split a byte stream into frames. */
function streamLink(socket: net.Socket, accept: (link: Link) => LinkEvents): void {
  let pending: Buffer | null = null;
  let ended = false;
  const link: Link = {
    id: ++linkSeq,
    send(b) {
      if (!socket.destroyed) socket.write(b);
    },
    destroy() {
      finish();
      socket.destroy();
    },
  };
  const ev = accept(link);
  function finish(): void {
    if (ended) return;
    ended = true;
    const left = pending?.length ?? 0;
    pending = null;
    ev.end(left);
  }
  function refuse(reason: string): void {
    ev.malformed(reason);
    link.destroy();
  }
  socket.on('data', (d: Buffer) => {
    if (ended) return;
    const buf = pending && pending.length ? Buffer.concat([pending, d]) : d;
    let off = 0;
    while (buf.length - off >= 8) {
      const len = buf.readUInt32LE(off);
      if (len < 8 || len > MAX_FRAME) return refuse(`malformed frame: length ${len}`);
      const why = ev.header(len, buf.readUInt32LE(off + 4));
      if (why) return refuse(`malformed frame: ${why}`);
      if (buf.length - off < len) break;
      const frame = buf.subarray(off, off + len);
      off += len;
      ev.frame(frame);
      if (ended) return;
    }
    pending = off < buf.length ? Buffer.from(buf.subarray(off)) : null;
  });
  socket.on('end', finish);
  socket.on('error', finish);
  socket.on('close', finish);
}
