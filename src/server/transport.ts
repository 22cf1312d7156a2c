// How frames move between shim and server, behind a small interface so that
// the server's logic does not care which way a frame came. A transport
// delivers whole frames (u32 length first, see wire.ts) in order, per link,
// and reports the link's end once.
//
// Two ways: the Unix socket (every link starts there), and the fast path a
// control connection can switch to (FAST): one request/reply slot in a sealed
// memfd the client and the server both map (wire.ts SLOT). A blocking socket
// round trip costs two wake-ups of a sleeping CPU (most of its ~60 us on an
// idle VM); through the slot, the server keeps polling its slots for a short
// idle window after the last request, so back-to-back calls never wake it,
// and a client may spin briefly on the reply (IOMMUFD_EMU_SPIN_US; off by
// default: measured slower on a busy machine, bench/RESULTS.md). Either side that stops
// spinning sleeps where it always did (the client in recv on its control
// socket, the server in the event loop), and the other rings it with one
// doorbell byte on that socket, so an idle client or server burns no CPU, and
// a dead peer is still seen as EOF.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { MAX_FRAME, SLOT } from './wire.js';

/** One peer connection. */
export interface Link {
  readonly id: number;
  send(frame: Uint8Array): void;
  /** Drop the connection; no more events are delivered. */
  destroy(): void;
  /**
   * Move this link's frames to the fast-path slot in the file `fd` (the
   * server opened the client's memfd): `reply` still goes out the old way,
   * every frame after it through the slot. Returns why not (null: done).
   */
  upgrade?(fd: number, reply: Uint8Array): string | null;
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

/** The native half of the fast path (native/fastpath.c): mapping a client's slot. */
export interface SlotMapper {
  map(fd: number, size: number): ArrayBuffer;
  unmap(ab: ArrayBuffer): void;
  /** sched_yield(): spinning, but let whoever shares this CPU (the client, often) run. */
  yield(): void;
  /** The slot's words, with real atomics (see native/fastpath.c): seq_req now. */
  seq(ab: ArrayBuffer): number;
  /** Store srv_spin, then read seq_req (in that order: see SlotPoller.sleep). */
  spin(ab: ArrayBuffer, on: boolean): number;
  /** Store seq_rep = seq, then take cli_sleep if it is seq (never a later call's): true if the client sleeps waiting for it. */
  publish(ab: ArrayBuffer, seq: number): boolean;
}

export interface FastPathOptions {
  mapper: SlotMapper;
  /**
   * How long the server keeps polling the slots after the last request
   * before it sleeps in the event loop (microseconds; 0: never spin, every
   * request rings). Default DEFAULT_SERVER_SPIN_US.
   */
  spinUs?: number;
}

/**
 * Default server idle window: above the gaps between the calls of a client
 * in a loop (a few microseconds) and most gaps of a test suite, so a busy
 * client seldom finds the server asleep, while a client that went quiet costs
 * at most this much CPU (bench/RESULTS.md).
 */
export const DEFAULT_SERVER_SPIN_US = 250;
/** Longest the server spins in one go before it lets the event loop run (other sockets, timers). */
const SLICE_MS = 2;
/**
 * After this long without a request the server yields the CPU on every empty
 * round: a client the scheduler put on the server's CPU (it often does, waking
 * one by the other) could not run at all while the server spins.
 */
const PURE_SPIN_MS = 0.01;
/**
 * A doorbell this long after the poller went to sleep is a client calling rarely
 * (an idle VMM, a program sleeping between calls): its call is answered without
 * the idle window after it, which would only burn CPU (bench/RESULTS.md, the
 * server's CPU over calls a second apart). The next call, if it follows soon, has
 * the window again.
 */
const RARE_GAP_MS = 50;

/** One client's slot, as the server sees it. Nothing in it is trusted: a frame is copied out once, then checked. */
class Slot {
  private readonly req: Buffer;
  private readonly rep: Buffer;
  /** The last request number taken. */
  private taken = 0;
  /** A request was taken and its reply is not written yet. */
  pending = false;
  dead = false;

  constructor(readonly ab: ArrayBuffer, private readonly mapper: SlotMapper, private readonly take: (frame: Buffer) => void,
    private readonly refuse: (reason: string) => void, private readonly ring: () => void) {
    this.req = Buffer.from(ab, SLOT.REQ_OFF, MAX_FRAME);
    this.rep = Buffer.from(ab, SLOT.REP_OFF, MAX_FRAME);
  }

