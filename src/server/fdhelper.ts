// The server's references to client files Node cannot hold: eventfds a
// client passes by number inside a VFIO struct (SET_IRQS, the low-power wake
// eventfd). The kernel takes a reference on such a file (eventfd_ctx_fdget)
// that outlives the caller's fd; native/fdhelper.c copies the file out of the
// client with pidfd_getfd(2) and signals or drops it when asked. Calls are
// synchronous (the handlers are): an interrupt raised during a call has
// reached the eventfd when the call returns.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fail } from '../uapi/errno.js';
import { buildProgram, PACKAGE_ROOT } from './native.js';

const OP = { GET: 1, SIGNAL: 2, PUT: 3 } as const;

export class FdHelper {
  private child: ChildProcess | null = null;
  private req = -1;
  private rep = -1;
  private dir: string | null = null;
  private started = false;
  private dead = false;
  private readonly out = Buffer.alloc(8);

  constructor(private readonly log: (m: string) => void) {}

  private start(): void {
    if (this.child || this.dead) return;
    const exe = buildProgram([path.join(PACKAGE_ROOT, 'native', 'fdhelper.c')], { name: 'iommufd-emu-fdhelper' });
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-fdh-'));
    const rq = path.join(this.dir, 'req');
    const rp = path.join(this.dir, 'rep');
    execFileSync('mkfifo', ['-m', '600', rq, rp]);
    // Ours first, so the helper's blocking opens find their peers (read and write ends never block here).
    this.req = fs.openSync(rq, fs.constants.O_RDWR);
    this.rep = fs.openSync(rp, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    this.child = spawn(exe, [rq, rp], { stdio: ['ignore', 'ignore', 'inherit'] });
    this.child.unref();
    this.child.on('exit', () => {
      this.dead = true;
    });
  }

  private call(op: number, pid: number, fd: number, id: number): number {
    this.start();
    if (this.dead || this.req < 0) fail('ENOMEM', 'the fd helper is not running');
    const q = Buffer.alloc(16);
    q.writeUInt32LE(op, 0);
    q.writeUInt32LE(pid, 4);
    q.writeInt32LE(fd, 8);
    q.writeUInt32LE(id, 12);
    fs.writeSync(this.req, q);
    let got = 0;
    const deadline = Date.now() + (this.started ? 10000 : 5000);
    while (got < 8) {
      let n: number;
      try {
        n = fs.readSync(this.rep, this.out, got, 8 - got, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        continue; // the helper is working on it
      }
      got += n;
      // end of file: before the helper opened its end (wait a while), or once it is gone
      if (n === 0 && (this.started || Date.now() > deadline)) {
        this.dead = true;
        this.log('fd helper: no reply (gone)');
        fail('ENOMEM', 'the fd helper did not answer');
      }
    }
    this.started = true;
    return this.out.readInt32LE(0);
  }

  /** A reference to eventfd `fd` of process `pid` (EBADF: not open; EINVAL: not an eventfd). */
  get(pid: number, fd: number): number {
    const r = this.call(OP.GET, pid, fd, 0);
    if (r === -9) fail('EBADF', `fd ${fd} of pid ${pid} is not open`);
    if (r === -22) fail('EINVAL', `fd ${fd} of pid ${pid} is not an eventfd`);
    if (r < 0) fail('EBADF', `fd ${fd} of pid ${pid} cannot be taken (errno ${-r})`);
    return r;
  }

  /** eventfd_signal: add 1 to its counter. */
  signal(id: number): void {
    if (!this.dead) this.call(OP.SIGNAL, 0, 0, id);
  }

  put(id: number): void {
    if (!this.dead) this.call(OP.PUT, 0, 0, id);
  }

  close(): void {
    for (const fd of [this.req, this.rep]) {
      if (fd >= 0) fs.closeSync(fd);
    }
    this.req = this.rep = -1;
    this.child?.kill();
    this.child = null;
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
    this.dir = null;
  }
}
