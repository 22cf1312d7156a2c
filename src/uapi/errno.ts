// Linux errno numbers (x86-64/arm64 generic values) used by the IOMMUFD uAPI.
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOTTY: 25,
  ENOSPC: 28,
  ESPIPE: 29,
  ERANGE: 34,
  EDEADLK: 35,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  EOVERFLOW: 75,
  EBADFD: 77,
  EBADE: 52,
} as const;

export type ErrnoName = keyof typeof ERRNO;

const BY_NUMBER = new Map<number, ErrnoName>(
  (Object.entries(ERRNO) as [ErrnoName, number][]).map(([k, v]) => [v, k]),
);

export function errnoName(n: number): ErrnoName | undefined {
  return BY_NUMBER.get(n);
}

/** The one error type of the emulator: a kernel errno, by name and number, and the check that failed. */
export class IommufdError extends Error {
  readonly errno: number;
  /** Which check failed ("pt_id is not a nest parent"); prefixed with the ioctl once it leaves one. */
  reason: string | undefined;
  constructor(readonly code: ErrnoName, reason?: string) {
    super(reason ? `${code}: ${reason}` : code);
    this.name = 'IommufdError';
    this.errno = ERRNO[code];
    this.reason = reason;
    errnoWatch.fn?.(this);
  }

  /** Name the operation the check belongs to (once): "HWPT_ALLOC: pt_id is not a nest parent". */
  inOp(op: string): this {
    if (this.reason && !this.reason.startsWith(`${op}:`)) {
      this.reason = `${op}: ${this.reason}`;
      this.message = `${this.code}: ${this.reason}`;
    }
    return this;
  }
}

/**
 * Set while a trace listener wants every failing check (core/trace_bus.ts):
 * called with each error as it is made, before it is thrown.
 */
export const errnoWatch: { fn: ((e: IommufdError) => void) | null } = { fn: null };

/**
 * Throw the kernel errno `code`. `reason` says which check failed, for
 * humans (traces, the typed API's message); nothing compares it.
 */
export function fail(code: ErrnoName, reason?: string): never {
  throw new IommufdError(code, reason);
}

export function isErrno(e: unknown, code?: ErrnoName): e is IommufdError {
  return e instanceof IommufdError && (code === undefined || e.code === code);
}
