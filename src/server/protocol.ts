// Wire protocol between the LD_PRELOAD shim (native/shim.c) and the server.
// Every frame, both directions, starts with a u32 total length (header
// included); requests then carry a u32 type. All integers little-endian. The
// layouts below are mirrored by native/shim.c (keep the two in step).
//
// Connection kinds (decided by the first frame):
//   control  HELLO + PROVE (the process shows it is the pid it claims by putting
//            a server nonce in its memory), then IOCTL / SYNC / REGION / UNMAP / FILEOP / LOOKUP / MMAP / MRELEASE   (one per process image)
//   anchor   OPEN, nothing else                                  (one per open("/dev/iommu"): the fd)
//   event    EVPREP, nothing else                                (one per fd an ioctl returns)
// The anchor and event sockets ARE the client's fds, so dup/fork/exit/close
// semantics come from the kernel; the server sees EOF when the last holder is gone.

export const T_HELLO = 1;
export const T_OPEN = 2;
export const T_IOCTL = 3;
export const T_SYNC = 4;
export const T_REGION = 5;
export const T_UNMAP = 6;
export const T_EVPREP = 7;
export const T_FILEOP = 8;
export const T_LOOKUP = 9;
export const T_MMAP = 10;
export const T_MRELEASE = 11;
export const T_PROVE = 12;

/** Exact request sizes (header included). */
export const REQ_SIZE: Record<number, number> = {
  // len type pid ppid uid caps memlock(u64)
  [T_HELLO]: 8 + 4 * 4 + 8,
  // len type pid tid failnth fd (the number open() returns, for traces) ino(u64: the client's socket inode)
  [T_OPEN]: 8 + 4 * 4 + 8,
  // len type token pid tid request arg(u64) failnth evfd evtoken mapgen memlock(u64) inl
  // hintfd hinttoken pad hintsecret(u64) (an event fd the call may look up, as the shim knows it: -1 none),
  // then inl (<= IOCTL_INLINE_MAX) bytes: the caller's memory from arg on, as the shim read it
  [T_IOCTL]: 8 + 4 * 4 + 8 + 4 * 4 + 8 + 4 + 4 * 3 + 8,
  [T_SYNC]: 8,
  // len type va len off memfd flags
  [T_REGION]: 8 + 8 + 8 + 8 + 4 + 4,
  // len type va len
  [T_UNMAP]: 8 + 8 + 8,
  // len type ino(u64)
  [T_EVPREP]: 8 + 8,
  // len type evtoken op buf count pos failnth mapgen
  [T_FILEOP]: 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4,
  // len type ino(u64): which emulated fd is this socket (fds inherited across exec or passed over SCM_RIGHTS)
  [T_LOOKUP]: 8 + 8,
  // len type token prot offset(u64) length(u64) flags memfd: mmap of the iommufd (01 §5.8)
  [T_MMAP]: 8 + 4 + 4 + 8 + 8 + 4 + 4,
  // len type handle pad: that mapping is gone (munmap)
  [T_MRELEASE]: 8 + 4 + 4,
  // len type addr(u64): where the client put the HELLO nonce in its own memory
  [T_PROVE]: 8 + 8,
};

/** Most bytes of the caller's struct an IOCTL frame carries inline. */
export const IOCTL_INLINE_MAX = 256;

/**
 * Requests followed by a variable tail: the u32 at offset `at` is its length
 * (at most `max`); the frame is exactly REQ_SIZE + that length.
 */
export const REQ_TAIL: Record<number, { at: number; max: number }> = {
  [T_IOCTL]: { at: 56, max: IOCTL_INLINE_MAX },
};

/** Reply sizes (u32 length first). */
export const REP_SIZE = {
  status: 8, // len, s32 status
  hello: 24, // len, s32 status, u64[2] nonce (to be placed in the client's memory, then PROVE)
  open: 16, // len, s32 err, u32 token, s32 failnth
  // len, pad, s64 ret, s32 failnth, u32 evUsed, u32 woff, u32 wlen; then wlen bytes the
  // call wrote at arg+woff (inside the inline copy), for the shim to store before returning
  ioctl: 32,
  evprep: 16, // len, u32 token, u64 secret (shows a later IOCTL's hint comes from a holder of the fd)
  fileop: 24, // len, pad, s64 ret, s32 failnth, u32 drain
  lookup: 16, // len, u32 kind (0 none, 1 iommufd, 2 event), u32 token, pad
  mmap: 16, // len, s32 err, u32 handle, pad
} as const;

export const LOOKUP_NONE = 0;
export const LOOKUP_IOMMUFD = 1;
export const LOOKUP_EVENT = 2;

export const REGION_HUGE = 1;
export const FILEOP_READ = 0;
export const FILEOP_WRITE = 1;
/** Ask for the file's poll mask (shim: poll/ppoll on an emulated event fd). */
export const FILEOP_POLL = 2;

export const CAP_BIT = { SYS_RESOURCE: 1, IPC_LOCK: 2, SYS_RAWIO: 4 } as const;

/** Largest frame a peer may announce; anything else is malformed. */
export const MAX_FRAME = 4096;

export const NAMES: Record<number, string> = {
  [T_HELLO]: 'HELLO', [T_OPEN]: 'OPEN', [T_IOCTL]: 'IOCTL', [T_SYNC]: 'SYNC', [T_REGION]: 'REGION',
  [T_UNMAP]: 'UNMAP', [T_EVPREP]: 'EVPREP', [T_FILEOP]: 'FILEOP', [T_LOOKUP]: 'LOOKUP', [T_MMAP]: 'MMAP', [T_MRELEASE]: 'MRELEASE', [T_PROVE]: 'PROVE',
};

export function statusReply(status: number): Buffer {
  const b = Buffer.alloc(REP_SIZE.status);
  b.writeUInt32LE(b.length, 0);
  b.writeInt32LE(status, 4);
  return b;
}