  /** Is a new request waiting (seq: seq_req as just read)? */
  ready(seq = this.dead ? this.taken : this.mapper.seq(this.ab)): boolean {
    return !this.pending && !this.dead && seq !== this.taken;
  }

  /** Take and deliver the waiting request, if any; true if there was one. */
  poll(): boolean {
    if (this.pending || this.dead) return false;
    const seq = this.mapper.seq(this.ab);
    if (seq === this.taken) return false;
    this.taken = seq;
    const len = this.req.readUInt32LE(0);
    if (len < 8 || len > MAX_FRAME) {
      this.refuse(`malformed frame: length ${len}`);
      return true;
    }
    const frame = Buffer.allocUnsafe(len);
    this.req.copy(frame, 0, 0, len); // our own copy: the client may scribble on the slot meanwhile
    this.pending = true;
    this.take(frame);
    return true;
  }

  /** The reply to the taken request. */
  reply(b: Uint8Array): void {
    if (this.dead || !this.pending || b.length > MAX_FRAME) return; // only replies travel this way
    this.rep.set(b, 0);
    this.pending = false;
    // The client went to sleep waiting for this one: ring it (see the shim's slot_call_locked()).
    if (this.mapper.publish(this.ab, this.taken)) this.ring();
  }

  /** Store srv_spin; true if a request is waiting (read after the store). */
  setSpin(on: boolean): boolean {
    return this.dead ? false : this.ready(this.mapper.spin(this.ab, on));
  }
}

/**
 * Polls every upgraded link's slot on the server's thread (handlers run
 * there, synchronously), from a doorbell until the idle window has passed
 * with no request, in slices that let the event loop run in between.
 */
class SlotPoller {
  private readonly slots = new Set<Slot>();
  private running = false;
  private lastWork = 0;
  /** When polling last stopped. */
  private sleptAt = -Infinity;
  /** This busy period's idle window: spinMs, or 0 after a long sleep (RARE_GAP_MS). */
  private windowMs = 0;
  /** Frames taken from slots so far (tests: the slot carried a client's calls). */
  frames = 0;
  readonly spinMs: number;

  constructor(spinUs: number, private readonly mapper: SlotMapper) {
    this.spinMs = Math.max(0, spinUs) / 1000;
  }

  get size(): number {
    return this.slots.size;
  }

  /** Polling now (false: asleep in the event loop until a doorbell). */
  get spinning(): boolean {
    return this.running;
  }

  add(s: Slot): void {
    this.slots.add(s);
    s.setSpin(this.running);
  }

  remove(s: Slot): void {
    this.slots.delete(s);
  }

  /** A doorbell rang (or a slot was added): poll now. */
  kick(): void {
    this.lastWork = performance.now();
    if (this.running) return;
    this.windowMs = this.lastWork - this.sleptAt > RARE_GAP_MS ? 0 : this.spinMs;
    this.running = true;
    for (const s of this.slots) s.setSpin(true);
    this.loop();
  }

  private readonly loop = (): void => {
    const start = performance.now();
    for (;;) {
      let busy = false;
      for (const s of this.slots) {
        if (s.poll()) {
          busy = true;
          this.frames++;
        }
      }
      const now = performance.now();
      if (busy) this.lastWork = now;
      else if (now - this.lastWork >= this.windowMs) {
        if (this.sleep()) return;
      } else if (now - this.lastWork >= PURE_SPIN_MS) this.mapper.yield();
      if (now - start >= SLICE_MS) {
        setImmediate(this.loop); // the event loop polls without blocking while this is pending
        return;
      }
    }
  };

  /**
   * Stop polling: tell every client to ring, then look once more (a request
   * published before a client saw the flag cleared would otherwise wait).
   */
  private sleep(): boolean {
    let waiting = false;
    for (const s of this.slots) if (s.setSpin(false)) waiting = true;
    if (waiting) {
      for (const t of this.slots) t.setSpin(true);
      this.lastWork = performance.now();
      return false;
    }
    this.running = false;
    this.sleptAt = performance.now();
    return true;
  }
}

/** The Unix-socket transport: a private socket file (mode 0600), one stream per link; control links may move to a slot. */
export class UnixTransport implements Transport {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private readonly poller: SlotPoller | null;
  private readonly mapper: SlotMapper | null;

