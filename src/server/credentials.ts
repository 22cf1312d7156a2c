// A client process as the core sees it (ProcessInfo), with the kernel's live credential
// rules: capable() is asked of the calling thread at the call (the shim sends the
// effective capability set with every ioctl), and RLIMIT_MEMLOCK of the task a pages
// object is charged to is read at every pin (task_rlimit(source_task)). During a call
// from the process itself the limit the frame carries is current; for any other
// process (a pin charged to another process: its pages, or a CHANGE_PROCESS target)
// it is read from /proc/<pid>/limits, which another process may have changed
// (prlimit) at any time.
import * as fs from 'node:fs';
import type { ProcessInfo } from '../core/usermem.js';
import { CAP, type Values, type REQ } from './wire.js';

const U64_MAX = (1n << 64n) - 1n;

/** RLIMIT_MEMLOCK (soft) of `pid` in bytes from /proc/<pid>/limits; undefined if unreadable. */
export function readMemlockLimit(pid: number): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/limits`, 'latin1');
  } catch {
    return undefined;
  }
  const m = /^Max locked memory\s+(\S+)/m.exec(text);
  if (!m) return undefined;
  if (m[1] === 'unlimited') return Infinity;
  const v = Number(m[1]);
  return Number.isFinite(v) ? v : undefined;
}

export class ClientProcess implements ProcessInfo {
  capSysResource: boolean;
  capIpcLock: boolean;
  capSysRawio: boolean;
  lockedPages = 0;
  pinnedPages = 0;
  alive = true;
  /** The limit the process last reported (its value during its own calls). */
  private reported: number;
  private inCall = false;

  constructor(readonly pid: number, readonly uid: number, caps: number, memlock: bigint,
    private readonly readLimit: (pid: number) => number | undefined = readMemlockLimit) {
    this.capSysResource = !!(caps & CAP.SYS_RESOURCE);
    this.capIpcLock = !!(caps & CAP.IPC_LOCK);
    this.capSysRawio = !!(caps & CAP.SYS_RAWIO);
    this.reported = memlock === U64_MAX ? Infinity : Number(memlock);
  }

  get memlockLimit(): number {
    if (this.inCall || !this.alive) return this.reported;
    const now = this.readLimit(this.pid);
    if (now !== undefined) this.reported = now;
    return this.reported;
  }
  set memlockLimit(v: number) {
    this.reported = v;
  }

  /** A call from this process starts: its thread's credentials as the frame reports them. */
  beginCall(f: Pick<Values<typeof REQ.IOCTL.spec>, 'memlock' | 'caps'>, grants: number): void {
    const caps = f.caps | grants;
    this.capSysResource = !!(caps & CAP.SYS_RESOURCE);
    this.capIpcLock = !!(caps & CAP.IPC_LOCK);
    this.capSysRawio = !!(caps & CAP.SYS_RAWIO);
    this.reported = f.memlock === U64_MAX ? Infinity : Number(f.memlock);
    this.inCall = true;
  }

  endCall(): void {
    this.inCall = false;
  }
}
