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

/** The one error type of the emulator: a kernel errno, by name and number. */
export class IommufdError extends Error {
  readonly errno: number;
  constructor(readonly code: ErrnoName, detail?: string) {
    super(detail ? `${code}: ${detail}` : code);
    this.name = 'IommufdError';
    this.errno = ERRNO[code];
  }
}

/** Throw the kernel errno `code`. `detail` is for humans only; nothing compares it. */
export function fail(code: ErrnoName, detail?: string): never {
  throw new IommufdError(code, detail);
}

export function isErrno(e: unknown, code?: ErrnoName): e is IommufdError {
  return e instanceof IommufdError && (code === undefined || e.code === code);
}
