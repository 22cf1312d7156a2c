// The emulator instance: one ABI profile, the dispatch table, global state that
// the kernel keeps across contexts (pinned-page accounting, fault injection, the
// selftest globals), and the contexts it opened.
import { fail, type ErrnoName } from '../uapi/errno.js';
import { FaultInjection, type Gfp } from './fault_inject.js';
import { ioctlTable, type IoctlName, type ProfileIoctl } from '../uapi/ioctls.js';
import { getProfile, type Profile, type ProfileName } from '../uapi/profiles.js';
import { IommufdCtx, type Caller, type Handler } from './context.js';
import { TraceBus } from './trace_bus.js';
import { UserAccounting, type UserMemory } from './usermem.js';

export interface EmulatorOptions {
  profile?: ProfileName;
  /** Compile in the selftest interface (IOMMU_TEST_CMD and the mock driver). Default true. */
  selftest?: boolean;
  /**
   * CONFIG_IOMMUFD_NOIOMMU (7.3+; selected only by VFIO_NOIOMMU with VFIO_DEVICE_CDEV, so off
   * in a default build). Off: IOMMU_IOAS_NOIOMMU_GET_PA is in the dispatch table (size
   * rules apply) and answers EOPNOTSUPP. Default false.
   */
  noiommu?: boolean;
}

export type CompatHandler = (ctx: IommufdCtx, request: number, arg: bigint, caller: Caller) => number;

/** Registered by feature modules (handlers.ts wires them). */
export interface Registry {
  handlers: Map<IoctlName, Handler>;
  compat?: CompatHandler;
  releaseHooks: ((ctx: IommufdCtx) => void)[];
}

export const REGISTRY: Registry = { handlers: new Map(), releaseHooks: [] };

export class Emulator {
  readonly profile: Profile;
  readonly selftest: boolean;
  /** CONFIG_IOMMUFD_NOIOMMU (see EmulatorOptions). */
  readonly noiommu: boolean;
  readonly table: Map<number, ProfileIoctl>;
  readonly byName: Map<string, ProfileIoctl>;
  readonly lastNr: number;
  readonly handlers = REGISTRY.handlers;
  readonly releaseHooks = REGISTRY.releaseHooks;
  /** Per-user locked pages (accounting mode 0), across contexts. */
  readonly userAccounting = new UserAccounting();
  /** Selftest SET_TEMP_MEMORY_LIMIT (global, bytes). */
  tempMemoryLimit = 65536;
  /** Emulator-wide state owned by feature modules. */
  readonly ext = new Map<string, unknown>();
  /** Trace events of every context (see trace_bus.ts); free while nobody subscribes. */
  readonly bus = new TraceBus();
  /** Open contexts, in opening order (a context leaves when its last reference goes). */
  readonly contexts = new Set<IommufdCtx>();
  private ctxSeq = 0;

  /** Fault injection: the calling task's fail-nth counter and the debugfs switches (fault_inject.ts). */
  readonly faults = new FaultInjection();

  /**
   * The fail-nth counter: 0 = off; otherwise the N-th failure point evaluated fails. The
   * server sets it per call and reads it back.
   */
  get failNth(): number {
    return this.faults.nth;
  }
  set failNth(v: number) {
    this.faults.nth = v;
  }

  constructor(opts: EmulatorOptions = {}) {
    this.profile = getProfile(opts.profile ?? 'mainline');
    this.selftest = opts.selftest ?? true;
    this.noiommu = opts.noiommu ?? false;
    this.table = ioctlTable(this.profile, this.selftest);
    this.byName = new Map([...this.table.values()].map((d) => [d.name, d]));
    // The kernel's table ends at its last real command; the test cmd sits further out.
    this.lastNr = Math.max(...this.table.keys());
  }

  /**
   * open("/dev/iommu"): a new context owned by `owner`'s process. The VFS's points come
   * first: the path's name buffer, copying the path in, the file; then the context.
   */
  open(owner: UserMemory): IommufdCtx {
    this.allocPoint(); // getname(): the names_cache buffer
    this.copyPoint(); // strncpy_from_user() of the path
    this.allocPoint(); // alloc_empty_file()
    this.allocPoint(); // iommufd_fops_open(): the context
    const ctx = new IommufdCtx(this, owner, ++this.ctxSeq);
    this.contexts.add(ctx);
    if (this.bus.on) this.bus.emit({ t: 'ctx', op: 'open', ctx: ctx.seq, pid: owner.process.pid });
    return ctx;
  }

  /** A slab allocation (fault injection: failslab) whose failure the call returns as ENOMEM. */
  allocPoint(gfp: Gfp = 'kernel'): void {
    this.faults.alloc(gfp);
  }

  /** anon_inode_getfile(): the file's dentry, then the file (get_unused_fd_flags() allocates nothing). */
  anonFilePoints(): void {
    this.allocPoint();
    this.allocPoint();
  }

  /** A user copy (fail_usercopy): EFAULT. */
  copyPoint(): void {
    this.faults.copy();
  }

  /** One of iommufd's own points (fail_iommufd, iommufd_should_fail()), failing with `code`. */
  iommufdPoint(code: ErrnoName): void {
    this.faults.iommufdPoint(code);
  }

  /** Emulator-wide state a feature module keeps under `key` (its driver, the VFIO subsystem), made on first use. */
  extState<T>(key: string, make: () => T): T {
    let v = this.ext.get(key) as T | undefined;
    if (v === undefined) {
      v = make();
      this.ext.set(key, v);
    }
    return v;
  }

  compatIoctl(ctx: IommufdCtx, request: number, arg: bigint, caller: Caller): number {
    const h = REGISTRY.compat;
    if (!h) fail('ENOTTY', 'no compat (VFIO) ioctls in this emulator');
    return h(ctx, request, arg, caller);
  }
}
