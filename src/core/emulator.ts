// The emulator instance: one ABI profile, the dispatch table, global state that
// the kernel keeps across contexts (pinned-page accounting, fault injection, the
// selftest globals), and the contexts it opened.
import { fail, type ErrnoName } from '../uapi/errno.js';
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

  /**
   * Fault injection (fail-nth): 0 = off; otherwise the N-th failure point hit
   * during the current call fails. The server sets it per call and reads it back.
   */
  failNth = 0;

  constructor(opts: EmulatorOptions = {}) {
    this.profile = getProfile(opts.profile ?? 'mainline');
    this.selftest = opts.selftest ?? true;
    this.noiommu = opts.noiommu ?? false;
    this.table = ioctlTable(this.profile, this.selftest);
    this.byName = new Map([...this.table.values()].map((d) => [d.name, d]));
    // The kernel's table ends at its last real command; the test cmd sits further out.
    this.lastNr = Math.max(...this.table.keys());
  }

  /** open("/dev/iommu"): a new context owned by `owner`'s process. */
  open(owner: UserMemory): IommufdCtx {
    this.failPoint('ENOMEM');
    const ctx = new IommufdCtx(this, owner, ++this.ctxSeq);
    this.contexts.add(ctx);
    if (this.bus.on) this.bus.emit({ t: 'ctx', op: 'open', ctx: ctx.seq, pid: owner.process.pid });
    return ctx;
  }

  /** A numbered allocation/copy point that fault injection can make fail with `code`. */
  failPoint(code: ErrnoName): void {
    if (this.failNth > 0 && --this.failNth === 0) fail(code, 'fault injection');
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