  constructor(readonly socketPath: string, fast?: FastPathOptions | null) {
    this.mapper = fast?.mapper ?? null;
    this.poller = fast ? new SlotPoller(fast.spinUs ?? DEFAULT_SERVER_SPIN_US, fast.mapper) : null;
  }

  /** Links on the fast path now (tests). */
  get fastLinks(): number {
    return this.poller?.size ?? 0;
  }

  /** Frames taken from slots so far. */
  get slotFrames(): number {
    return this.poller?.frames ?? 0;
  }

  /** The server is polling the slots now (false: asleep until a doorbell). */
  get fastSpinning(): boolean {
    return this.poller?.spinning ?? false;
  }

  /** The server's idle window in microseconds, or null without the fast path. */
  get spinUs(): number | null {
    return this.poller ? this.poller.spinMs * 1000 : null;
  }

  async listen(accept: (link: Link) => LinkEvents): Promise<void> {
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o700 });
    try {
      if (fs.statSync(this.socketPath).isSocket()) fs.unlinkSync(this.socketPath);
    } catch { /* absent */ }
    const srv = net.createServer({ allowHalfOpen: false }, (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      streamLink(s, accept, this.poller && this.mapper ? { poller: this.poller, mapper: this.mapper } : null);
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

const DOORBELL = Buffer.from([0]);

/** Split a byte stream into frames; after an upgrade, frames come from the slot and the stream is doorbells. */
function streamLink(socket: net.Socket, accept: (link: Link) => LinkEvents,
  fast: { poller: SlotPoller; mapper: SlotMapper } | null): void {
  let pending: Buffer | null = null;
  let ended = false;
  let slot: Slot | null = null;
  const link: Link = {
    id: ++linkSeq,
    send(b) {
      if (slot) slot.reply(b);
      else if (!socket.destroyed) socket.write(b);
    },
    destroy() {
      finish();
      socket.destroy();
    },
  };
  if (fast) {
    link.upgrade = (fd, reply) => {
      if (slot) return 'already on the fast path';
      if (ended) return 'connection gone';
      let ab: ArrayBuffer;
      try {
        ab = fast.mapper.map(fd, SLOT.SIZE);
      } catch (e) {
        return (e as Error).message;
      }
      link.send(reply);
      slot = new Slot(ab, fast.mapper, (f) => deliver(f), (why) => refuse(why), () => {
        if (!socket.destroyed) socket.write(DOORBELL);
      });
      fast.poller.add(slot);
      return null;
    };
  }
  const ev = accept(link);
  function finish(): void {
    if (ended) return;
    if (slot && fast) {
      // A request published before the client went away is served, as bytes
      // read before a socket's EOF are.
      slot.poll();
      if (ended) return;
      ended = true;
      slot.dead = true;
      fast.poller.remove(slot);
      fast.mapper.unmap(slot.ab);
    }
    ended = true;
    const left = pending?.length ?? 0;
    pending = null;
    ev.end(left);
  }
  function refuse(reason: string): void {
    ev.malformed(reason);
    link.destroy();
  }
  /** A frame taken from the slot: the same checks as one read from the socket. */
  function deliver(frame: Buffer): void {
    const why = ev.header(frame.length, frame.readUInt32LE(4));
    if (why) return refuse(`malformed frame: ${why}`);
    ev.frame(frame);
  }
  /**
   * Bytes on an upgraded link's socket: doorbells (zero bytes), or a frame the
   * client wrote behind its slot's back. That frame would never be answered
   * (replies go to the slot) and the client would wait for ever: refused, so it
   * sees the connection end instead. A frame's length (8..MAX_FRAME) always has
   * a nonzero byte among its first two, so any nonzero byte is one.
   */
  function doorbells(d: Buffer, from: number): void {
    for (let i = from; i < d.length; i++) {
      if (d[i] !== 0) return refuse('malformed frame: on the socket after FAST (frames go through the slot)');
    }
    if (from < d.length) fast!.poller.kick();
  }
  socket.on('data', (d: Buffer) => {
    if (ended) return;
    if (slot) return doorbells(d, 0);
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
      if (slot) return doorbells(buf, off); // upgraded by that frame: anything after it is a doorbell
    }
    pending = off < buf.length ? Buffer.from(buf.subarray(off)) : null;
  });
  socket.on('end', finish);
  socket.on('error', finish);
  socket.on('close', finish);
}
